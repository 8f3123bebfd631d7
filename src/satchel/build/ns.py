"""The build's process and mount helpers: a private mount namespace, mounts to detach, pipes.

No system call of its own: runtime/linux.py is the one module that makes them (and holds the
constants); the build imports it. Its wrappers raise ContainerError naming the operation.
"""

from __future__ import annotations

import os
import signal

_private_mounts = False


def write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def umount(target: str) -> None:
    """Detach the mount at `target` (lazily: busy files keep it until they close)."""
    from satchel.runtime import linux
    linux.umount_detach(target, "detaching a build mount")


def private_mount_namespace() -> None:
    """Move this process into its own mount namespace (once), with nothing propagating back.

    Mounts made afterwards (an overlay over a sandbox source) are seen by this process and its
    children only, and vanish when they all exit.
    """
    global _private_mounts
    if _private_mounts:
        return
    from satchel.runtime import linux
    linux.unshare(("mount",))
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None,
                "making the build's mounts private")
    _private_mounts = True


def mounts_under(directory: str) -> list[str]:
    """Mount points at or below `directory` in this namespace, deepest first."""
    prefix = os.path.abspath(directory).rstrip("/") + "/"
    points = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].encode().decode("unicode_escape")
                    if point.startswith(prefix) or point == prefix.rstrip("/"):
                        points.append(point)
    except OSError:
        return []
    return sorted(points, key=len, reverse=True)


def read_to_eof(fd: int) -> str:
    """Everything a child writes to the pipe `fd` until its write ends close, as text."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def kill_and_reap(pid: int) -> None:
    """SIGKILL a child of ours and wait for it (a build helper abandoned on an error)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass
