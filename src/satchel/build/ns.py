"""The few Linux calls the build needs (unshare, mount, prctl, setgroups), through ctypes.

Kept separate from satchel.runtime on purpose: building and running are separate layers, and
the build's needs are small. Each call raises OSError with errno and names what it did.
"""

from __future__ import annotations

import ctypes
import os
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1

_libc = None


def libc():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                              ctypes.c_char_p]
        lib.mount.restype = ctypes.c_int
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
        lib.prctl.restype = ctypes.c_int
        _libc = lib
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {source or fstype} on {target}")


def set_parent_death_signal(sig: int) -> None:
    _check(libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


MNT_DETACH = 2
_private_mounts = False


def umount(target: str, flags: int = MNT_DETACH) -> None:
    lib = libc()
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.umount2.restype = ctypes.c_int
    _check(lib.umount2(_b(target), flags), f"umount {target}")


def private_mount_namespace() -> None:
    """Move this process into its own mount namespace (once), with nothing propagating back.

    Mounts made afterwards (an overlay over a sandbox source) are seen by this process and its
    children only, and vanish when they all exit.
    """
    global _private_mounts
    if _private_mounts:
        return
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
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
