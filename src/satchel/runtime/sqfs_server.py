"""The built-in SquashFS server: libsquashfuse_ll's request handlers in a forked process.

Starting the squashfuse_ll program costs an exec, the dynamic linking of seven libraries and
the opening of the image, all between the mount and the first lookup, i.e. on the critical
path of every launch. Charliecloud avoids that by linking libsquashfuse_ll into ch-run. Here a
process forked from the launcher (before the container's mount namespace exists, so it lives in
the host's) loads libsquashfuse_ll and libfuse3 with ctypes and opens the image *while* the
launcher builds its namespaces; once the mount exists it only has to start the FUSE loop.
The C code does all the serving: no Python runs while requests are answered.

The handler table is libfuse 3's `struct fuse_lowlevel_ops`, filled the way squashfuse_ll's
own main() fills it (ll_main.c); libfuse copies min(sizeof, op_size) of it, so the layout is
stable across libfuse 3 releases. If either library is missing, fuse.py falls back to
exec'ing the squashfuse_ll program ("squashfuse mode = program" forces that).
"""

from __future__ import annotations

import ctypes
import os

LIBSQUASHFUSE = "libsquashfuse_ll.so.0"
LIBFUSE = "libfuse3.so.3"
PROCESS_NAME = b"squashfuse_ll"  # what ps/pgrep show, as for the program
_PR_SET_NAME = 15
_SYS_PIDFD_OPEN = 434   # the same on every architecture (unified syscall table, Linux 5.3+)
_SYS_PIDFD_GETFD = 438  # Linux 5.6+
# struct fuse_lowlevel_ops (libfuse 3): slot of each handler squashfuse provides
_OPS_SLOTS = 44
_HANDLERS = {
    2: "sqfs_ll_op_lookup", 3: "sqfs_ll_op_forget", 4: "sqfs_ll_op_getattr",
    6: "sqfs_ll_op_readlink", 14: "sqfs_ll_op_open", 15: "sqfs_ll_op_read",
    18: "sqfs_ll_op_release", 20: "sqfs_ll_op_opendir", 21: "sqfs_ll_op_readdir",
    22: "sqfs_ll_op_releasedir", 24: "stfs_ll_op_statfs", 26: "sqfs_ll_op_getxattr",
    27: "sqfs_ll_op_listxattr", 30: "sqfs_ll_op_create",
}


class _FuseArgs(ctypes.Structure):
    _fields_ = (("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int))


class LibraryMissing(Exception):
    """libsquashfuse_ll or libfuse3 cannot be loaded: serve with the program instead."""


class Session:
    """An opened image and a FUSE session for it, not yet attached to a mount."""

    def __init__(self, image: str, offset: int):
        try:
            self.lib = ctypes.CDLL(LIBSQUASHFUSE, use_errno=True)
            self.fuse = ctypes.CDLL(LIBFUSE, use_errno=True)
            for name in _HANDLERS.values():
                getattr(self.lib, name)
        except (OSError, AttributeError) as err:
            raise LibraryMissing(str(err)) from None
        self.lib.sqfs_ll_open.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
        self.lib.sqfs_ll_open.restype = ctypes.c_void_p
        self.fuse.fuse_session_new.argtypes = (ctypes.POINTER(_FuseArgs), ctypes.c_void_p,
                                               ctypes.c_size_t, ctypes.c_void_p)
        self.fuse.fuse_session_new.restype = ctypes.c_void_p
        self.fuse.fuse_session_mount.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
        self.fuse.fuse_session_mount.restype = ctypes.c_int
        self.fuse.fuse_session_loop.argtypes = (ctypes.c_void_p,)
        self.fuse.fuse_session_loop.restype = ctypes.c_int

        self.ll = self.lib.sqfs_ll_open(os.fsencode(image), offset)
        if not self.ll:
            raise OSError(f"cannot open the SquashFS file system in {image} at offset {offset}")
        self.ops = (ctypes.c_void_p * _OPS_SLOTS)()
        for slot, name in _HANDLERS.items():
            self.ops[slot] = ctypes.cast(getattr(self.lib, name), ctypes.c_void_p)
        self.argv = (ctypes.c_char_p * 2)(b"squashfuse_ll", None)
        self.args = _FuseArgs(1, self.argv, 0)
        self.session = self.fuse.fuse_session_new(ctypes.byref(self.args), self.ops,
                                                  ctypes.sizeof(self.ops), self.ll)
        if not self.session:
            raise OSError("fuse_session_new failed")

    def serve(self, fd: int) -> int:
        """Attach to the mounted /dev/fuse fd and answer requests until the mount goes away."""
        if self.fuse.fuse_session_mount(self.session, f"/dev/fd/{fd}".encode()) != 0:
            return 1
        return self.fuse.fuse_session_loop(self.session)


def _close_other_fds(keep) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _take_fd(message: bytes) -> int:
    """From "x PID FD": a copy of the launcher's /dev/fuse fd, by pidfd_getfd(2)."""
    parts = message.split()
    if len(parts) != 3 or parts[0] != b"x":
        raise OSError("no mount")
    pid, fd = int(parts[1]), int(parts[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(ctypes.c_long(_SYS_PIDFD_OPEN), ctypes.c_int(pid), ctypes.c_uint(0))
    if pidfd < 0:
        raise OSError(f"pidfd_open: {os.strerror(ctypes.get_errno())}")
    try:
        copy = libc.syscall(ctypes.c_long(_SYS_PIDFD_GETFD), ctypes.c_int(pidfd),
                            ctypes.c_int(fd), ctypes.c_uint(0))
        if copy < 0:
            raise OSError(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    return copy


def run_daemon(image: str, offset: int, go_fd: int, ack_fd: int,
               fallback_argv: list[str]) -> None:
    """Body of the server process (never returns): open the image, report ("k<pid>" or
    "e<reason>"), wait for the mount ("x PID FD"), take the fd, report "g", serve.

    Without the libraries it execs fallback_argv (squashfuse_ll -f ... /dev/fd/{fd}) instead.
    """
    try:
        os.setsid()  # out of the launcher's session: terminal signals are the payload's
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.close(null)
        _close_other_fds((go_fd, ack_fd))  # the caller's pipes must not wait for us
        os.chdir("/")
        try:
            session = Session(image, offset)
        except LibraryMissing:
            session = None
        except OSError as err:
            os.write(ack_fd, b"e" + str(err).encode()[:400])
            os._exit(1)
        os.write(ack_fd, b"k%d" % os.getpid())
        message = os.read(go_fd, 128)
        if not message:
            os._exit(3)  # the launcher died or gave up before mounting
        os.close(go_fd)
        try:
            fd = _take_fd(message)
        except (OSError, ValueError) as err:
            os.write(ack_fd, b"e" + str(err).encode()[:400])
            os._exit(1)
        os.write(ack_fd, b"g")
        os.close(ack_fd)
        if session is None:
            os.set_inheritable(fd, True)
            argv = [a.replace("{fd}", str(fd)) for a in fallback_argv]
            os.execv(argv[0], argv)
        os._exit(0 if session.serve(fd) == 0 else 1)
    except BaseException:
        os._exit(127)
