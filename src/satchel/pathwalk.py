"""Path safety on the exec path: the one resolver of a path inside a root, and reading files
someone else controls without hanging on a FIFO or opening a device.

resolve_at() walks the path one component at a time from a descriptor of the root (openat
O_PATH|O_NOFOLLOW; a symlink is read through the descriptor of the link itself; `..` drops the
last descriptor held): nothing is named twice, so a user who renames entries of their own tree
meanwhile cannot redirect what was checked (issue 10). Symlinks are followed as the container
would see them (an absolute target starts again at the root), `..` never climbs above the
root, at most MAX_SYMLINKS links are followed (Linux's limit), and every failure is one
PathError. secure_join() and make_dirs_in_root() give the same answer as a host path, for
callers that need one; such a path is only as trustworthy as the tree: a concurrent writer
could swap a component afterwards.

Split from fsutil.py (which re-exports all of it, and keeps the atomic writes, tree removal
and user-text reading) so that a launch reads only this part: the runtime imports it on the
exec path, so only os, errno and stat at module level.
"""

from __future__ import annotations

import errno
import os
import stat

from satchel.errors import PathError

# Linux's MAXSYMLINKS (40) on the whole walk, as the kernel would resolve it in the container.
MAX_SYMLINKS = 40

_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Found:
    """resolve_at()'s answer: an O_PATH descriptor of the deepest existing component (the
    caller closes it), its components below the root and the components missing after it
    (empty when the whole path exists). With missing components, fd is a directory."""

    __slots__ = ("fd", "parts", "missing")

    def __init__(self, fd: int, parts: list, missing: list):
        self.fd = fd
        self.parts = parts
        self.missing = missing

    @property
    def container_path(self) -> str:
        return "/" + "/".join(self.parts)


def _fail(path: str, reason: str, code: int) -> PathError:
    return PathError(f"path {path} in the container: {reason}", code)


def resolve_at(root_fd: int, path: str) -> Found:
    """Resolve `path` below the directory root_fd names, through descriptors (module doc).

    Each component is opened O_PATH|O_NOFOLLOW from the descriptor of the one before (a
    directory in one call, the common case); a symlink is read through its own descriptor and
    its target walked from root_fd (absolute) or from its directory; `..` drops the last
    descriptor held, never above root_fd. Mounts on the way are entered as the container will
    see them. Raises PathError.
    """
    pending = [c for c in reversed(path.split("/")) if c and c != "."]
    fds = [root_fd]    # fds[i + 1] is the descriptor of parts[i]; root_fd is the caller's
    parts: list[str] = []
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if parts:
                    parts.pop()
                    os.close(fds.pop())
                continue
            try:
                fds.append(os.open(part, _DIR, dir_fd=fds[-1]))
                parts.append(part)
                continue
            except FileNotFoundError:
                missing = [c for c in os.path.normpath("/".join([part] + pending[::-1]))
                           .split("/") if c not in ("", ".")]
                if ".." in missing:
                    raise _fail(path, "'..' after a missing component cannot be resolved",
                                errno.ENOENT) from None
                return _found(fds, parts, missing)
            except NotADirectoryError:
                pass  # a symlink, or the last component and not a directory
            except OSError as err:
                raise _fail(path, err.strerror, err.errno) from None
            try:
                fd = os.open(part, _ANY, dir_fd=fds[-1])
            except OSError as err:  # swapped away meanwhile: no answer is right, say so
                raise _fail(path, err.strerror, err.errno) from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink("", dir_fd=fd)  # the link opened, not its name
                finally:
                    os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise _fail(path, "too many levels of symbolic links", errno.ELOOP)
                if target.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                    parts.clear()
                pending.extend(c for c in reversed(target.split("/")) if c and c != ".")
                continue
            if pending or stat.S_ISDIR(mode):  # a directory here: it changed since the open
                os.close(fd)
                raise _fail(path, f"/{'/'.join(parts + [part])} is not a directory",
                            errno.ENOTDIR)
            fds.append(fd)
            parts.append(part)
        return _found(fds, parts, [])
    except BaseException:
        for fd in fds[1:]:
            os.close(fd)
        raise


def _found(fds: list, parts: list, missing: list) -> Found:
    """Keep the last descriptor (a copy of root_fd if nothing was walked), close the rest."""
    if len(fds) == 1:
        return Found(os.dup(fds[0]), parts, missing)
    last = fds.pop()
    while len(fds) > 1:
        os.close(fds.pop())
    return Found(last, parts, missing)


def _open_root(root: str) -> int:
    try:
        return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise PathError(f"opening the root {root}: {err.strerror}", err.errno) from None


def _joined(root: str, parts: list) -> str:
    return root + "/" + "/".join(parts) if parts else root


def resolve_path(root: str, path: str) -> tuple[str, list[str]]:
    """resolve_at() below host directory `root`, answered as (host path of the deepest
    existing component, components missing after it)."""
    root = os.path.abspath(root)
    root_fd = _open_root(root)
    try:
        found = resolve_at(root_fd, path)
        os.close(found.fd)
    finally:
        os.close(root_fd)
    return _joined(root, found.parts), found.missing


def secure_join(root: str, path: str) -> str:
    """The host path `path` names inside `root`, as if `root` were `/` (never outside it).

    Missing components are appended to the deepest existing one, so the result can name a
    file to create. Raises PathError (a loop, a file in the middle of the path).
    """
    host, missing = resolve_path(root, path)
    return _joined(host, missing)


def inside(root: str, path: str) -> bool:
    """True if the absolute `path` is `root` itself or lies below it (lexically)."""
    root = os.path.abspath(root)
    path = os.path.abspath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def make_dirs_in_root(root: str, path: str, mode: int = 0o755) -> str:
    """Create directory `path` (container view) inside `root`; return its host path.

    Resolved with resolve_at(); the missing components are created one below the other
    through descriptors (mkdirat, then opened O_NOFOLLOW), so nothing met on the way, even
    renamed meanwhile, leads out of `root`. An existing component that is not a directory
    raises PathError (ENOTDIR).
    """
    root = os.path.abspath(root)
    root_fd = _open_root(root)
    try:
        found = resolve_at(root_fd, path)
    finally:
        os.close(root_fd)
    current = found.fd
    try:
        if not found.missing and not stat.S_ISDIR(os.fstat(current).st_mode):
            raise _fail(path, f"{found.container_path} is not a directory", errno.ENOTDIR)
        for part in found.missing:
            try:
                os.mkdir(part, mode, dir_fd=current)
            except FileExistsError:
                pass
            except OSError as err:
                raise _fail(path, f"creating {part}: {err.strerror}", err.errno) from None
            try:
                following = os.open(part, _DIR, dir_fd=current)
            except OSError as err:  # a file, or a symlink put there meanwhile
                code = errno.ENOTDIR if err.errno == errno.ELOOP else err.errno
                raise _fail(path, f"{part} is not a directory", code) from None
            os.close(current)
            current = following
    finally:
        os.close(current)
    return _joined(root, found.parts + found.missing)


# -- reading files that someone else controls ---------------------------------------------------

# Files read from an image, a rootfs or a user-given path are read through open_regular(): a FIFO
# there must not hang satchel (open() of a FIFO waits for a writer, read() for data), and a device
# node must not be opened at all (a driver's open can act: rewind a tape, arm a watchdog).
SMALL_FILE_LIMIT = 64 << 20
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
          stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a directory"}


def file_kind(mode: int) -> str:
    """'a FIFO', 'a directory', ... for an st_mode (what an error says a file is)."""
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


class NotRegularFileError(OSError):
    """The file is not a regular file (strerror says what it is instead)."""

    def __init__(self, path: str, mode: int):
        super().__init__(errno.EINVAL, f"is {file_kind(mode)}, not a regular file", path)
        self.mode = mode


def open_regular(path: str, follow: bool = False) -> int:
    """Open `path` read-only if it is a regular file; return the descriptor.

    The file is first opened with O_PATH (which neither blocks on a FIFO nor runs a device's
    open), checked with fstat, then reopened for reading through /proc/self/fd: what is read is
    the file that was checked. Without `follow`, a symbolic link at the last component is refused
    (paths inside a rootfs are resolved by secure_join first, so one here is a planted swap).
    A directory raises IsADirectoryError, anything else that is not a regular file
    NotRegularFileError; both are OSErrors.
    """
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    handle = os.open(path, flags)
    try:
        mode = os.fstat(handle).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode)
        try:
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass  # no /proc: open by name, never blocking or following, and check again
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotRegularFileError(path, mode)
        return fd
    finally:
        os.close(handle)


def read_regular(path: str, follow: bool = False, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The content of the regular file at `path` (see open_regular), at most `limit` bytes.

    For small files of an image or a user (labels, scripts, definition files): a larger file
    raises OSError(EFBIG) instead of filling the memory.
    """
    fd = open_regular(path, follow)
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
            chunks.append(chunk)
    finally:
        os.close(fd)


def write_kernel_file(path: str, text: str, what: str, error: type) -> None:
    """Write `text` to a kernel interface file (/proc/self/uid_map, a cgroup's memory.max...)
    in one write(2), as the kernel reads it; `error("WHAT: writing TEXT to PATH: why")` if the
    kernel refuses."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise error(f"{what}: writing {text!r} to {path}: {err.strerror}") from None
