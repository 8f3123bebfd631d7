"""The executor's operations for options most launches do not use: --overlay and
--writable(-tmpfs) layers (kernel overlayfs, ext3 images through fuse2fs or a loop device,
the owned upper/work directories), --fakeroot's mapping, and joining a running container's
namespaces (instance://, --sharens).

executor.Executor.run() finds an operation here when the Executor has no method of that name,
and imports this module then: a plain `exec` never unmarshals it (DESIGN.md, "The exec path
imports little"). Each function takes the Executor (its plan, held descriptors, FUSE servers)
and the Op, as the methods do.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError
from satchel.runtime import linux
from satchel.runtime.executor import mount_flags

_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def op_join_namespaces(ex, op) -> None:
    """Enter a running instance's namespaces (user first: it grants the rest)."""
    pid, names = op.data
    if "pid" in names:  # FORK_INIT follows, after the host's files are out of reach
        from satchel.runtime import supervisor  # noqa: F401
    files = {"mount": "mnt", "pid": "pid_for_children"}
    fds = []
    try:
        for name in names:  # all opened first: /proc/PID/ns is checked against our ids
            path = f"/proc/{pid}/ns/{files.get(name, name)}"
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as err:
                raise ContainerError(f"opening {path} of the instance: {err.strerror}",
                                     hint="the instance may have stopped") from None
        for name, fd in zip(names, fds):
            linux.setns(fd, name, f"joining the instance's {name} namespace")
    finally:
        for fd in fds:
            os.close(fd)


def op_mount_overlay(ex, op) -> None:
    """Kernel overlayfs (root): upper and work opened as owned_dir() checks them, and
    named to overlayfs by descriptor, so a swap after the check changes nothing."""
    lower, upper, work = op.data
    if upper is None:  # read-only: lower layers only
        linux.mount("overlay", ex.target(op), "overlay", mount_flags(op),
                    f"lowerdir={lower}", "mounting the overlay")
        return
    uid = ex.plan.uid
    opener = layer_dir if "layer" in op.flags else lambda path: owned_dir(path, uid)
    upper_fd = opener(upper)
    ex.held.append(upper_fd)
    work_fd = opener(work)
    ex.held.append(work_fd)
    linux.mount("overlay", ex.target(op), "overlay", mount_flags(op),
                f"lowerdir={lower},upperdir={linux.fd_path(upper_fd)},"
                f"workdir={linux.fd_path(work_fd)}", "mounting the overlay")
    ex.underlays.own_devices.add(os.stat(ex.target(op)).st_dev)


def layer_dir(path: str) -> int:
    """O_PATH fd of upper/ or work/ at the top of an overlay image mounted just now,
    made if missing; never through a symbolic link the image's owner put there."""
    parent, name = os.path.split(path)
    try:
        top = os.open(parent, _PATH_DIR)
    except OSError as err:
        raise ContainerError(f"opening the overlay image mount {parent}: "
                             f"{err.strerror}") from None
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=top)
        except FileExistsError:
            pass
        return os.open(name, _PATH_DIR | os.O_NOFOLLOW, dir_fd=top)
    except OSError as err:
        raise ContainerError(f"overlay directory {path} in the image: "
                             f"{_why_refused(err)}") from None
    finally:
        os.close(top)


# -- overlay images: fuse2fs without privilege, a loop device as root --------------------------
def op_fakeroot_map(ex, op) -> None:
    """--fakeroot: unshare the user namespace; a helper still outside it maps it with the
    setuid newuidmap/newgidmap (0 -> the caller, 1.. -> the subordinate range)."""
    from satchel.runtime import fuse
    uid_args, gid_args = op.data
    programs = [fuse.find_program(name, os.environ) for name in ("newuidmap", "newgidmap")]
    launcher = str(os.getpid())
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        code = 3
        try:
            if os.read(go_r, 1) == b"g":
                code = 0
                for program, args in zip(programs, (uid_args, gid_args)):
                    child = os.fork()
                    if child == 0:
                        os.execv(program, [program, launcher] + list(args))
                    if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
                        code = 1
                        break
        except BaseException:
            code = 2
        os._exit(code)
    os.close(go_r)
    try:
        linux.unshare(("user",))
    except BaseException:
        os.close(go_w)
        os.waitpid(pid, 0)
        raise
    os.write(go_w, b"g")
    os.close(go_w)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        raise ContainerError("mapping the --fakeroot user namespace with newuidmap/newgidmap "
                             "failed", hint="check the caller's ranges in /etc/subuid and "
                                            "/etc/subgid, or use --ignore-subuid")


def op_fuse2fs_prepare(ex, op) -> None:
    """Lock the ext3 image (one writer, imagelock.py) and start fuse2fs for it."""
    from satchel.image import overlay
    from satchel.runtime import fuse, fuse2fs, imagelock
    path, offset, size, readonly = op.data
    fd = _open_layer(path, readonly)
    try:
        imagelock.lock(fd, offset, size, not readonly, f"overlay {path}")
        ex.fuse[op.source] = fuse2fs.start(
            fd, path, offset, readonly, ex.plan.session,
            fuse.find_program("fuse2fs", os.environ), overlay.find_tool("e2fsck"))
    finally:
        os.close(fd)  # fuse2fs and its helper hold their copies (and the lock)


def _open_layer(path: str, readonly: bool) -> int:
    try:
        return os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"opening the overlay image {path}: {err.strerror}") from None


def op_mount_ext3(ex, op) -> None:
    server = ex.fuse[op.source]
    tree = server.mount_tree()
    try:
        target = os.open(op.destination, _PATH_DIR)
        try:
            linux.move_mount(tree, target, f"attaching the overlay image on {op.destination}")
        finally:
            os.close(target)
    finally:
        os.close(tree)
    _check_top(op.destination, server.shown)


def _check_top(mountpoint: str, shown: str) -> None:
    """fuse2fs mounts an image whose superblock is sound even when the rest is not, and
    fails only at the first lookup: say so naming the image, not the session's mount point."""
    try:
        os.stat(os.path.join(mountpoint, "upper"))
    except FileNotFoundError:
        pass  # made by layer_dir()
    except OSError as err:
        raise ContainerError(f"overlay image {shown}: {err.strerror} reading its top "
                             "directory", hint=f"its file system may be damaged: check it with "
                                               f"e2fsck -f {shown}") from None


def op_mount_ext3_loop(ex, op) -> None:
    """Root: the ext3 image (or SIF partition) on a loop device, locked for the life of
    the container (the payload inherits the locked descriptor)."""
    from satchel.runtime import imagelock, loopdev
    offset, size = op.data
    readonly = "ro" in op.flags
    fd = _open_layer(op.source, readonly)
    imagelock.lock(fd, offset, size, not readonly, f"overlay {op.source}")
    os.set_inheritable(fd, True)  # the lock lasts as long as the container's processes
    loop_fd, device = loopdev.attach(op.source, offset, size, writable=not readonly,
                                     backing=fd)
    try:
        linux.mount(device, op.destination, "ext3", mount_flags(op), None,
                    f"mounting the overlay image {op.source} ({device})")
    finally:
        os.close(loop_fd)


def owned_dir(path: str, uid: int) -> int:
    """An O_PATH descriptor of directory `path` (an --overlay directory's upper or work,
    created if missing), refused unless it and its parent are real directories, not
    symbolic links, that belong to the caller.

    Root running on a directory a user prepared would otherwise follow `upper -> /etc`
    and write into it through the overlay (issue 10, point 6).
    """
    parent, _, name = path.rpartition("/")
    try:
        top = os.open(parent, _PATH_DIR | os.O_NOFOLLOW)
    except OSError as err:
        raise ContainerError(f"overlay directory {parent}: {_why_refused(err)}") from None
    try:
        _check_owner(top, parent, uid)
        try:
            os.mkdir(name, 0o755, dir_fd=top)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _PATH_DIR | os.O_NOFOLLOW, dir_fd=top)
        except OSError as err:
            raise ContainerError(f"overlay directory {path}: {_why_refused(err)}") from None
    except OSError as err:
        raise ContainerError(f"creating overlay directory {path}: {err.strerror}") from None
    finally:
        os.close(top)
    try:
        _check_owner(fd, path, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _why_refused(err: OSError) -> str:
    if err.errno in (20, 40):  # ENOTDIR, ELOOP: O_NOFOLLOW met a symlink (or a file)
        return "is a symbolic link or not a directory: refused"
    return err.strerror


def _check_owner(fd: int, path: str, uid: int) -> None:
    owner = os.fstat(fd).st_uid
    if owner != uid:
        raise ContainerError(f"overlay directory {path} belongs to uid {owner}, not to the "
                             f"caller (uid {uid}): refused")
