"""The operations only OCI containers need, called by runtime/executor.py's op_oci_* methods.

Each takes the Executor (for its descriptor-based resolution of container paths) and the Op,
performs a few checked calls, and raises ContainerError naming what failed. Like the rest of
the executor they decide nothing: ocirt/plan.py put every value in the Op.

Sync messages to the create process (one line each on the socket in op.data): `idmap` (write
my id maps, then answer), `cgroup` (answered once the create process has moved this one
into the container's cgroup), `pid N` (the container's init), `hooks` (run prestart and
createRuntime now, then answer), `ready` (about to block on exec.fifo), `error TEXT`.
"""

from __future__ import annotations

import os

from satchel import log, pathwalk
from satchel.errors import ContainerError
from satchel.runtime import linux
from satchel.runtime.cfunc import get_errno

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
RLIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
           "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
           "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
           "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
# mount(8) option -> (flags to set, flags to clear); propagation options are separate
MOUNT_OPTIONS = {
    "ro": (linux.MS_RDONLY, 0), "rw": (0, linux.MS_RDONLY),
    "nosuid": (linux.MS_NOSUID, 0), "suid": (0, linux.MS_NOSUID),
    "nodev": (linux.MS_NODEV, 0), "dev": (0, linux.MS_NODEV),
    "noexec": (linux.MS_NOEXEC, 0), "exec": (0, linux.MS_NOEXEC),
    "noatime": (linux.MS_NOATIME, 0), "relatime": (linux.MS_RELATIME, 0),
    "strictatime": (0x1000000, 0), "nodiratime": (0x800, 0), "sync": (0x10, 0),
    "dirsync": (0x80, 0), "mand": (0x40, 0), "async": (0, 0x10), "atime": (0, 0x400),
    "defaults": (0, 0), "bind": (linux.MS_BIND, 0), "rbind": (linux.MS_BIND | linux.MS_REC, 0),
}
PROPAGATION = linux.PROPAGATION
_ATTRS = ((linux.MS_RDONLY, linux.MOUNT_ATTR_RDONLY), (linux.MS_NOSUID, linux.MOUNT_ATTR_NOSUID),
          (linux.MS_NODEV, linux.MOUNT_ATTR_NODEV), (linux.MS_NOEXEC, linux.MOUNT_ATTR_NOEXEC),
          (linux.MS_NOATIME, 0x10), (0x1000000, 0x20), (0x800, 0x80))  # noatime, strict, nodiratime


def split_options(options) -> tuple[int, int, int, list[str]]:
    """mount options -> (flags, cleared flags, propagation, data options for the fs)."""
    flags = clear = propagation = 0
    data = []
    for option in options:
        if option in MOUNT_OPTIONS:
            on, off = MOUNT_OPTIONS[option]
            flags, clear = (flags | on) & ~off, clear | off
        elif option in PROPAGATION:
            propagation = PROPAGATION[option]
        elif option in ("tmpcopyup", "idmap", "ridmap", "rro", "rrw", "rnosuid", "rnodev",
                        "rnoexec", "rsuid", "rdev", "rexec", "rnoatime", "ratime"):
            if option == "rro":
                flags |= linux.MS_RDONLY
            elif option in ("idmap", "ridmap"):
                raise ContainerError(f"mount option {option} is not supported by satchel")
        else:
            data.append(option)
    return flags, clear, propagation, data


def preload(seccomp: bool, terminal: bool, rlimits: bool) -> None:
    """Import and load now what the operations after pivot_root use (the host's Python
    library and libseccomp are out of reach from the container's root), and only that: each
    import is time on every create (libc is reached through runtime/cfunc.py, not ctypes)."""
    import struct  # noqa: F401 - capset

    if rlimits:
        import resource  # noqa: F401
    if terminal:
        import fcntl  # noqa: F401
        import socket  # noqa: F401
        import termios  # noqa: F401
    if seccomp:
        from satchel.runtime import seccomp as module
        module.library()


# -- sync with the create process ----------------------------------------------------------------
def send(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def receive(fd: int) -> str:
    """One line (the create process answers `ok` or `error TEXT`)."""
    chunks = b""
    while not chunks.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            raise ContainerError("the runtime process that created the container went away")
        chunks += chunk
    return chunks.decode().strip()


def sync(ex, op) -> None:
    what, fd = op.data
    send(fd, what)
    answer = receive(fd)
    if answer != "ok":
        raise ContainerError(answer.removeprefix("error "))
    if what == "idmap":
        _become_root()


def _become_root() -> None:
    """In the new user namespace, once mapped: uid/gid 0 of it, as runc's init does. Until
    then the ids are the creator's, which a map such as 0 -> 1000 leaves unmapped (the kernel
    then refuses to create files: EOVERFLOW). Where 0 is not mapped, stay as we are."""
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:
        pass


def fork(ex, op) -> None:
    """Fork the container's init: the parent reports its pid and leaves; the child (pid 1 of
    a new PID namespace, if one was made) becomes a session leader, as runc's init does.

    The child waits for its parent to be gone (end of file on a pipe whose only writer the
    parent holds), so that `pid N` reaches the create process before anything the child says:
    on a loaded machine the child used to send `hooks` or `ready` first, create then knew no
    pid, failed, and left the init blocked on exec.fifo for good."""
    fd = op.data
    reported, holder = os.pipe()
    pid = os.fork()
    if pid:
        try:
            send(fd, f"pid {pid}")
        finally:
            os._exit(0)  # closes `holder`: the child's read returns
    os.close(holder)
    os.read(reported, 1)
    os.close(reported)
    os.setsid()


def setns_path(ex, op) -> None:
    kind, path = op.data
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"opening {kind} namespace {path}: {err.strerror}") from None
    try:
        linux.setns(fd, kind, f"joining {kind} namespace {path}")
    finally:
        os.close(fd)


# -- mounts and devices ----------------------------------------------------------------------------
def mount(ex, op) -> None:
    """A spec mount: a bind (cloned onto the resolved destination, its flags set on the clone)
    or a new file system; propagation applied last."""
    fstype, source, options = op.data
    flags, _clear, propagation, data = split_options(options)
    target = ex.target_fd(op)
    what = f"mounting {source or fstype} on {op.destination}"
    if flags & linux.MS_BIND:
        try:
            src = os.open(source, os.O_PATH | os.O_CLOEXEC)
        except OSError as err:
            raise ContainerError(f"{what}: {err.strerror}") from None
        try:
            tree = linux.open_tree_clone(src, bool(flags & linux.MS_REC), what)
        finally:
            os.close(src)
        try:
            linux.move_mount(tree, target, what)
            attrs = sum(attr for bit, attr in _ATTRS if flags & bit)
            if attrs:
                linux.mount_setattr("", attrs, 0, bool(flags & linux.MS_REC) or
                                    "rro" in options, f"{what} ({','.join(options)})", dirfd=tree)
        finally:
            os.close(tree)
    else:
        if fstype == "cgroup2" or fstype == "cgroup":
            return cgroup(ex, op, flags)
        # made detached (fsopen/fsmount), then attached onto the resolved descriptor: its fd
        # says which file system is ours to make mount points in
        attrs = sum(attr for bit, attr in _ATTRS if flags & bit)
        if source and "," not in source:  # what /proc/mounts shows as its source (fsconfig)
            data = [f"source={source}"] + data
        mnt = linux.new_mount(fstype, ",".join(data) or None, attrs, what)
        try:
            linux.move_mount(mnt, target, what)
            if fstype in ("tmpfs", "devpts", "mqueue"):
                ex.underlays.own_devices.add(os.fstat(mnt).st_dev)
        finally:
            os.close(mnt)
    # every mount is already private (MAKE_PRIVATE of the whole tree, then clones and new
    # mounts): only the other propagation types need a call, on the new mount's path
    if propagation & ~(linux.MS_PRIVATE | linux.MS_REC):
        linux.mount(None, ex.root + op.destination, None, propagation, None,
                    f"setting the propagation of {op.destination}")


def cgroup(ex, op, flags: int) -> None:
    """`cgroup` mounts: the host's hierarchy bound read-only (rec). Without a cgroup
    namespace of its own a new cgroup mount would show the same tree, so the bind shows what
    a v1 host can; read-only as runc makes it unless the spec says rw."""
    src = os.open("/sys/fs/cgroup", os.O_PATH | os.O_CLOEXEC)
    what = f"binding the cgroup hierarchy on {op.destination}"
    try:
        tree = linux.open_tree_clone(src, True, what)
    finally:
        os.close(src)
    try:
        linux.move_mount(tree, ex.target_fd(op), what)
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC
        if flags & linux.MS_RDONLY:
            attrs |= linux.MOUNT_ATTR_RDONLY
        linux.mount_setattr("", attrs, 0, True, what, dirfd=tree)
    finally:
        os.close(tree)


def device(ex, op) -> None:
    """A device node: mknod as root; in a user namespace (no mknod) the host's node bound."""
    dev = dict(op.data)
    kinds = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}
    target_parent, _, name = op.destination.rpartition("/")
    if "bind" in op.flags:
        linux.mount(dev["path"], ex.mount_target(op), None, linux.MS_BIND, None,
                    f"binding device {dev['path']}")
        return
    from satchel.runtime.plan import Op
    parent = ex.target_fd(Op(op.kind, None, target_parent or "/", ("root",)))
    try:
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        os.mknod(name, kinds[dev["type"]] | (dev["mode"] & 0o777),
                 os.makedev(dev["major"], dev["minor"]), dir_fd=parent)
        os.chown(name, dev["uid"], dev["gid"], dir_fd=parent, follow_symlinks=False)
        os.chmod(name, dev["mode"] & 0o777, dir_fd=parent, follow_symlinks=False)
    except OSError as err:
        raise ContainerError(f"creating device {op.destination}: {err.strerror}") from None


# -- after pivot_root --------------------------------------------------------------------------------
def console(ex, op) -> None:
    """A new pty in the container's devpts: its master sent to the --console-socket with
    SCM_RIGHTS (as runc does), its slave the process's stdio and controlling terminal."""
    import fcntl
    import socket
    import struct
    import termios

    sock_fd, size = op.data
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlock
        number = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0" * 4))[0]  # TIOCGPTN
        slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
        if size and size[0] and size[1]:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        sock = socket.socket(fileno=sock_fd)
        try:
            socket.send_fds(sock, [b"/dev/ptmx"], [master])
        finally:
            sock.close()
        os.close(master)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(slave, target)
        if slave > 2:
            os.close(slave)
    except OSError as err:
        raise ContainerError(f"setting up the console: {err.strerror}") from None


def wait_start(ex, op) -> None:
    """Block until `start` opens exec.fifo for reading (create stops here), then go on.

    The fifo was opened O_PATH on the host before pivot_root; reopening that descriptor
    through /proc/self/fd for writing blocks until a reader comes."""
    fifo_fd, sync_fd = op.data
    find_program(ex.plan.argv[0], ex.plan.environ)  # a missing program fails create, not start
    send(sync_fd, "ready")
    os.close(sync_fd)
    if fifo_fd is None:  # exec: nothing to wait for
        return
    try:
        fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ContainerError(f"waiting for start on exec.fifo: {err.strerror}") from None
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)


def process(ex, op) -> None:
    """The process's rlimits, oom_score_adj, user and groups, capabilities, no_new_privs and
    seccomp filter, in runc's order (bounding set first, ids with the capabilities kept, then
    the requested sets; the filter last so that it need not allow these calls)."""
    spec = dict(op.data)
    _rlimits(spec["rlimits"])
    if spec["oom_score_adj"] is not None:
        pathwalk.write_kernel_file("/proc/self/oom_score_adj", str(spec["oom_score_adj"]),
                                   "setting oomScoreAdj", ContainerError)
    if spec["umask"] is not None:
        os.umask(spec["umask"])
    caps = dict(spec["capabilities"]) if spec["capabilities"] is not None else None
    # runc's order: without no_new_privs the filter goes in while we still hold the
    # privilege to install it (CAP_SYS_ADMIN); with it, last, so it need not allow setup calls
    if spec["seccomp"] is not None:
        from satchel.runtime import seccomp
        seccomp.load(spec["seccomp"])
    if caps is not None:
        _drop_bounding(caps["bounding"])
    _prctl(8, 1, "keeping capabilities across setuid")  # PR_SET_KEEPCAPS
    try:
        if spec["groups"] is not None:
            try:
                os.setgroups(spec["groups"])
            except PermissionError:
                # a rootless user namespace denies setgroups (its map is the caller's
                # alone): with no groups asked for there is nothing to set, as runc skips it
                if spec["groups"]:
                    raise
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    except OSError as err:
        raise ContainerError(f"setting user {spec['uid']}:{spec['gid']} "
                             f"(groups {spec['groups']}): {err.strerror}") from None
    _prctl(8, 0, "clearing keep-capabilities")
    if caps is not None:
        _capset(caps)
    if spec["no_new_privileges"]:
        _prctl(linux.PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")


def seccomp_late(ex, op) -> None:
    from satchel.runtime import seccomp
    seccomp.load(op.data)


def _rlimits(limits) -> None:
    import resource

    for name, hard, soft in limits:
        number = getattr(resource, name, None)
        if number is None:
            raise ContainerError(f"rlimit {name}: unknown to this system")
        inf = resource.RLIM_INFINITY
        as_limit = lambda v: inf if v >= (1 << 64) - 1 else v  # noqa: E731
        try:
            resource.setrlimit(number, (as_limit(soft), as_limit(hard)))
        except (OSError, ValueError) as err:
            raise ContainerError(f"setting rlimit {name} to {soft}:{hard}: {err}") from None


def _prctl(option: int, arg: int, what: str) -> None:
    linux.prctl(option, arg, what)


def cap_numbers(names) -> set[int]:
    last = linux.last_capability()
    out = set()
    for name in names:
        if name in CAPABILITIES and CAPABILITIES.index(name) <= last:
            out.add(CAPABILITIES.index(name))
        elif name not in CAPABILITIES:
            log.warning(f"unknown capability {name} ignored")
    return out


def _drop_bounding(names) -> None:
    keep = cap_numbers(names)
    for cap in range(linux.last_capability() + 1):
        if cap in keep:
            continue
        if linux._prctl(linux.PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = get_errno()
            if err != 22:
                raise ContainerError(f"dropping capability {CAPABILITIES[cap]} from the bounding "
                                     f"set: {os.strerror(err)}")


def _mask(names) -> tuple[int, int]:
    bits = 0
    for cap in cap_numbers(names):
        bits |= 1 << cap
    return bits & 0xFFFFFFFF, bits >> 32


def _capset(caps: dict) -> None:
    import struct

    eff, perm, inh = _mask(caps["effective"]), _mask(caps["permitted"]), _mask(caps["inheritable"])
    header = struct.pack("=Ii", 0x20080522, 0)
    data = struct.pack("=6I", eff[0], perm[0], inh[0], eff[1], perm[1], inh[1])
    if linux._capset(header, data) != 0:
        raise ContainerError(f"setting capabilities (capset): {os.strerror(get_errno())}")
    if linux._prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 and \
            get_errno() != 22:
        raise ContainerError(f"clearing the ambient capabilities: {os.strerror(get_errno())}")
    for cap in sorted(cap_numbers(caps["ambient"])):
        # like runc, a capability that cannot be raised is skipped
        linux._prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def find_program(name: str, environ: dict) -> str:
    """args[0] as execve gets it: a name without '/' searched on the process's PATH."""
    if "/" in name:
        return name
    for directory in (environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = f"{directory or '.'}/{name}"
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise ContainerError(f"executable file {name!r} not found in $PATH of the container")


def home_of(uid: int) -> str:
    """HOME for a process whose env has none: the container's /etc/passwd, else / (runc)."""
    try:
        text = pathwalk.read_regular("/etc/passwd").decode(errors="replace")
    except OSError:
        return "/"
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid):
            return fields[5] or "/"
    return "/"
