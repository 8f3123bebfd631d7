"""The built-in SquashFS server: libsquashfuse_ll's request handlers in a forked process.

Starting the squashfuse_ll program costs an exec, the dynamic linking of seven libraries and
the opening of the image, all between the mount and the first lookup, i.e. on the critical
path of every launch. Charliecloud avoids that by linking libsquashfuse_ll into ch-run. Here a
process forked from the launcher (before the container's mount namespace exists, so it lives in
the host's) loads libsquashfuse_ll and libfuse3 (through runtime/cfunc.py rather than ctypes,
whose import alone costs ~7 ms) and opens the image *while* the launcher builds its
namespaces; once the mount exists it only has to start the FUSE loop.
The C code does the serving: Python runs only a few lines around READ and READDIR, to give
libsquashfuse the inode a zero-message open leaves out (Handlers). Meanwhile a second
thread reads the container's first files ahead (sqfs_prefetch.py); it holds the GIL only
between its C calls.

The handler table is libfuse 3's `struct fuse_lowlevel_ops`, filled the way squashfuse_ll's
own main() fills it (ll_main.c); libfuse copies min(sizeof, op_size) of it, so the layout is
stable across libfuse 3 releases. If either library is missing, fuse.py falls back to
exec'ing the squashfuse_ll program ("squashfuse mode = program" forces that).
"""

from __future__ import annotations

import os
import struct

from satchel.runtime import fuse_protocol as proto
from satchel.runtime.cfunc import (Library, address_of, c_char_p, c_int, c_long, c_size_t,
                                   c_uint, c_ulong, c_void_p, callback, char_buffer, get_errno)

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


# struct fuse_args { int argc; char **argv; int allocated; }
_FUSE_ARGS = struct.Struct("@iPi")
_INIT_SLOT = 0
# struct fuse_conn_info (libfuse 3): unsigned proto_major, proto_minor, max_write, max_read,
# max_readahead, capable, want, ...
_CONN_CAPABLE, _CONN_WANT = 20, 24
FUSE_CAP_CACHE_SYMLINKS = 1 << 23
FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17     # Linux 4.19
FUSE_CAP_NO_OPENDIR_SUPPORT = 1 << 24  # Linux 5.1
_OPEN_SLOT, _READ_SLOT, _OPENDIR_SLOT, _READDIR_SLOT = 14, 15, 20, 21
# struct fuse_file_info (libfuse 3): int flags; two 32-bit words of bit fields; uint64_t fh
_FI_FH = 16
_ENOSYS, _EIO = 38, 5
# one sqfs_ll_i { sqfs_ll *ll; sqfs_inode inode; } (the inode: < 200 bytes), its inode at 8
_HANDLE_SIZE, _HANDLE_INODE = 1024, 8


class Handlers:
    """The handlers this module adds to libsquashfuse's: INIT, and zero-message opens.

    INIT lets the kernel cache symbolic links: the image is read-only, so a link's target
    never changes; without the flag every path through a link (Debian's /bin -> usr/bin,
    /lib64/ld-linux...) costs a READLINK request.

    Zero-message opens: every open() and opendir() in the image is a round trip to this
    single-threaded server, and its close() another (RELEASE); a Python start importing
    json, email, http.client, decimal and unittest makes ~260 of the ~380 requests a warm
    container sends, from every container sharing the mount. libsquashfuse's OPEN and
    OPENDIR answer with the inode in the file handle; answered ENOSYS instead (when the
    kernel offers it), the kernel opens files and directories itself from then on, with
    FOPEN_KEEP_CACHE (as libsquashfuse's OPEN) and FOPEN_CACHE_DIR (directory listings are
    cached too), and sends no RELEASE. Its READ and READDIR then carry handle 0: the inode
    is looked up by number (sqfs_ll_iget, as every other handler of the library does) into
    one buffer, which is enough because the loop answers one request at a time, and given
    to libsquashfuse's own READ and READDIR. A kernel without these capabilities gets
    libsquashfuse's OPEN and OPENDIR, as before.
    """

    def __init__(self, lib: Library, fuse: Library):
        ino_fi = (c_void_p, c_ulong, c_void_p)
        sized = (c_void_p, c_ulong, c_size_t, c_long, c_void_p)
        self._open = lib.function("sqfs_ll_op_open", ino_fi, None)
        self._opendir = lib.function("sqfs_ll_op_opendir", ino_fi, None)
        self._read = lib.function("sqfs_ll_op_read", sized, None)
        self._readdir = lib.function("sqfs_ll_op_readdir", sized, None)
        self._iget = lib.function("sqfs_ll_iget", (c_void_p, c_void_p, c_ulong))
        self._reply_err = fuse.function("fuse_reply_err", (c_void_p, c_int))
        self._handle = char_buffer(_HANDLE_SIZE)
        self._handle_at = address_of(self._handle)
        self.want = 0  # the capabilities taken at INIT
        # (keep, address) of each C entry point: kept referenced as long as the session
        self.entries = {
            _INIT_SLOT: callback(self.init, (c_void_p, c_void_p)),
            _OPEN_SLOT: callback(self._answering(self.open), ino_fi),
            _OPENDIR_SLOT: callback(self._answering(self.opendir), ino_fi),
            _READ_SLOT: callback(self._answering(self.read), sized),
            _READDIR_SLOT: callback(self._answering(self.readdir), sized),
        }

    def _answering(self, handler):
        """handler, answering EIO if it raises (a request left unanswered hangs its caller;
        only this Python part can raise, before libsquashfuse answers)."""
        def entry(req, *args) -> None:
            try:
                handler(req, *args)
            except BaseException:
                self._reply_err(req, _EIO)
        return entry

    def init(self, _userdata, conn) -> None:
        capable = c_uint.from_address(conn + _CONN_CAPABLE).value
        want = c_uint.from_address(conn + _CONN_WANT)
        want.value |= capable & (FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_NO_OPEN_SUPPORT |
                                 FUSE_CAP_NO_OPENDIR_SUPPORT)
        self.want = want.value

    def open(self, req, ino, fi) -> None:
        if self.want & FUSE_CAP_NO_OPEN_SUPPORT:
            self._reply_err(req, _ENOSYS)  # the mount is read-only: no write open gets here
        else:
            self._open(req, ino, fi)

    def opendir(self, req, ino, fi) -> None:
        if self.want & FUSE_CAP_NO_OPENDIR_SUPPORT:
            self._reply_err(req, _ENOSYS)
        else:
            self._opendir(req, ino, fi)

    def read(self, req, ino, size, off, fi) -> None:
        if self._by_number(req, ino, fi, _HANDLE_INODE):  # READ's handle: a sqfs_inode *
            self._read(req, ino, size, off, fi)

    def readdir(self, req, ino, size, off, fi) -> None:
        if self._by_number(req, ino, fi, 0):  # READDIR's handle: a sqfs_ll_i *
            self._readdir(req, ino, size, off, fi)

    def _by_number(self, req, ino, fi, at: int) -> bool:
        """Give a zero-message open's request (handle 0) the inode by its number; False if
        there is none (sqfs_ll_iget answered ENOENT)."""
        fh = c_ulong.from_address(fi + _FI_FH)
        if fh.value:
            return True  # opened by libsquashfuse's OPEN or OPENDIR
        if self._iget(req, self._handle_at, ino) != 0:
            return False
        fh.value = self._handle_at + at
        return True


class LibraryMissing(Exception):
    """libsquashfuse_ll or libfuse3 cannot be loaded: serve with the program instead."""


class Libraries:
    """libsquashfuse_ll and libfuse3, loaded (and their handler table filled) before the image
    is known: the server is forked at the launcher's start and does this meanwhile."""

    def __init__(self):
        try:
            self.lib = lib = Library(LIBSQUASHFUSE)
            self.fuse = fuse = Library(LIBFUSE)
            self.handlers = {slot: lib.address(name) for slot, name in _HANDLERS.items()}
            self.added = Handlers(lib, fuse)
        except OSError as err:
            raise LibraryMissing(str(err)) from None
        for slot, (_, address) in self.added.entries.items():
            self.handlers[slot] = address
        self.open_image = lib.function("sqfs_ll_open", (c_char_p, c_size_t), c_void_p)
        self.session_new = fuse.function("fuse_session_new", (c_void_p, c_void_p, c_size_t,
                                                              c_void_p), c_void_p)
        self.mount = fuse.function("fuse_session_mount", (c_void_p, c_char_p))
        self.loop = fuse.function("fuse_session_loop", (c_void_p,))


class Session:
    """An opened image and a FUSE session for it, not yet attached to a mount."""

    def __init__(self, libraries: Libraries, image: str, offset: int):
        self.lib, self.fuse = libraries.lib, libraries.fuse
        self._mount, self._loop = libraries.mount, libraries.loop
        self.ll = libraries.open_image(os.fsencode(image), offset)
        if not self.ll:
            raise OSError(f"cannot open the SquashFS file system in {image} at offset {offset}")
        handlers = libraries.handlers
        # every buffer below stays referenced by self: libfuse keeps pointers into args
        self.ops = char_buffer(8 * _OPS_SLOTS, struct.pack(
            f"{_OPS_SLOTS}P", *(handlers.get(slot, 0) for slot in range(_OPS_SLOTS))))
        self.progname = char_buffer(16, b"squashfuse_ll")
        self.argv = char_buffer(16, struct.pack("PP", address_of(self.progname), 0))
        self.args = char_buffer(_FUSE_ARGS.size, _FUSE_ARGS.pack(1, address_of(self.argv), 0))
        self.session = libraries.session_new(self.args, self.ops, 8 * _OPS_SLOTS, self.ll)
        if not self.session:
            raise OSError("fuse_session_new failed")

    def serve(self, fd: int) -> int:
        """Attach to the mounted /dev/fuse fd and answer requests until the mount goes away."""
        if self._mount(self.session, f"/dev/fd/{fd}".encode()) != 0:
            return 1
        return self._loop(self.session)

    def start_read_ahead(self, image: str, offset: int, paths, go_fd: int, ack_fd: int):
        """Read `paths` ahead in a thread of this process (see sqfs_prefetch.py); returns the
        lock to release once go_fd is the thread's to read, or None if it cannot start."""
        from satchel.runtime import sqfs_prefetch
        return sqfs_prefetch.start(self.lib, self.fuse, image, offset, self.session, paths,
                                   go_fd, ack_fd)


def _prune_share_records(image: str) -> None:
    """The records of images no container of this user runs any more go (share.py's
    prune_records): the last one of this mount has just gone. Off every critical path: the
    containers' processes have exited."""
    try:
        from satchel.runtime import share
        share.prune_records(os.getuid(), os.environ, image)
    except Exception:  # noqa: BLE001 - tidying only: the server exits regardless
        pass


def _close_other_fds(keep) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _take_fd(message: bytes) -> int:
    """From MOUNTED ("x PID FD"): a copy of the launcher's /dev/fuse fd, by pidfd_getfd(2)."""
    pid, fd = proto.parse_mounted(message)
    syscall = Library(None).function("syscall", None, c_long)
    pidfd = syscall(c_long(_SYS_PIDFD_OPEN), c_int(pid), c_uint(0))
    if pidfd < 0:
        raise OSError(f"pidfd_open: {os.strerror(get_errno())}")
    try:
        copy = syscall(c_long(_SYS_PIDFD_GETFD), c_int(pidfd), c_int(fd), c_uint(0))
        if copy < 0:
            raise OSError(f"pidfd_getfd: {os.strerror(get_errno())}")
    finally:
        os.close(pidfd)
    return copy


def _report_error(ack_fd: int, err: Exception) -> None:
    os.write(ack_fd, proto.error_message(str(err)))


def _read_image_message(go_fd: int):
    """(image, offset, fallback argv, read-ahead paths) of the IMAGE message
    (fuse_protocol.encode_image), or None if the launcher gave up."""
    data = b""
    while True:
        size = proto.image_size(data)
        if size is not None and len(data) >= size:
            return proto.decode_image(data[:size])
        chunk = os.read(go_fd, 65536)
        if not chunk:
            return None
        data += chunk


def run_daemon(go_fd: int, ack_fd: int, life_fd: int = -1) -> None:
    """Body of the server process (never returns), one side of fuse_protocol.py: load the
    libraries, wait for IMAGE, open it, report OPENED ("k<pid>") or ERROR ("e<reason>"), wait
    for MOUNTED ("x PID FD"), take the fd, report SERVING ("g"), serve. With container paths
    to read ahead, the report is "gr", the read-ahead thread adds LISTED ("l...") and the
    pipes are the thread's after "gr" (sqfs_prefetch.py). End of file instead of IMAGE or
    MOUNTED: the launcher needs no server after all (or died), so neither do we.

    Without the libraries it execs the fallback argv (squashfuse_ll -f ... /dev/fd/{fd}).

    life_fd, the write end of the launcher's "life" pipe, stays open until this process dies
    (through the exec of the fallback too); if a signal kills it (libsquashfuse's handlers,
    fed a crafted image, corrupt memory: SIGSEGV, SIGABRT), faulthandler writes which one
    there first (fuse.py tells the user).
    """
    try:
        os.setsid()  # out of the launcher's session: terminal signals are the payload's
        prctl = Library(None).function("prctl", (c_int, c_char_p, c_ulong, c_ulong, c_ulong))
        prctl(_PR_SET_NAME, PROCESS_NAME, 0, 0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.close(null)
        _close_other_fds((go_fd, ack_fd, life_fd))  # the caller's pipes must not wait for us
        if life_fd >= 0:
            import faulthandler  # built in, ~0.1 ms; reports from a signal handler, in C
            faulthandler.enable(file=life_fd, all_threads=False)
        os.chdir("/")
        try:
            libraries = Libraries()
            # loaded now, while the launcher plans: after IMAGE, importing it (~0.7 ms) would
            # delay OPENED, which the launcher waits for before it mounts
            from satchel.runtime import sqfs_prefetch  # noqa: F401
        except LibraryMissing:
            libraries = None
        request = _read_image_message(go_fd)
        if request is None:
            os._exit(0)
        image, offset, fallback_argv, read_ahead = request
        session = None
        if libraries is not None:
            try:
                session = Session(libraries, image, offset)
            except OSError as err:
                _report_error(ack_fd, err)
                os._exit(1)
        handover = None
        if session is not None and read_ahead:
            try:
                handover = session.start_read_ahead(image, offset, read_ahead, go_fd, ack_fd)
            except OSError as err:  # sqfs_prefetch.LayoutMismatch: a library it cannot read
                _report_error(ack_fd, err)
                os._exit(1)
        os.write(ack_fd, proto.OPENED + b"%d" % os.getpid() + proto.END)
        message = os.read(go_fd, 128)
        if not message:
            os._exit(3)  # the launcher died or gave up before mounting
        try:
            fd = _take_fd(message)
        except (OSError, ValueError) as err:
            _report_error(ack_fd, err)
            os._exit(1)
        if handover is not None:
            os.write(ack_fd, proto.SERVING + proto.READING_AHEAD + proto.END)
            handover.release()  # the pipes are the read-ahead thread's from now on
        else:
            os.write(ack_fd, proto.SERVING + proto.END)
            os.close(go_fd)
            os.close(ack_fd)
        if session is None:
            os.set_inheritable(fd, True)
            if life_fd >= 0:
                os.set_inheritable(life_fd, True)
            argv = [a.replace("{fd}", str(fd)) for a in fallback_argv]
            # searched here rather than by the launcher: the fallback rarely runs, and then
            # its lookup costs the launch nothing (fuse.py is loaded: we forked from it)
            from satchel.runtime.fuse import find_program
            argv[0] = find_program(argv[0], os.environ, required=False)
            os.execv(argv[0], argv)
        status = session.serve(fd)  # until the mount is gone: no container uses it now
        _prune_share_records(image)
        os._exit(0 if status == 0 else 1)
    except BaseException:
        os._exit(127)
