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
"""

from __future__ import annotations

import os
import posixpath
import stat

from satchel.errors import ContainerError

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


def _check_kind(host: str, path: str, kind: str) -> None:
    """A directory mounts only onto a directory, anything else only onto a non-directory:
    say so in the container's terms (mount(2) would answer ENOTDIR about a staging path)."""
    try:
        is_dir = stat.S_ISDIR(os.stat(host).st_mode)
    except OSError:
        return  # the mount itself reports what is wrong
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

    __slots__ = ("session_dir", "own_devices", "copies", "bind", "readonly")

    def __init__(self, session_dir: str, bind, readonly):
        self.session_dir = session_dir
        self.own_devices: set[int] = set()   # st_dev of every file system the executor mounted
        self.copies: list[str] = []          # host paths a copy was bound over
        self.bind = bind                     # bind(source, target, recursive, what)
        self.readonly = readonly             # readonly(path, what): the mount at path

    def _writable_own(self, host: str) -> bool:
        """Ours to write: a file system the executor mounted, still writable (not a copy)."""
        try:
            if os.stat(host).st_dev not in self.own_devices:
                return False
        except OSError:
            return False
        return os.access(host, os.W_OK | os.X_OK)

    def ensure(self, root: str, path: str, kind: str) -> str:
        """Make container `path` exist as a directory or file ("dir"/"file"); return host path."""
        host, missing = resolve(root, path)
        if not missing:
            if kind in ("dir", "file"):
                _check_kind(host, path, kind)
            return host
        container_dir = "/" + host[len(root):].lstrip("/")
        copied = not self._writable_own(host)
        if copied:
            if any(container_dir == p or container_dir.startswith(p + "/") for p in _NO_UNDERLAY):
                raise ContainerError(f"bind destination {path} does not exist in the container "
                                     f"and cannot be created below {container_dir}")
            self._copy_over(host, container_dir)
        top = host
        for i, part in enumerate(missing):
            host = host + "/" + part
            last = i == len(missing) - 1
            try:
                if last and kind == "file":
                    os.close(os.open(host, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                     0o644))
                else:
                    os.mkdir(host, 0o755)
            except FileExistsError:
                pass
            except OSError as err:
                raise ContainerError(f"creating mount point {path} in the session directory: "
                                     f"{err.strerror}") from None
        if copied:
            self.readonly(top, f"making the underlay of {container_dir} read-only")
        return host

    def _copy_over(self, host_dir: str, container_dir: str) -> None:
        copy = f"{self.session_dir}/underlay/{len(self.copies)}"
        what = f"underlay of {container_dir}"
        try:
            os.makedirs(copy, 0o755)
            os.chmod(copy, stat.S_IMODE(os.stat(host_dir).st_mode))
            entries = list(os.scandir(host_dir))
        except OSError as err:
            raise ContainerError(f"{what}: {err.strerror}: {err.filename}") from None
        for entry in entries:
            target = copy + "/" + entry.name
            try:
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    os.mkdir(target, 0o755)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                     0o644))
            except OSError as err:
                raise ContainerError(f"{what}: {err.strerror}: {target}") from None
            self.bind(entry.path, target, True, f"{what}: binding {entry.name}")
        self.bind(copy, host_dir, True, what)
        self.copies.append(host_dir)
