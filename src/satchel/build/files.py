"""%files: copying host files (or files of an earlier stage) into a rootfs, safely.

Semantics follow Apptainer's `cp -fLr SRC DST` with the sources' shell globs expanded: symlinks
in the source are followed; DST defaults to the source path; a DST that is an existing
directory (or ends in `/`) receives SRC under its own name; missing parent directories are
created. Host sources are relative to the definition file's directory.

Unlike a plain `cp`, every destination path is resolved with fsutil.secure_join (the one
resolver of paths inside a root, as the runtime's) each time it is
written, so neither an image symlink (`/opt -> /../../host/dir`) nor `..` in a destination can
make the copy write outside the rootfs, and an existing symlink at a destination file is
replaced, never written through. Sources from another stage are resolved inside that stage's
rootfs the same way.
"""

from __future__ import annotations

import glob
import os
import stat

from satchel import fsutil, log
from satchel.errors import BuildError, PathError

_GLOB_CHARS = "*?["


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def expand_host_sources(src: str, base_dir: str) -> list[tuple[str, str]]:
    """[(host path, path as written)] for a %files source on the host; error if none exist."""
    if os.path.isabs(src):
        matches = sorted(glob.glob(src)) if _has_glob(src) else [src]
        pairs = [(m, m) for m in matches]
    else:
        if _has_glob(src):
            matches = sorted(glob.glob(src, root_dir=base_dir))
        else:
            matches = [src]
        pairs = [(os.path.join(base_dir, m), m) for m in matches]
    pairs = [(host, written) for host, written in pairs if os.path.exists(host)]
    if not pairs:
        raise BuildError(f"%files: no such file or directory: {src}"
                         + ("" if os.path.isabs(src) else f" (relative to {base_dir})"))
    return pairs


def expand_stage_sources(src: str, stage_root: str) -> list[tuple[str, str]]:
    """[(host path, container path)] for a source inside another stage's rootfs."""
    container = "/" + src.lstrip("/")
    if not _has_glob(container):
        candidates = [container]
    else:
        # glob only finds names; every match is re-resolved inside the stage below
        pattern = stage_root.rstrip("/") + container
        candidates = sorted("/" + os.path.relpath(m, stage_root) for m in glob.glob(pattern)
                            if fsutil.inside(stage_root, m))
    pairs = []
    for path in candidates:
        try:
            host = fsutil.secure_join(stage_root, path)
        except PathError as err:
            raise BuildError(f"%files from stage: {err}") from None
        if os.path.exists(host):
            pairs.append((host, path))
    if not pairs:
        raise BuildError(f"%files from stage: no such file or directory: {src}")
    return pairs


def directory_keys(*paths: str) -> frozenset:
    """(st_dev, st_ino) of each existing directory in `paths`: what copy_in must never enter."""
    keys = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def copy_in(host_src: str, rootfs: str, dst: str, default_dst: str,
            skip: frozenset = frozenset()) -> str:
    """Copy one source into rootfs at container path `dst` (or `default_dst` when dst is "").

    `skip` holds directory_keys() of directories never copied: the build's own work
    directory and the rootfs being written. A source that holds them (`%files . /opt/app`
    run next to the output image) would otherwise sweep the build tree into the image, or
    copy the rootfs into itself until the disk is full. Matching by device and inode holds
    whatever the path or symlink that leads there. Returns the container path written.
    """
    target = dst or default_dst
    if not target.startswith("/"):
        target = "/" + target
    try:
        resolved = fsutil.secure_join(rootfs, target)
        into_dir = target.endswith("/") or os.path.isdir(resolved)
        if into_dir:
            fsutil.make_dirs_in_root(rootfs, target)
            target = target.rstrip("/") + "/" + os.path.basename(os.path.normpath(host_src))
        _copy(host_src, rootfs, target, set(), skip)
    except PathError as err:
        raise BuildError(f"%files: while copying {host_src} to {target}: {err}") from None
    except OSError as err:
        raise BuildError(f"%files: while copying {host_src} to {target}: "
                         f"{err.strerror or err}") from None
    return target


def _copy(host_src: str, rootfs: str, container_path: str, active: set, skip: frozenset) -> None:
    st = os.stat(host_src)  # -L: follow symlinks in the source
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in skip:
            log.verbose(f"%files: skipping {host_src}: the build's own work tree")
            return
        if key in active:
            log.warning(f"%files: skipping {host_src}: directory loop")
            return
        directory = fsutil.make_dirs_in_root(rootfs, container_path, 0o755)
        try:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
        except OSError:
            pass
        active.add(key)
        try:
            for name in sorted(os.listdir(host_src)):
                _copy(os.path.join(host_src, name), rootfs,
                      container_path.rstrip("/") + "/" + name, active, skip)
        finally:
            active.discard(key)
        return
    if not stat.S_ISREG(st.st_mode):
        log.warning(f"%files: skipping {host_src}: not a regular file or directory")
        return
    parent, _, name = container_path.rpartition("/")
    directory = fsutil.make_dirs_in_root(rootfs, parent or "/")
    target = fsutil.secure_join(rootfs, container_path)
    if not fsutil.inside(rootfs, target):  # secure_join guarantees it; belt and braces
        raise BuildError(f"%files: {container_path} resolves outside the image")
    if os.path.isdir(target):
        raise BuildError(f"%files: cannot overwrite directory {container_path} with a file")
    if os.path.dirname(target) != directory and not os.path.isdir(os.path.dirname(target)):
        fsutil.make_dirs_in_root(rootfs, os.path.dirname(target)[len(os.path.abspath(rootfs)):])
    try:
        if os.path.lexists(target):
            os.unlink(target)
    except OSError:
        pass
    mode = stat.S_IMODE(st.st_mode) & 0o777
    src_fd = os.open(host_src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode | stat.S_IWUSR)
        try:
            _copy_data(src_fd, dst_fd, st.st_size)
            os.fchmod(dst_fd, mode)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    try:
        while os.copy_file_range(src_fd, dst_fd, 1 << 30):
            pass
        return
    except OSError:
        os.lseek(src_fd, 0, os.SEEK_SET)
        os.lseek(dst_fd, 0, os.SEEK_SET)
        os.ftruncate(dst_fd, 0)
    while True:
        chunk = os.read(src_fd, 1 << 20)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
