"""Making bind destinations exist in a read-only image without touching the image.

A bind needs an existing mount point, but the image is read-only (FUSE or kernel SquashFS) and
kernel overlayfs is unusable unprivileged (copy-up must chown to uid 0, unmapped). Apptainer's
answer, the "underlay", is reproduced here: for the deepest existing directory D of a missing
path, a copy of D is made in the session tmpfs in which every entry of D is bind-mounted (rec,
so mounts already below D come along) or re-created (symlinks), the missing chain is created
there, the copy is bound over D and made read-only, as the image is. A later miss below a
copy copies it again (its own entries are bound along). Anything else the executor mounted
itself and left writable (the /dev tmpfs, a contained /tmp, an overlay) is written directly.

Paths are resolved inside the staged root as the container will see them: an image symlink
`/data -> /scratch/data` leads to ROOT/scratch/data, never to the host's /scratch.

The image may belong to a user who changes it while root stages a container from it (a
sandbox directory: renameat2(RENAME_EXCHANGE) swaps an entry between a directory and a symlink
to a root-only directory in a loop). So what is mounted is never named twice: the path is
resolved by pathwalk.resolve_at() (the one resolver of paths inside a root, one component at a
time from a descriptor of the root), the underlay lists a directory through a descriptor,
opens each entry O_NOFOLLOW, checks it with fstat and binds that descriptor
(/proc/self/fd/N), and the executor mounts onto the descriptor resolve_at() returned. A swap then changes nothing that was checked (issue 10).
"""

from __future__ import annotations

import os
import stat

from satchel import pathwalk
from satchel.errors import ContainerError
from satchel.runtime import linux

# Copying these would mean binding thousands of kernel objects; their contents come from the
# host, so a destination missing below them is a mistake in the bind request.
_NO_UNDERLAY = ("/proc", "/sys")
_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class IsContainerRoot(ContainerError):
    """A mount destination that resolves to the container's root directory itself."""


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _check_kind(fd: int, path: str, kind: str) -> None:
    """A directory mounts only onto a directory, anything else only onto a non-directory:
    say so in the container's terms (mount(2) would answer ENOTDIR about a staging path)."""
    is_dir = is_dir_fd(fd)
    if is_dir != (kind == "dir"):
        what = "a directory" if kind == "dir" else "a file"
        there = "a directory" if is_dir else "a file"
        raise ContainerError(f"cannot mount {what} onto {path}: it is {there} in the container")


class Underlays:
    """State of the underlay copies made for one container (executor-owned)."""

    __slots__ = ("session_dir", "own_devices", "copies", "root_covered", "root_copied")

    def __init__(self, session_dir: str):
        self.session_dir = session_dir
        self.own_devices: set[int] = set()   # st_dev of every file system the executor mounted
        self.copies = 0                      # underlay copies made so far
        # a copy was bound over the container root itself: a descriptor of the root taken
        # before names the covered directory now, so the caller must open the root again
        self.root_covered = False
        self.root_copied = False  # ...and for good: the root is no longer the image's mount

    def _writable_own(self, fd: int) -> bool:
        """Ours to write: a file system the executor mounted, still writable (not a copy)."""
        if os.fstat(fd).st_dev not in self.own_devices:
            return False
        return os.access(linux.fd_path(fd), os.W_OK | os.X_OK)

    def ensure(self, root_fd: int, path: str, kind: str) -> int:
        """Make container `path` exist as a directory or file ("dir"/"file"); return an
        O_PATH descriptor of it (the caller closes it), to mount onto through /proc/self/fd.

        Raises IsContainerRoot if `path` resolves to the container's root itself (an image
        symlink such as /var/tmp -> /): nothing may be mounted over the image's root.
        """
        found = pathwalk.resolve_at(root_fd, path)
        if not found.missing:
            try:
                if not found.parts:
                    raise IsContainerRoot(f"mount destination {path} resolves to the "
                                          "container's root directory /")
                if kind in ("dir", "file"):
                    _check_kind(found.fd, path, kind)
            except BaseException:
                os.close(found.fd)
                raise
            return found.fd
        container_dir = found.container_path
        try:
            if self._writable_own(found.fd):
                return _make_chain(found.fd, found.missing, kind, path)
            if any(container_dir == p or container_dir.startswith(p + "/") for p in _NO_UNDERLAY):
                raise ContainerError(f"bind destination {path} does not exist in the container "
                                     f"and cannot be created below {container_dir}")
            copy = self._copy_over(found.fd, container_dir)
            self.root_covered = self.root_covered or not found.parts
            self.root_copied = self.root_copied or not found.parts
        finally:
            os.close(found.fd)
        try:  # the copy's mount is over the directory now: create the chain through it
            made = _make_chain(copy, found.missing, kind, path)
            linux.mount_setattr("", linux.MOUNT_ATTR_RDONLY, 0, False,
                                f"making the underlay of {container_dir} read-only", dirfd=copy)
        finally:
            os.close(copy)
        return made

    def _copy_over(self, dir_fd: int, container_dir: str) -> int:
        """Bind a copy of the directory dir_fd names over it; return the copy's mount (fd).

        The copy (in the session tmpfs, ours) holds an empty directory or file for each entry,
        with the entry itself bound on it (recursively: mounts below come along), and the
        image's symlinks re-created. Each entry is opened O_NOFOLLOW from dir_fd and bound
        through that descriptor: an entry swapped for a symlink after listing is seen as one.
        """
        copy = f"{self.session_dir}/underlay/{self.copies}"
        self.copies += 1
        what = f"underlay of {container_dir}"
        try:
            os.makedirs(copy, 0o755)
            os.chmod(copy, stat.S_IMODE(os.fstat(dir_fd).st_mode))
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                names = os.listdir(listing)
            finally:
                os.close(listing)
        except OSError as err:
            raise ContainerError(f"{what}: {err.strerror}") from None
        for name in names:
            self._copy_entry(dir_fd, name, copy + "/" + name, what)
        source = os.open(copy, _DIR)
        try:
            return linux.bind_onto(source, dir_fd, True, what)
        finally:
            os.close(source)

    @staticmethod
    def _copy_entry(dir_fd: int, name: str, target: str, what: str) -> None:
        try:
            entry = os.open(name, _ANY, dir_fd=dir_fd)
        except FileNotFoundError:
            return  # gone since the listing: nothing to copy
        except OSError as err:
            raise ContainerError(f"{what}: {name}: {err.strerror}") from None
        try:
            mode = os.fstat(entry).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink("", dir_fd=entry), target)
                return
            if stat.S_ISDIR(mode):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                 0o644))
        except OSError as err:
            os.close(entry)
            raise ContainerError(f"{what}: {err.strerror}: {target}") from None
        try:
            linux.mount(linux.fd_path(entry), target, None, linux.MS_BIND | linux.MS_REC, None,
                        f"{what}: binding {name}")
        finally:
            os.close(entry)


def _make_chain(fd: int, missing: list, kind: str, path: str) -> int:
    """Create the missing components below directory fd (the last a file if kind is "file");
    return an O_PATH descriptor of the last one, opened O_NOFOLLOW."""
    current = fd
    try:
        for i, part in enumerate(missing):
            last = i == len(missing) - 1
            try:
                if last and kind == "file":
                    os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
                                     | os.O_NOFOLLOW, 0o644, dir_fd=current))
                else:
                    os.mkdir(part, 0o755, dir_fd=current)
            except FileExistsError:
                pass
            following = os.open(part, _ANY if last and kind == "file" else _DIR,
                                dir_fd=current)
            if current != fd:
                os.close(current)
            current = following
    except OSError as err:
        if current != fd:
            os.close(current)
        raise ContainerError(f"creating mount point {path}: {err.strerror}") from None
    return current
