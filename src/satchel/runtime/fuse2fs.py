"""ext3 overlay images without privilege: fuse2fs, outside the container, gone with it.

Debian's fuse2fs is built on libfuse 2, which cannot serve a /dev/fuse descriptor opened by
someone else (no /dev/fd/N mount point, unlike squashfuse_ll and fuse-overlayfs): it mounts
by itself, with mount(2), which needs CAP_SYS_ADMIN in the user namespace owning its mount
namespace. And, like every FUSE server (fuse.py), it must not live in the container's mount
namespace, or that namespace and the server would pin each other forever. So:

1. after the launcher's user namespace exists (its id maps written) and before the container's
   mount namespace, the launcher forks a helper (twice: it is nobody's child in the container,
   runtime/fuse.py's BuiltinServer does the same);
2. the helper unshares a mount namespace of its own (a copy of the host's: nothing of the
   container's), mounts a tmpfs on the session directory there, and runs fuse2fs on the image
   (through /proc/self/fd/N: the file the launcher checked and locked, never a name that may
   have changed) onto a directory of it, with CAP_SYS_ADMIN kept across execve (ambient):
   fuse2fs mounts, daemonizes, and its first process exits 0 (or with its error message);
3. the helper takes a detached copy of that mount (open_tree OPEN_TREE_CLONE), sends it to the
   launcher (SCM_RIGHTS) and unmounts its own: the container's copy, attached by the launcher
   with move_mount, is then the only reference to the file system;
4. when the container's mount namespace dies, the kernel ends the FUSE connection, fuse2fs
   writes its bitmaps and superblock, marks the file system clean and exits. The helper,
   fuse2fs' reaper (child subreaper), waits for that.

fuse2fs keeps no journal: if it is killed (SIGKILL) before its clean exit, the changes since
the container's last fsync() may leave the block and inode bitmaps stale. The helper then
runs `e2fsck -fy` on the image before it lets go of it, so the next user finds a file system
that checks clean, with everything that was fsync()ed (fuse2fs' fsync writes all of its
state). The image's lock (imagelock.py) is held by the helper and fuse2fs together, until the
repair is done.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError

_CAP_SYS_ADMIN = 21
_MNT = "ext3"


class Ext3Server:
    """The helper serving one ext3 image: its socket, and what it serves (for messages)."""

    __slots__ = ("shown", "sock", "pid")

    def __init__(self, shown: str, sock, pid: int):
        self.shown = shown
        self.sock = sock
        self.pid = pid  # the short-lived middle process, reaped in mount_tree()

    def died_error(self, wait_ms: int = 0):
        """fuse2fs reports its failures through mount_tree(); nothing to add afterwards."""
        return None

    def mount_tree(self) -> int:
        """The detached mount of the image (an fd for move_mount); waits for fuse2fs."""
        import socket
        try:
            message, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
        except OSError as err:
            raise ContainerError(f"fuse2fs for {self.shown}: {err.strerror}") from None
        finally:
            self.sock.close()
            os.waitpid(self.pid, 0)
        if message[:1] == b"m" and fds:
            return fds[0]
        for fd in fds:
            os.close(fd)
        why = message[1:].decode(errors="replace").strip() or "it exited unexpectedly"
        raise ContainerError(f"fuse2fs could not mount the overlay {self.shown}: {why}")


def start(image_fd: int, shown: str, offset: int, readonly: bool, stage_dir: str,
          program: str = "fuse2fs", e2fsck: str = "e2fsck") -> Ext3Server:
    """Fork the helper (see the module docstring) for the ext3 file system at `offset` of the
    file open (and locked) on image_fd. Call after the user namespace is mapped, before the
    container's mount namespace."""
    import socket
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        try:
            if os.fork() == 0:
                os.setsid()
                _helper(child, image_fd, offset, readonly, stage_dir, program, e2fsck)
        except BaseException:
            pass
        os._exit(0)
    child.close()
    return Ext3Server(shown, parent, pid)


def _options(offset: int, readonly: bool) -> str:
    opts = ["ro" if readonly else "rw"]
    if offset:
        opts.append(f"offset={offset}")
    if os.geteuid() == 0:
        # uid 0 of the namespace (--fakeroot): the container's other ids (subordinate ones)
        # must reach the file system too; the kernel checks the modes
        opts += ["allow_other", "default_permissions"]
    return ",".join(opts)


def _helper(sock, image_fd: int, offset: int, readonly: bool, stage_dir: str, program: str,
            e2fsck: str) -> None:
    """The helper process: mount, hand over, then reap fuse2fs (and repair if it was killed)."""
    from satchel.runtime import linux
    import socket
    try:
        linux.unshare(("mount",))
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None, "making mounts private")
        linux.mount("tmpfs", stage_dir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0700",
                    "mounting fuse2fs' staging tmpfs")
        mnt = os.path.join(stage_dir, _MNT)
        os.mkdir(mnt, 0o700)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1, "becoming fuse2fs' reaper")
        status, output = _run_fuse2fs(program, image_fd, mnt, _options(offset, readonly))
        if status != 0:
            lines = [line for line in output.splitlines() if line.strip()]
            sock.sendall(b"e" + (lines[-1] if lines else f"status {status}".encode()))
            os._exit(0)
        mnt_fd = os.open(mnt, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        tree = linux.open_tree_clone(mnt_fd, False, "copying the fuse2fs mount")
        socket.send_fds(sock, [b"m"], [tree])
        os.close(tree)
        os.close(mnt_fd)
        linux.umount_detach(mnt, "detaching the helper's copy of the fuse2fs mount")
    except (OSError, ContainerError) as err:
        try:
            sock.sendall(b"e" + str(err).encode(errors="replace")[:500])
        except OSError:
            pass
        os._exit(0)
    sock.close()
    _reap(image_fd, offset, readonly, e2fsck)
    os._exit(0)


def _run_fuse2fs(program: str, image_fd: int, mnt: str, options: str) -> tuple[int, bytes]:
    """Run fuse2fs until it has mounted and daemonized: (exit status, what it printed)."""
    from satchel.runtime import linux
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.set_inheritable(image_fd, True)  # it holds the image's lock while it lives
            keep = sorted({0, 1, 2, image_fd})
            for low, high in zip(keep, keep[1:] + [65536]):
                os.closerange(low + 1, high)
            if os.geteuid() != 0:
                linux.keep_capability_across_exec(_CAP_SYS_ADMIN)
            os.execv(program, [program, f"/proc/self/fd/{image_fd}", mnt, "-o", options])
        except BaseException as err:
            try:
                os.write(2, f"{program}: {err}\n".encode())
            except OSError:
                pass
        os._exit(127)
    os.close(out_w)
    _, status = os.waitpid(pid, 0)
    output = b""
    while True:  # the daemon closed its copy of the pipe when it daemonized
        chunk = os.read(out_r, 65536)
        if not chunk:
            break
        output += chunk
    os.close(out_r)
    return os.waitstatus_to_exitcode(status), output


def _reap(image_fd: int, offset: int, readonly: bool, e2fsck: str) -> None:
    """Wait for the fuse2fs daemon (our child as subreaper); repair after a violent death."""
    killed = False
    while True:
        try:
            _, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if os.WIFSIGNALED(status):
            killed = True
    if killed and not readonly:
        repair(image_fd, offset, e2fsck)


def repair(image_fd: int, offset: int, e2fsck: str = "e2fsck") -> int:
    """e2fsck -fy on the file system at `offset` of the image (`?offset=N` is e2fsprogs'
    unix I/O option): what fuse2fs left unwritten is made consistent. Its exit status."""
    name = f"/proc/self/fd/{image_fd}" + (f"?offset={offset}" if offset else "")
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.set_inheritable(image_fd, True)
            os.execv(e2fsck, [e2fsck, "-fy", name])
        except BaseException:
            pass
        os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
