"""Path safety and atomic file writes, shared by build, OCI extraction and the runtime.

`secure_join(root, path)` answers "which host path does `path` name inside a container whose
root is `root`?": symlinks are followed as the container would see them (an absolute link target
starts again at `root`), `..` never climbs above `root`. Build steps that write into an image
(%files, layer extraction, mount points) use it so that an image symlink such as
`/opt -> /../../host/dir` cannot make them write outside the rootfs.

The runtime imports this module on the exec path: only os, errno and stat at module level.
"""

from __future__ import annotations

import errno
import os
import stat

# Same limit as Linux's MAXSYMLINKS on the whole walk (filepath-securejoin uses 255 too).
MAX_SYMLINKS = 255


def secure_join(root: str, path: str) -> str:
    """Resolve `path` inside `root` as if `root` were `/`; the result never leaves `root`.

    Components that do not exist are appended lexically (so the result can name a file to
    create). Raises OSError(ELOOP) after MAX_SYMLINKS links. The returned path is only as
    trustworthy as the tree: a concurrent writer could swap a component afterwards.
    """
    root = os.path.abspath(root)
    pending = [c for c in path.split("/") if c not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root + "/" + "/".join(resolved + [part]) if resolved else root + "/" + part
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        extra = [c for c in target.split("/") if c not in ("", ".")]
        extra.reverse()
        pending.extend(extra)
    if not resolved:
        return root
    return root + "/" + "/".join(resolved)


def inside(root: str, path: str) -> bool:
    """True if the absolute `path` is `root` itself or lies below it (lexically)."""
    root = os.path.abspath(root)
    path = os.path.abspath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def make_dirs_in_root(root: str, path: str, mode: int = 0o755) -> str:
    """Create directory `path` (container view) inside `root`; return its host path.

    Each missing component is created only after the path above it has been resolved with
    secure_join, so a symlink met half-way is followed inside `root`, never out of it.
    """
    root = os.path.abspath(root)
    host = root
    for part in (c for c in path.split("/") if c not in ("", ".")):
        container_path = host[len(root):] + "/" + part
        host = secure_join(root, container_path)
        try:
            os.mkdir(host, mode)
        except FileNotFoundError:
            # a symlink led to a deeper path whose parents are missing; secure_join resolved
            # every existing component, so the missing ones are plain names below root
            os.makedirs(os.path.dirname(host), mode, exist_ok=True)
            os.mkdir(host, mode)
        except FileExistsError:
            if not os.path.isdir(host):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", container_path) from None
    return host


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _temp_name(path: str) -> str:
    return f"{path}.tmp-{os.urandom(4).hex()}"


def atomic_write(path: str, data: bytes | str, mode: int = 0o644, fsync: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    Readers see the old content or the new one, never a partial file; a failure leaves no
    temporary file behind.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")  # bytes from argv or a file, as given
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_new_file(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Create or replace the file at `path` without following a symlink at its last component.

    An existing symlink or file is unlinked first (never written through), so a link planted
    in an image cannot redirect the write.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")  # bytes from argv or a file, as given
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Remove a directory tree even where the build made directories read-only.

    Image trees hold directories such as /proc (0555) and whatever %post chmod-ed; as a
    non-root user rmtree fails inside a non-writable directory, so on a permission error we
    add owner rwx to every directory (never following symlinks) and try again.
    """
    import shutil

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        pass
    _make_owner_writable(path)
    shutil.rmtree(path)


def _make_owner_writable(path: str) -> None:
    try:
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o700)
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _make_owner_writable(entry.path)
