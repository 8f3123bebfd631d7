"""Path safety and atomic file writes, shared by build, OCI extraction and the runtime.

One resolver answers "which object does `path` name inside a tree whose root is `root`?" for
every caller: the runtime's mount points and binds (runtime/underlay.py, executor.py), %files
(build/files.py), the /.singularity.d layout, OCI layer extraction and sandbox metadata. It and
the readers of files someone else controls (open_regular, read_regular) live in pathwalk.py,
the part a launch needs, and are re-exported here: fsutil.resolve_at() is pathwalk's. This
module adds what the exec path never needs: atomic and no-follow writes, removing trees, and
reading a user's text files.
"""

from __future__ import annotations

import os
import stat

# the resolver and the regular-file readers live in pathwalk.py (the exec path's part);
# every caller may keep naming them fsutil.X
from satchel.pathwalk import (MAX_SYMLINKS, SMALL_FILE_LIMIT, Found,  # noqa: F401
                              NotRegularFileError, file_kind, inside, make_dirs_in_root,
                              open_regular, read_regular, resolve_at, resolve_path,
                              secure_join, write_kernel_file)


def read_user_text(path: str, what: str, error: type) -> str:
    """The UTF-8 text of a file a user names (--env-file, a definition file), read as given
    (a pipe too: `--env-file <(...)`). Unreadable, not UTF-8, or holding a NUL byte (no
    variable, argument or script can): `error("WHAT PATH[:LINE]: why")`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise error(f"{what} {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{what} {path}:{line}: not UTF-8 text (byte {err.start})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise error(f"{what} {path}:{line}: a NUL byte (is it a binary file?)")
    return text


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _temp_name(path: str) -> str:
    return f"{path}.tmp-{os.urandom(4).hex()}"


def atomic_write(path: str, data: bytes | str, mode: int = 0o644, fsync: bool = False,
                 owner: tuple[int, int] | None = None) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    Readers see the old content or the new one, never a partial file; a failure leaves no
    temporary file behind. The new file is private until it has its `owner` (uid, gid), if
    given, and then `mode`; `fsync` syncs it before the rename (a crash leaves the old file
    or the whole new one).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")  # bytes from argv or a file, as given
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            _write_all(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)
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
