"""FUSE mounts for the unprivileged runtime: /dev/fuse, and the server kept out of the container.

Where the server lives decides whether anything outlives the container. A FUSE server inside
the container's mount namespace pins that namespace, and with it its own mount, forever (seen:
a squashfuse still running 35 minutes after its container). So the server must run in the host
mount namespace, and the kernel adds two constraints:

- fuse_fill_super() refuses (EINVAL) an fd whose opener lived in another user namespace than
  the mounter, so /dev/fuse is opened *after* unshare(CLONE_NEWUSER);
- reading /dev/fuse before the mount exists fails (EPERM) and libfuse then exits, so the
  server may start only *after* the mount.

Hence: after unshare(CLONE_NEWUSER) and before unshare(CLONE_NEWNS), open /dev/fuse and fork a
helper that waits on a pipe (it stays in the host mount namespace); the launcher mounts with
fd=N, then writes one byte; the helper execs `squashfuse_ll ... /dev/fd/N` (libfuse takes an
open fd as the "mountpoint" /dev/fd/N), which daemonizes: its daemon is reparented away from
the payload and the helper exits as soon as the daemon serves. The launcher reaps the helper
before it touches the mount, so a server that failed (corrupt image) is an error, not a hang.

A server can also die later: a crafted directory table corrupts the memory of libsquashfuse's
handlers (issue 10), both in the built-in server and in the program. Every server holds the
write end of a "life" pipe until it dies, and the built-in one has Python's faulthandler write
what killed it ("Fatal Python error: Aborted") there: the launcher polls the read end (an end of
file means the server is gone) when a request to the mount failed, when the server went silent,
and once more before the payload runs, and reports one error that names the death
(died_error). After the exec the payload gets ENOTCONN from the mount, its own error.

When the container's last process exits its mount namespace dies, the kernel aborts the FUSE
connection and the server's read() returns ENODEV: it exits. If the launcher dies before the
byte is written, the helper reads EOF (and gets SIGKILL from PR_SET_PDEATHSIG) and never runs
the server.
"""

from __future__ import annotations

import errno
import os

from satchel.errors import ContainerError
from satchel.runtime import fuse_protocol as proto

FUSE_DEVICE = "/dev/fuse"
_SIGKILL = 9
_READ_AHEAD_WINDOW = 128 * 1024        # FUSE's default max_readahead
_LIST_WAIT_MS = 100                    # the longest the launcher waits for the read-ahead list
_READ_AHEAD_LIMIT = 64 * 1024 * 1024
_CORRUPT = ": the image may be corrupt"
_FAULT = b"Fatal Python error: "       # how faulthandler starts its report
_DYING_MS = 1000                       # a server whose pipe ended is exiting: wait this long
# what requests to a dead server's mount (or writes to its pipe) fail with
_SERVER_GONE = tuple(os.strerror(e) for e in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO,
                                              errno.EPIPE))


def _died(life_fd: int, wait_ms: int, who: str, suffix: str):
    """ContainerError "WHO died (WHY)SUFFIX" if the life pipe ended within wait_ms, else None.

    WHY is what faulthandler wrote before the signal killed the server ("Aborted",
    "Segmentation fault"); without a report the server was killed or exited.
    """
    from satchel.runtime import linux

    if life_fd < 0 or not linux.wait_readable(life_fd, wait_ms):
        return None
    try:
        report = os.read(life_fd, 4096)
    except OSError:
        report = b""
    why = ""
    if report.startswith(_FAULT):
        why = " (" + report[len(_FAULT):].split(b"\n", 1)[0].decode(errors="replace") + ")"
    return ContainerError(f"{who} died{why}{suffix}")


def explain_failure(servers, err: Exception) -> Exception:
    """The error to report for `err`, raised while setting up a container with these FUSE
    servers: the death of a server if one died (the root cause: the requests to its mount
    fail with ENOTCONN or EIO meanwhile), else `err` itself."""
    text = str(err)
    wait_ms = _DYING_MS if any(reason in text for reason in _SERVER_GONE) else 0
    for server in servers:
        died = server.died_error(wait_ms)
        if died is not None:
            return died
    return err


def check_alive(servers) -> None:
    """Raise the death of a server that died, now (one poll each: before the payload runs)."""
    for server in servers:
        died = server.died_error(0)
        if died is not None:
            raise died


class FuseServer:
    """A /dev/fuse descriptor and the waiting helper that will serve it."""

    __slots__ = ("name", "fd", "pid", "go_fd", "ack_fd", "argv", "mountpoint", "life_fd")

    def __init__(self, name: str, fd: int, pid: int, go_fd: int, ack_fd: int, argv,
                 life_fd: int = -1):
        self.name = name
        self.fd = fd
        self.pid = pid
        self.go_fd = go_fd
        self.ack_fd = ack_fd
        self.argv = argv
        self.mountpoint = None  # set by the executor once mounted
        self.life_fd = life_fd  # end of file once the server (and its daemon) is gone

    def died_error(self, wait_ms: int = 0):
        """A ContainerError naming the server's death if it died (within wait_ms), else None."""
        if self.name != "image":
            return _died(self.life_fd, wait_ms, f"the FUSE server for the {self.name} "
                         f"({os.path.basename(self.argv[0])})", "")
        return _died(self.life_fd, wait_ms, f"the SquashFS server for {self.argv[-2]} "
                     f"({os.path.basename(self.argv[0])})", _CORRUPT)

    def before_mount(self) -> None:
        """Nothing to wait for: the program starts only after the mount."""

    def snapshot_namespace(self) -> None:
        """Have the helper take a private copy of the launcher's mount namespace, now.

        For a server that must see the container's mounts (fuse-overlayfs reads the image
        mount as its lower layer): the copy holds what is mounted so far, but not the mount the
        server will serve (made after this returns), so nothing pins that mount.
        """
        try:
            os.write(self.go_fd, proto.SNAPSHOT)
            answer = os.read(self.ack_fd, 256)
        except OSError as err:
            raise ContainerError(f"FUSE helper for {self.name}: {err.strerror}") from None
        if answer != proto.SNAPSHOT_DONE:
            raise ContainerError(f"FUSE helper for {self.name} could not enter the container's "
                                 f"mount namespace: {answer.decode(errors='replace') or 'died'}")

    def start(self) -> None:
        """Let the helper exec the server (call right after the mount succeeded)."""
        try:
            os.write(self.go_fd, proto.EXEC)
        finally:
            os.close(self.go_fd)
            os.close(self.ack_fd)
            self.go_fd = self.ack_fd = -1
        self.close()  # the server holds its own copy of the fd

    def wait_ready(self) -> None:
        """Reap the helper; it exits 0 once the daemonized server answers requests."""
        _, status = os.waitpid(self.pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return
        if os.WIFSIGNALED(status):
            why = f"killed by signal {os.WTERMSIG(status)}"
        else:
            why = f"exit status {os.WEXITSTATUS(status)}"
        raise ContainerError(f"FUSE server for {self.name} failed ({why}): "
                             f"{' '.join(self.argv)}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def read_ahead(paths, look_up) -> None:
        """Ask the kernel to read files of the mount ahead (the program cannot store pages).

        look_up(container_path) -> host path or None. WILLNEED reads one readahead window
        (128 KiB) per call, so a whole file takes one call per window; the reads are
        asynchronous FUSE requests the server answers while the launcher goes on.
        """
        for path in paths:
            host_path = look_up(path)
            if host_path is None:
                continue
            try:
                fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                size = os.fstat(fd).st_size
                for offset in range(0, min(size, _READ_AHEAD_LIMIT), _READ_AHEAD_WINDOW):
                    os.posix_fadvise(fd, offset, _READ_AHEAD_WINDOW, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def store_read_ahead(self, look_up) -> None:
        """Nothing to store: the kernel itself read ahead for the program. Last look at the
        server before the payload: a death meanwhile is the error (check_alive)."""
        check_alive((self,))


def find_program(name: str, environ, required: bool = True) -> str:
    """Absolute path of a server program: as given if it has a '/', else searched on PATH.

    required=False (a fallback that may never run): the bare name if it is not found.
    """
    if "/" in name:
        return name
    search = environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    for directory in search.split(":") + ["/usr/bin", "/usr/sbin", "/bin"]:
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    if not required:
        return name
    raise ContainerError(f"{name} not found on PATH: it is needed to mount images without "
                         "privilege", hint="install squashfuse (Debian: apt install squashfuse)")


def open_device() -> int:
    try:
        return os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        hint = None
        if err.errno == 13:
            hint = "make /dev/fuse usable by users: chmod 666 /dev/fuse"
        raise ContainerError(f"opening {FUSE_DEVICE}: {err.strerror}", hint=hint) from None


def prepare(name: str, argv: list[str], detach: bool = False) -> FuseServer:
    """Open /dev/fuse and fork the helper; in argv '{fd}' becomes the fd number.

    detach: the program stays in the foreground (a --fusemount "host:" program run with -f):
    the helper forks it into a new session and exits at once, so wait_ready() returns and
    the payload does not inherit the server as its child.

    Must run after unshare(CLONE_NEWUSER) and before unshare(CLONE_NEWNS). The helper waits for
    one byte: 'x' execs the server; 'n' first moves the helper into a private copy of the
    launcher's mount namespace (FuseServer.snapshot_namespace), answered with 'k'.
    """
    from satchel.runtime import linux

    fd = open_device()
    argv = [a.replace("{fd}", str(fd)) for a in argv]
    launcher = os.getpid()
    read_fd, write_fd = os.pipe()
    ack_read, ack_write = os.pipe()
    life_read, life_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: wait for the mount, then become the server
        os.close(write_fd)
        os.close(ack_read)
        os.close(life_read)
        try:
            linux.set_parent_death_signal(_SIGKILL)
            command = os.read(read_fd, 1)
            if command == proto.SNAPSHOT:
                _enter_copy_of(launcher, ack_write)
                command = os.read(read_fd, 1)
            if command != proto.EXEC:
                os._exit(3)  # the launcher died or gave up: no server
            os.close(read_fd)
            # only the fuse fd and the life pipe (and stdio) go to the server, which keeps the
            # pipe open as long as it (or the daemon it forks) lives
            low, high = sorted((fd, life_write))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, 65536)
            os.set_inheritable(fd, True)
            os.set_inheritable(life_write, True)
            if detach:
                if os.fork() != 0:
                    os._exit(0)
                os.setsid()  # a Ctrl-C for the payload's process group is not for the server
            os.execv(argv[0], argv)
        except BaseException:
            pass
        os._exit(127)
    os.close(read_fd)
    os.close(ack_write)
    os.close(life_write)
    return FuseServer(name, fd, pid, write_fd, ack_read, argv, life_read)


class BuiltinServer:
    """The built-in SquashFS server (sqfs_server.py) in a detached process, started early.

    It needs no user namespace and no fd to start: forked (twice, so that it is reparented
    away from what becomes the payload) as soon as the launcher starts (fork_builtin), it
    loads its libraries while the launcher imports its modules, opens the image it is then sent
    (serve_image) while the launcher builds its plan and namespaces, or exits if cancelled. The
    /dev/fuse fd, which only the launcher can open (inside the user namespace), is handed over
    after the mount with pidfd_getfd(2): the launcher sends MOUNTED ("x PID FD"), the server
    takes its own copy of the fd, answers SERVING ("g") and serves. Only then may the launcher
    close its copy.

    Given the container's first reads, the server reads them ahead meanwhile: it answers "gr",
    lists the files it reads (LISTED, any time after OPENED), and store_read_ahead() lets it
    store their pages in the kernel's cache (sqfs_prefetch.py). fuse_protocol.py is the
    protocol's one description.
    """

    __slots__ = ("name", "image", "offset", "pid", "go_fd", "ack_fd", "fd", "mountpoint",
                 "server_pid", "reads_ahead", "_received", "life_fd", "share", "told")

    def __init__(self, name: str, pid: int, go_fd: int, ack_fd: int, life_fd: int = -1):
        self.name = name
        self.image = None       # set by serve_image()
        self.offset = None
        self.pid = pid          # the short-lived middle process, reaped in wait_ready()
        self.go_fd = go_fd
        self.ack_fd = ack_fd
        self.fd = -1
        self.mountpoint = None
        self.server_pid = 0
        self.reads_ahead = False
        self._received = b""    # messages read from ack_fd and not consumed yet
        self.life_fd = life_fd  # the server's life pipe (see the module docstring)
        self.share = None       # share.Claim: this mount is shared once the container runs
        self.told = None        # serve_image()'s arguments, once sent

    def died_error(self, wait_ms: int = 0):
        """A ContainerError naming the server's death if it died (within wait_ms), else None."""
        return _died(self.life_fd, wait_ms, f"the SquashFS server for {self.image}", _CORRUPT)

    def serve_image(self, image: str, offset: int, fallback_argv: list[str],
                    read_ahead=()) -> None:
        """Have the server open image[offset:]; fallback_argv (the squashfuse_ll program,
        '{fd}' for the fd) is exec'ed if libsquashfuse_ll or libfuse3 cannot be loaded;
        read_ahead: container paths the server reads ahead (the first files the container
        runs)."""
        self.image, self.offset = image, offset
        self.told = (image, offset, tuple(fallback_argv), tuple(read_ahead))
        message = proto.encode_image(image, offset, fallback_argv, read_ahead)
        try:
            while message:
                message = message[os.write(self.go_fd, message):]
        except OSError as err:
            raise ContainerError(f"FUSE server for {self.name}: {err.strerror}") from None

    def cancel(self) -> None:
        """No server needed after all: it exits at the end of its pipe."""
        self._close_pipes()
        os.close(self.life_fd)
        self.life_fd = -1
        os.waitpid(self.pid, 0)

    def open_device(self) -> None:
        """Open /dev/fuse (call inside the container's user namespace)."""
        if self.fd < 0:
            self.fd = open_device()

    def _message(self, kind: bytes) -> bytes | None:
        """The next message of this kind (its text after the kind), None at end of file.

        Messages of other kinds are kept for later; an ERROR message is returned as is.
        """
        while True:
            start = 0
            while True:
                end = self._received.find(proto.END, start)
                if end < 0:
                    break
                message = self._received[start:end]
                if message[:1] in (kind, proto.ERROR):
                    self._received = self._received[:start] + self._received[end + 1:]
                    return message[len(kind):] if message[:1] == kind else message
                start = end + 1
            chunk = os.read(self.ack_fd, 8192)
            if not chunk:
                return None
            self._received += chunk

    def _answer(self, expected: bytes, what: str) -> bytes:
        try:
            answer = self._message(expected)
        except OSError as err:
            raise ContainerError(f"FUSE server for {self.name}: {err.strerror}") from None
        if answer is None:  # its end of the pipe closed: it is exiting, or crashed
            died = self.died_error(_DYING_MS)
            if died is not None:
                raise died
        if answer is None or answer[:1] == proto.ERROR:
            why = answer[1:].decode(errors="replace") if answer else "it exited unexpectedly"
            raise ContainerError(f"FUSE server for {self.name} failed {what}: {why}",
                                 hint="'squashfuse mode = program' in satchel.conf uses the "
                                      "squashfuse_ll program instead")
        return answer

    def before_mount(self) -> None:
        """Wait until the server has opened the image (usually long done by now)."""
        pid = self._answer(proto.OPENED, "to open the image")
        self.server_pid = int(pid or 0)
        if self.server_pid:
            from satchel.runtime import linux
            linux.allow_ptracer(self.server_pid)  # Yama ptrace_scope=1 would refuse pidfd_getfd

    def start(self) -> None:
        try:
            os.write(self.go_fd, proto.mounted_message(os.getpid(), self.fd))
        except OSError as err:
            self._close_pipes()
            raise ContainerError(f"FUSE server for {self.name}: {err.strerror}") from None

    def wait_ready(self) -> None:
        """The server holds its copy of the fd and serves: reap the middle process, close ours."""
        try:
            self.reads_ahead = self._answer(proto.SERVING, "to take over the FUSE "
                                            "connection") == proto.READING_AHEAD
        finally:
            if not self.reads_ahead:
                self._close_pipes()
            os.waitpid(self.pid, 0)
            self.close()

    @staticmethod
    def read_ahead(paths, look_up) -> None:
        """Nothing to ask: the server got the paths at its start and reads them already."""

    def store_read_ahead(self, look_up) -> None:
        """Let the server store the pages it reads ahead in the kernel's cache.

        The kernel takes pages only for files it has looked up: look_up(container_path) looks
        up each file the server listed (the paths, their ELF interpreters and libraries), then
        "s" lets the server store (sqfs_prefetch.py). Nothing is waited for after that.
        """
        if not self.reads_ahead:
            check_alive((self,))
            return
        self.reads_ahead = False
        from satchel.runtime import linux
        try:
            # listed within ~3 ms of the server's start, long before this; the bound is for
            # an image that makes reading the first blocks very slow: then go on without
            waiting = proto.END + self._received
            if proto.END + proto.LISTED not in waiting and \
                    proto.END + proto.ERROR not in waiting and \
                    not linux.wait_readable(self.ack_fd, _LIST_WAIT_MS):
                return
            listed = self._message(proto.LISTED)
            if listed is None:  # it crashed while reading ahead (the same lookups as ours)
                died = self.died_error(_DYING_MS)
                if died is not None:
                    raise died
            elif listed[:1] == proto.ERROR:  # it could not read ahead: say so, loudly
                raise ContainerError(
                    f"the SquashFS server for {self.image} failed "
                    f"{listed[1:].decode(errors='replace')}",
                    hint="'prefetch = no' in satchel.conf turns reading ahead off")
            else:
                paths = [os.fsdecode(path) for path in listed.split(b"\0") if path]
                from satchel import log
                log.debug(f"the FUSE server reads ahead: {' '.join(paths) or 'nothing'}")
                for path in paths:
                    look_up(path)
                os.write(self.go_fd, proto.STORE)
        except OSError:
            pass  # a server that died fails the mount's next request, with its own error
        finally:
            self._close_pipes()
        check_alive((self,))  # the last look before the payload (listing is not storing)

    def _close_pipes(self) -> None:
        for fd in (self.go_fd, self.ack_fd):
            if fd >= 0:
                os.close(fd)
        self.go_fd = self.ack_fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def fork_builtin(name: str) -> BuiltinServer:
    """Fork the built-in server (see BuiltinServer) before the image is known; returns at once.

    The launcher calls this first thing, so that the server's imports and library loading
    (~4 ms) use the other core while the launcher imports and plans; serve_image() or cancel()
    follow.
    """
    go_read, go_write = os.pipe()
    ack_read, ack_write = os.pipe()
    life_read, life_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(ack_read)
        os.close(life_read)
        try:
            if os.fork() == 0:
                from satchel.runtime import sqfs_server
                sqfs_server.run_daemon(go_read, ack_write, life_write)
        except BaseException:
            pass
        os._exit(0)
    os.close(go_read)
    os.close(ack_write)
    os.close(life_write)
    return BuiltinServer(name, pid, go_write, ack_read, life_read)


def start_builtin(name: str, image: str, offset: int, fallback_argv: list[str],
                  read_ahead=()) -> BuiltinServer:
    """fork_builtin() and serve_image() at once."""
    server = fork_builtin(name)
    server.serve_image(image, offset, fallback_argv, read_ahead)
    return server


def _enter_copy_of(launcher: int, ack_fd: int) -> None:
    """In the helper: join the launcher's mount namespace, then unshare a private copy of it."""
    from satchel.runtime import linux

    try:
        ns = os.open(f"/proc/{launcher}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        linux.setns(ns, "mount", "joining the container's mount namespace")
        os.close(ns)
        linux.unshare(("mount",))
    except (OSError, ContainerError) as err:
        os.write(ack_fd, str(err).encode()[:200] or b"?")
        os._exit(4)
    os.write(ack_fd, proto.SNAPSHOT_DONE)


def mount_options(fd: int, uid: int, gid: int, extra: str = "") -> str:
    """Kernel FUSE options; default_permissions makes the kernel enforce the image's modes."""
    opts = f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions"
    return opts + ("," + extra if extra else "")
