"""Applying image layers to a root filesystem, safely.

Layers are applied in order. Within a layer, entries are applied in tar order with the OCI
rules: `.wh.NAME` removes NAME from the lower layers, `.wh..wh..opq` hides everything the lower
layers put in its directory; whiteouts never remove what the same layer adds.

Safety (a layer is untrusted input):
- an entry name or hardlink target whose `..` climbs above the root is refused: the pull fails
  (as Docker does: such a layer was crafted); a leading '/' is dropped, as tar does;
- parent directories are resolved the way the container will see them: symlinks are followed
  *inside* the root (an absolute target restarts at the root, `..` stops at it), so a symlink
  `/etc/evil -> /tmp/host` followed by `etc/evil/x` writes ROOT/tmp/host/x, never /tmp/host/x;
- the last component is never followed: an existing symlink there is replaced, not written
  through; files are created with O_EXCL|O_NOFOLLOW;
- a hardlink must name an existing non-directory inside the root (resolved the same way);
- device nodes are created only by real root; for anyone else (uid 0 of a user namespace
  included) they are skipped with a warning: they could not be created anyway, and the
  runtime mounts images nodev;
- setuid/setgid bits are kept: the runtime mounts images nosuid and sets no_new_privs.

Ownership: root applies the numeric uid/gid of each entry (with --fakeroot, uid 0 of a user
namespace does the same for the ids mapped into it and keeps its own for the others). A non-root user cannot, so every file
is theirs; so that the tree stays readable by mksquashfs and removable afterwards, directories
get u+rwx and files u+r on top of their modes (Apptainer's --fix-perms, applied always when not
root). Extended attributes are not applied.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile

from satchel import log
from satchel.errors import OCIError, PathError, os_error
from satchel.fsutil import make_dirs_in_root, secure_join
from satchel.oci.stream import ForwardReader

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# time_t's range in nanoseconds: os.utime raises OverflowError beyond it
_NS_MAX = (2**63 - 1) * 10**9
_NS_MIN = -(2**63) * 10**9


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds, whole or fractional, clamped to what utime takes.

    A PAX `mtime` record holds a decimal with a fraction (Python's tarfile writes one by
    default, GNU tar with --format=posix): tarfile turns it into a float, which holds only
    about 7 fractional digits for today's dates, so the record's text is read exactly. A value
    that is not a number (tarfile accepts "nan" and "inf") counts as 0.
    """
    ns = _decimal_ns(member.pax_headers.get("mtime", ""))
    if ns is None:
        value = member.mtime
        if isinstance(value, float):
            ns = round(value * 10**9) if value - value == 0 else 0  # inf - inf and nan are nan
        else:
            ns = int(value) * 10**9
    return min(max(ns, _NS_MIN), _NS_MAX)


def _decimal_ns(text: str) -> int | None:
    """'1700000000.123456789' -> nanoseconds; None unless `text` is [-]DIGITS[.DIGITS]."""
    sign = -1 if text.startswith("-") else 1
    whole, _, fraction = (text[1:] if sign < 0 else text).partition(".")
    if not (whole + fraction).isascii() or not whole.isdigit() or \
            (fraction and not fraction.isdigit()):
        return None
    if len(whole) > 20:  # past time_t either way (and int() refuses 4,300 digits)
        return sign * _NS_MAX
    return sign * (int(whole) * 10**9 + int(fraction[:9].ljust(9, "0")))


class Stats:
    __slots__ = ("entries", "bytes", "whiteouts", "skipped_devices", "unmapped_owners", "layers")

    def __init__(self):
        self.entries = self.bytes = self.whiteouts = self.skipped_devices = self.layers = 0
        self.unmapped_owners = 0


class Extractor:
    """Applies layers to `root` (an existing, empty directory) one after another."""

    def __init__(self, root: str, as_root: bool | None = None):
        self.root = os.path.realpath(root)
        self.as_root = (os.geteuid() == 0) if as_root is None else as_root
        self.stats = Stats()
        self._dirs: dict[tuple, str] = {}        # inside path -> resolved host dir
        self._dir_times: dict[str, tuple] = {}   # host dir -> (atime_ns, mtime_ns), set at the end
        self._layer_paths: set[str] = set()      # host paths the current layer created
        self._layer = ""
        self._buf = bytearray(1 << 20)

    # ---- entry points
    def apply(self, tar_stream, name: str) -> None:
        """Apply one layer from an uncompressed tar byte stream (anything with read(n))."""
        self._layer = name
        self._layer_paths = set()
        self.stats.layers += 1
        reader = ForwardReader(tar_stream)
        try:
            tar = tarfile.TarFile(fileobj=reader, mode="r", errorlevel=2)
        except tarfile.ReadError as err:
            if "empty file" in str(err):  # a layer with no entries at all
                return
            raise OCIError(f"layer {name}: not a tar archive ({err})") from None
        try:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as err:
                    raise OCIError(f"layer {name}: bad tar data ({err})") from None
                if member is None:
                    break
                self._apply_member(tar, reader, member)
        except OSError as err:
            raise os_error(f"layer {name}: extracting into {self.root}", err, OCIError) from None
        finally:
            tar.members = []

    def finish(self) -> Stats:
        """Set directory times last (creating children changes them), deepest first."""
        for path in sorted(self._dir_times, key=len, reverse=True):
            try:
                os.utime(path, ns=self._dir_times[path], follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise os_error(f"setting times of {path}", err, OCIError) from None
        self._dir_times.clear()
        if self.stats.unmapped_owners:
            log.warning(f"{self.stats.unmapped_owners} file(s) keep the builder's ownership: "
                        "their owners are not mapped in this user namespace")
        if self.stats.skipped_devices:
            log.warning(f"skipped {self.stats.skipped_devices} device node(s): only root can "
                        "create them (the container's /dev comes from the host)")
        return self.stats

    # ---- paths
    def _clean(self, name: str, what: str = "entry") -> list[str]:
        """Components of `name` relative to the root; refuse a '..' that climbs above it."""
        parts: list[str] = []
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise OCIError(f"layer {self._layer}: {what} {name!r} points outside the "
                                   "root filesystem; refusing to extract this image")
                parts.pop()
                continue
            parts.append(part)
        return parts

    def _resolve_dir(self, parts: list[str], create: bool) -> str | None:
        """Host path of the directory `parts`, following symlinks inside the root (fsutil);
        missing directories are created (create=True) or make the answer None. Cached: a layer
        puts many entries in one directory."""
        key = tuple(parts)
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        where = "/" + "/".join(parts)
        try:
            if create:
                host = make_dirs_in_root(self.root, where)
            else:
                host = secure_join(self.root, where)
                if not stat.S_ISDIR(os.lstat(host).st_mode):
                    return None
        except FileNotFoundError:  # the lstat: nothing there
            return None
        except PathError as err:
            if err.errno == errno.ELOOP:
                raise OCIError(f"layer {self._layer}: too many levels of symbolic links in "
                               f"{where}") from None
            if err.errno != errno.ENOTDIR:
                raise OCIError(f"layer {self._layer}: {err}") from None
            if not create:
                return None
            raise OCIError(f"layer {self._layer}: {where} is not a directory, but the layer "
                           "puts files in it") from None
        self._dirs[key] = host
        return host

    def _remove(self, path: str) -> None:
        """Remove whatever is at `path` (never following a symlink) and forget cached dirs."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._dirs.clear()
        self._dir_times.pop(path, None)  # a file may take its place: no directory time for it

    # ---- members
    def _apply_member(self, tar, reader: ForwardReader, member: tarfile.TarInfo) -> None:
        parts = self._clean(member.name)
        if not parts:
            return  # the root itself ("./"): its metadata belongs to the host's directory
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts)
            return
        parent = self._resolve_dir(parts[:-1], create=True)
        path = os.path.join(parent, base)
        self.stats.entries += 1
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                self._remove(path)
                existing = None
            if existing is None:
                os.mkdir(path, 0o700)
            self._metadata(path, member, is_dir=True)
            ns = mtime_ns(member)
            self._dir_times[path] = (ns, ns)
            self._layer_paths.add(path)
            return
        if existing is not None:
            self._remove(path)
        self._layer_paths.add(path)
        if member.isreg():
            self._write_file(tar, reader, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
            self._metadata(path, member, is_link=True)
        elif member.islnk():
            self._hardlink(member, path)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self._metadata(path, member)
        elif member.ischr() or member.isblk():
            if not self.as_root:
                self.stats.skipped_devices += 1
                log.verbose(f"layer {self._layer}: skipping device node /{'/'.join(parts)}")
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            except PermissionError:  # uid 0 of a user namespace may not create devices
                self.stats.skipped_devices += 1
                return
            self._metadata(path, member)
        else:
            log.verbose(f"layer {self._layer}: skipping {member.name!r} of tar type "
                        f"{member.type!r}")

    def _write_file(self, tar, reader: ForwardReader, member: tarfile.TarInfo, path: str) -> None:
        fd = os.open(path, _O_CREATE, 0o600)
        try:
            if member.sparse is not None:  # rare (GNU sparse): let tarfile fill the holes
                src = tar.extractfile(member)
                while True:
                    n = src.readinto(self._buf)
                    if not n:
                        break
                    os.write(fd, memoryview(self._buf)[:n])
            else:
                reader.seek(member.offset_data)
                for piece in reader.read_chunks(member.size):
                    view = piece if isinstance(piece, memoryview) else memoryview(piece)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
            self.stats.bytes += member.size
            self._metadata(fd, member)
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, path: str) -> None:
        target_parts = self._clean(member.linkname, "hardlink target")
        if not target_parts:
            raise OCIError(f"layer {self._layer}: hardlink {member.name!r} to the root directory")
        parent = self._resolve_dir(target_parts[:-1], create=False)
        source = os.path.join(parent, target_parts[-1]) if parent is not None else None
        try:
            st = os.lstat(source) if source else None
        except FileNotFoundError:
            st = None
        if st is None:
            raise OCIError(f"layer {self._layer}: hardlink {member.name!r} -> "
                           f"{member.linkname!r}: target does not exist")
        if stat.S_ISDIR(st.st_mode):
            raise OCIError(f"layer {self._layer}: hardlink {member.name!r} -> "
                           f"{member.linkname!r}: target is a directory")
        os.link(source, path, follow_symlinks=False)

    def _metadata(self, target, member: tarfile.TarInfo, is_dir: bool = False,
                  is_link: bool = False) -> None:
        """Owner (root only), mode and mtime; `target` is a path or an open descriptor."""
        if self.as_root:
            try:
                if isinstance(target, int):
                    os.fchown(target, member.uid, member.gid)
                else:
                    os.lchown(target, member.uid, member.gid)
            except OSError as err:
                # uid 0 of a user namespace (--fakeroot) owns only the ids mapped into it
                if err.errno not in (errno.EINVAL, errno.EPERM):
                    raise
                self.stats.unmapped_owners += 1
        if not is_link:
            mode = member.mode & 0o7777
            if not self.as_root:
                mode |= 0o700 if is_dir else 0o400
            os.chmod(target, mode)
        if not is_dir:
            ns = mtime_ns(member)
            if isinstance(target, int):
                os.utime(target, ns=(ns, ns))
            else:
                os.utime(target, ns=(ns, ns), follow_symlinks=False)

    # ---- whiteouts
    def _whiteout(self, parts: list[str]) -> None:
        self.stats.whiteouts += 1
        base = parts[-1]
        victim = base[len(WHITEOUT):]
        if base != OPAQUE and base.startswith(WHITEOUT + WHITEOUT):
            return  # other AUFS metadata (.wh..wh.plnk...): not content
        if victim in ("", ".", ".."):
            raise OCIError(f"layer {self._layer}: invalid whiteout {'/'.join(parts)!r}")
        parent = self._resolve_dir(parts[:-1], create=False)
        if parent is None:
            return  # nothing below to hide
        if base == OPAQUE:
            self._make_opaque(parent)
            return
        path = os.path.join(parent, victim)
        if path in self._layer_paths:
            return  # whiteouts hide lower layers only
        self._remove(path)

    def _make_opaque(self, directory: str) -> None:
        """Remove what lower layers put in `directory`, keeping this layer's entries."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(directory, name)
            if path not in self._layer_paths:
                self._remove(path)
            elif os.path.isdir(path) and not os.path.islink(path):
                self._make_opaque(path)
