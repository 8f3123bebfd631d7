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
to a root-only directory in a loop). So what is mounted is never named twice: resolve_at()
walks the path one component at a time from a descriptor of the root (openat O_PATH|O_NOFOLLOW,
symlinks read from the descriptor of the link itself, `..` popped from the descriptors already
held), the underlay lists a directory through a descriptor, opens each entry O_NOFOLLOW, checks
it with fstat and binds that descriptor (/proc/self/fd/N), and the executor mounts onto the
descriptor resolve_at() returned. A swap then changes nothing that was checked (issue 10).
"""

from __future__ import annotations

import os
import posixpath
import stat

from satchel.errors import ContainerError
from satchel.runtime import linux

MAX_SYMLINKS = 40
# Copying these would mean binding thousands of kernel objects; their contents come from the
# host, so a destination missing below them is a mistake in the bind request.
_NO_UNDERLAY = ("/proc", "/sys")


def resolve(root: str, path: str) -> tuple[str, list[str]]:
    """Resolve container `path` below host directory `root`.

    Returns (host path of the deepest existing component, missing components after it); the
    list is empty when the whole path exists. Symlinks resolve relative to `root`; `..` never
    climbs above it.
    """
    pending = [c for c in reversed(path.split("/")) if c and c != "."]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        host = root + "/" + "/".join(done + [part])
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            missing = posixpath.normpath("/".join([part] + pending[::-1])).split("/")
            missing = [c for c in missing if c not in ("", ".")]
            if ".." in missing:
                raise ContainerError(f"path {path} in the container: '..' after a missing "
                                     "component cannot be resolved") from None
            return _host(root, done), missing
        except NotADirectoryError:
            raise ContainerError(f"path {path} in the container: /{'/'.join(done)} is not a "
                                 "directory") from None
        except OSError as err:
            raise ContainerError(f"path {path} in the container: {err.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ContainerError(f"path {path} in the container: too many symbolic links")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            pending.extend(c for c in reversed(target.split("/")) if c and c != ".")
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise ContainerError(f"path {path} in the container: /{'/'.join(done + [part])} is "
                                 "not a directory")
        done.append(part)
    return _host(root, done), []


def _host(root: str, parts: list[str]) -> str:
    return root + "/" + "/".join(parts) if parts else root


_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class IsContainerRoot(ContainerError):
    """A mount destination that resolves to the container's root directory itself."""


class Found:
    """resolve_at()'s answer: an O_PATH descriptor of the deepest existing component (the
    caller closes it), its container path and the components missing after it."""

    __slots__ = ("fd", "parts", "missing")

    def __init__(self, fd: int, parts: list, missing: list):
        self.fd = fd
        self.parts = parts
        self.missing = missing

    @property
    def container_path(self) -> str:
        return "/" + "/".join(self.parts)


def resolve_at(root_fd: int, path: str) -> Found:
    """resolve() through descriptors: race-free against a user who changes the tree meanwhile.

    Each component is opened O_PATH|O_NOFOLLOW from the descriptor of the one before (a
    directory in one call, the common case); a symlink is read through its own descriptor and
    its target walked from root_fd (absolute) or from its directory; `..` drops the last
    descriptor held, never above root_fd. Nothing is named twice, so nothing checked can be
    swapped before it is used. Mounts on the way are entered as the container will see them.
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
                missing = posixpath.normpath("/".join([part] + pending[::-1])).split("/")
                missing = [c for c in missing if c not in ("", ".")]
                if ".." in missing:
                    raise ContainerError(f"path {path} in the container: '..' after a missing "
                                         "component cannot be resolved") from None
                return _found(fds, parts, missing)
            except NotADirectoryError:
                pass  # a symlink, or the last component and not a directory
            except OSError as err:
                raise ContainerError(f"path {path} in the container: {err.strerror}") from None
            try:
                fd = os.open(part, _ANY, dir_fd=fds[-1])
            except OSError as err:  # swapped away meanwhile: no answer is right, say so
                raise ContainerError(f"path {path} in the container: {err.strerror}") from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink("", dir_fd=fd)  # the link opened, not its name
                finally:
                    os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise ContainerError(f"path {path} in the container: too many symbolic "
                                         "links")
                if target.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                    parts.clear()
                pending.extend(c for c in reversed(target.split("/")) if c and c != ".")
                continue
            if pending or stat.S_ISDIR(mode):  # a directory here: it changed since the open
                os.close(fd)
                raise ContainerError(f"path {path} in the container: /{'/'.join(parts + [part])}"
                                     " is not a directory")
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


def resolve_existing(root: str, path: str) -> str:
    host, missing = resolve(root, path)
    if missing:
        raise ContainerError(f"path {path} does not exist in the container")
    return host


class Underlays:
    """State of the underlay copies made for one container (executor-owned)."""

    __slots__ = ("session_dir", "own_devices", "copies", "root_covered")

    def __init__(self, session_dir: str):
        self.session_dir = session_dir
        self.own_devices: set[int] = set()   # st_dev of every file system the executor mounted
        self.copies = 0                      # underlay copies made so far
        # a copy was bound over the container root itself: a descriptor of the root taken
        # before names the covered directory now, so the caller must open the root again
        self.root_covered = False

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
        found = resolve_at(root_fd, path)
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
            tree = linux.open_tree_clone(source, True, what)
        finally:
            os.close(source)
        try:
            linux.move_mount(tree, dir_fd, what)
        except BaseException:
            os.close(tree)
            raise
        return tree

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
