"""build_plan(): every decision about a container, as plain data, before anything happens.

The plan is PURE: the options, the admin Config, the ImageRef and a HostInfo go in; a
ContainerPlan comes out (namespaces, id maps, an ordered tuple of small frozen Op records, the
environment, argv, working directory, hostname, and the built-in FUSE server to start). Nothing
is read from the world except through HostInfo, so unit tests feed a fake host and assert on the
operations; `-d` prints the plan as JSON. executor.apply() then performs the operations in order
and decides nothing. The options are read, never changed: what they imply (--containall's
--contain, --pid...) is derived into the _Plan being built.

build_plan() reads as the list of what a container gets, one named step each, in the order the
operations run (as bubblewrap's setup ops and Apptainer's lifecycle stages): clean-up and
limits, namespaces, the session, the image, /proc and /sys, /dev, home, /tmp, the system binds,
passwd and group, the working directory, the user's binds, GPUs, the finished root, kernel path
protection, the switch to the root, and the process.

Op destinations are host paths, except for ops flagged "root", whose destination is a path
inside the container, resolved below ContainerPlan.root at apply time the way the container
will see it (image symlinks are relative to the container root, never the host).
"""

from __future__ import annotations

import posixpath

from satchel.errors import ConfigError, ContainerError, UsageError
from satchel.runtime import binds as bindmod
from satchel.runtime import environment

# --- operation kinds: executor.py has one op_KIND method each -------------------------------
# Each line: what source, destination and data hold (absent: None). Data is immutable: a str,
# an int, or a tuple of them (nested tuples where said). Flags common to many kinds: "root"
# (destination is a container path), "rec", "ro", "nosuid", "nodev", "noexec".
#   kind                              source        destination      data
UNSHARE = "unshare"                # -             -                tuple of namespace names
ID_MAP = "id_map"                  # -             -                (uid_map line, gid_map line);
                                   #                                setgroups is denied first
FUSE_PREPARE = "fuse_prepare"      # server name   -                program argv tuple ('{fd}':
                                   # the fd); flag "builtin": data None, the server is
                                   # ContainerPlan.server, started by the launcher, adopted here;
                                   # "detach": a foreground program (--fusemount host:)
MAKE_PRIVATE = "make_private"      # -             mount tree       - (propagation: private)
PROPAGATION = "propagation"        # -             mount path       linux.PROPAGATION name
                                   # ("rslave", "shared", ...): OCI rootfsPropagation
TMPFS = "tmpfs"                    # "tmpfs"       path             tmpfs options str
MKDIR = "mkdir"                    # -             host directory   - ("owned": refused if a
                                   # symlink or another user's; else made if missing)
MOUNT_SQUASHFS_FUSE = "mount_squashfs_fuse"  # server name  host dir  (uid, gid)
FUSE_WAIT = "fuse_wait"            # server name   -                - ("writable": an overlay;
                                   # "check": the mount at the container path in destination
                                   # must answer, a --fusemount)
FUSE_SNAPSHOT = "fuse_snapshot"    # server name   -                - (the helper copies the
                                   #                                mounts so far)
PREFETCH = "prefetch"              # server name   -                container paths to read ahead
PREFETCH_STORE = "prefetch_store"  # server name   -                - (store the pages read)
MOUNT_SQUASHFS_LOOP = "mount_squashfs_loop"  # image path  host dir  (offset, size)
BIND_IMAGE_DIR = "bind_image_dir"  # sandbox dir   host dir         -
MOUNT_OVERLAY = "mount_overlay"    # "overlay"     host dir         (lower, upper, work): root
MOUNT_OVERLAY_FUSE = "mount_overlay_fuse"  # server name  host dir  (uid, gid): non-root
MOUNT_FUSE = "mount_fuse"          # server name   container path   (uid, gid): --fusemount
FAKEROOT_MAP = "fakeroot_map"      # -             -                (newuidmap args, newgidmap
#                                    args): unshare the user namespace, a helper maps it
FUSE2FS_PREPARE = "fuse2fs_prepare"  # layer name  -                (image, offset, size,
#                                    read-only): lock the image, start fuse2fs (fuse2fs.py)
MOUNT_EXT3 = "mount_ext3"          # layer name    host dir         - (fuse2fs' mount attached)
MOUNT_EXT3_LOOP = "mount_ext3_loop"  # image path  host dir         (offset, size): root
ENSURE_MOUNTPOINT = "ensure_mountpoint"  # -       container path   "dir" | "file" (underlay
                                   # if missing; "user": refused if it resolves to the root)
BIND = "bind"                      # host path     container path   -
BIND_DEV_NODE = "bind_dev_node"    # host node     container path   - (onto a file in /dev)
MOUNT_DEVPTS = "mount_devpts"      # "devpts"      container path   devpts options str
SYMLINK = "symlink"                # link target   container path   -
WRITE_FILE = "write_file"          # -             host file        text
GEN_PASSWD = "gen_passwd"          # image file    host file        (entry line, uid, user name)
GEN_GROUP = "gen_group"            # image file    host file        (((gid, name), ...), user)
MOUNT_PROC = "mount_proc"          # "proc"        container path   - (a fresh procfs: --pid)
READONLY_PATH = "readonly_path"    # -             container path   - (bound on itself, ro, rec;
                                   # "optional": EPERM/EACCES tolerated, see _protect_kernel)
MASK_PATH = "mask_path"            # -             container path   "dir" (empty ro tmpfs) |
                                   #                                "file" (/dev/null over it)
UNBINDABLE = "unbindable"          # -             host dir         - (bound on itself, made
                                   # MS_UNBINDABLE: recursive binds above skip what is below)
REMOUNT_RO = "remount_ro"          # -             container path   - ("rec")
NOSUID_TREE = "nosuid_tree"        # -             host dir         - (nosuid on every mount below)
SETHOSTNAME = "sethostname"        # -             -                host name
NET_LOOPBACK = "net_loopback"      # "lo"          -                ((key, value), ...) network args
FORK_INIT = "fork_init"            # -             -                - (--pid: the parent forwards
                                   # signals, the child, pid 1, goes on)
PIVOT_ROOT = "pivot_root"          # -             host dir         -
RECORD_NAMESPACES = "record_namespaces"  # -       -                namespace names (--sharens,
                                   # the first of its parent: share.record_sharens)
CHDIR = "chdir"                    # -             -                candidate dirs, first that
                                   # works ("strict": only the first)
DROP_CAPS = "drop_caps"            # -             -                - (no_new_privs, caps emptied)
CHECK_SHELL = "check_shell"        # -             "/bin/sh"        - (must exist in the container)
SECCOMP = "seccomp"                # -             -                (default action, ((syscall nr,
                                   # action, ((arg, op, a, b), ...)), ...), architectures):
                                   # seccomp.load()
EXEC = "exec"                      # "/bin/sh"     -                - (execve(ContainerPlan.argv))
EXEC_CHILD = "exec_child"          # "/bin/sh"     -                - (--pid: init forks, reaps)
INSTANCE_INIT = "instance_init"    # "/bin/sh"     -                ready fd (stay as the init)
JOIN_NAMESPACES = "join_namespaces"  # -           -                (pid, namespace names), user
                                   #                                first (instance://,
                                   #                                --sharens)
REAPER = "reaper"                  # -             -                (host paths, cgroup dirs)
                                   #                                removed after the container
CGROUP = "cgroup"                  # -             -                cgroups.CgroupPlan.to_data()
# OCI containers (satchel oci, ocirt/plan.py builds them; performed by ocirt/ops.py, which the
# op_oci_* methods import when the first one runs):
OCI_SYNC = "oci_sync"              # -             -                (message, sync fd): tell the
                                   # create process, wait for its answer (idmap, hooks, cgroup)
OCI_SETNS = "oci_setns"            # -             -                (namespace, path) to join
OCI_FORK = "oci_fork"              # -             -                sync fd: fork the init, the
                                   # parent reports its pid and exits
OCI_MOUNT = "oci_mount"            # -             container path   (fstype, source, options)
OCI_DEVICE = "oci_device"          # -             container path   ((key, value), ...) of the
                                   # device ("bind": the host's node bound, in a user namespace)
OCI_CONSOLE = "oci_console"        # -             -                (socket fd, (rows, cols))
OCI_WAIT_START = "oci_wait_start"  # -             -                (exec.fifo fd, sync fd)
OCI_PROCESS = "oci_process"        # -             -                ((key, value), ...): ids,
                                   # rlimits, capabilities, no_new_privs, seccomp (if no nnp)
OCI_SECCOMP = "oci_seccomp"        # -             -                compiled profile (with
                                   # no_new_privs: last, after the wait)
# flags OCI plans set on the kinds above: BIND_IMAGE_DIR "owned" (the bundle's root is ours to
# create mount points in, as runc does); EXEC "lookup" (args[0] searched on the PATH, HOME from
# the container's passwd if the env has none); MASK_PATH/READONLY_PATH "if_exists" (skipped if
# an earlier mask hid the path by then, as runc does)

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# runc's and crun's defaults (the OCI spec's readonlyPaths and maskedPaths, plus powercap from
# containers-common): host kernel settings and leaks of host state. Read-only, not merely
# root-owned: uid 0 writes /proc/sys/* by file mode alone, every capability dropped or not.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap")
SYSTEM_CWDS = frozenset(("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64",
                         "/libx32", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv",
                         "/sys", "/usr", "/var"))
NO_MOUNT_KEYS = frozenset(("home", "tmp", "cwd", "hostfs", "bind-paths", "dev", "devpts",
                           "proc", "sys", "hosts", "resolv", "passwd", "group", "localtime"))
ACTIONS = ("exec", "run", "shell", "test")
INSTANCE_ACTIONS = ("start", "run")  # what `instance start|run` runs as the instance's payload


_set = object.__setattr__


class _Frozen:
    """Instances take their values in __init__ (through _set) and refuse assignment after."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name}")

    __delattr__ = __setattr__


class Op(_Frozen):
    """One setup operation: what to do, from where, to where, how (frozen; shapes above)."""

    __slots__ = ("kind", "source", "destination", "flags", "data")

    def __init__(self, kind: str, source=None, destination=None, flags=(), data=None):
        _set(self, "kind", kind)
        _set(self, "source", source)
        _set(self, "destination", destination)
        _set(self, "flags", tuple(flags))
        _set(self, "data", data)

    def to_dict(self) -> dict:
        out = {"op": self.kind}
        if self.source is not None:
            out["source"] = self.source
        if self.destination is not None:
            out["destination"] = self.destination
        if self.flags:
            out["flags"] = list(self.flags)
        if self.data is not None:
            out["data"] = self.data if not isinstance(self.data, tuple) else list(self.data)
        return out

    def __repr__(self) -> str:
        return f"Op({self.kind}, {self.source!r} -> {self.destination!r}, {self.flags})"


class ServerStart(_Frozen):
    """The built-in SquashFS server this launch uses (sqfs_server.py), as the launcher starts
    it before anything else (launch.start_server): the image and offset it opens, the
    squashfuse_ll argv it execs instead if its libraries are missing ('{fd}': the fd), and
    the container paths it reads ahead. FUSE_PREPARE "builtin" adopts the started server."""

    __slots__ = ("image", "offset", "fallback_argv", "reads", "share")

    def __init__(self, image: str, offset: int, fallback_argv, reads=(), share=False):
        _set(self, "image", image)
        _set(self, "offset", offset)
        _set(self, "fallback_argv", tuple(fallback_argv))
        _set(self, "reads", tuple(reads))
        _set(self, "share", bool(share))  # one mount for this user's containers (share.py)

    def to_dict(self) -> dict:
        return {"image": self.image, "offset": self.offset,
                "fallback": list(self.fallback_argv), "reads": list(self.reads),
                "share": self.share}


class RunOptions:
    """The options of exec/run/shell/test and instance start, as the plan needs them.

    Filled by launch.run_options() from the parsed command line; build_plan() only reads it.
    """

    __slots__ = ("command", "args", "binds", "contain", "containall", "cleanenv",
                 "env", "env_file_pairs", "home", "no_home", "no_mount", "pwd", "workdir",
                 "writable_tmpfs", "overlay", "pid", "ipc", "uts", "hostname", "net",
                 "network", "network_args", "no_eval", "instance_ready_fd", "join",
                 "shell", "gpu", "prog", "scratch", "dns", "no_pid", "cleanup", "cgroup",
                 "fusemounts", "seccomp", "writable", "fakeroot", "ignore_subuid", "share",
                 "sharens")

    def __init__(self, command: str = "exec", args=(), **values):
        self.command = command
        self.args = tuple(args)
        self.binds = ()         # -B and --mount, parsed once: BindSpec objects (binds.py)
        self.contain = self.containall = self.cleanenv = False
        self.env = []
        self.env_file_pairs = []
        self.home = None
        self.no_home = False
        self.no_mount = []
        self.pwd = None
        self.workdir = None
        self.writable_tmpfs = False
        self.overlay = []
        self.pid = self.ipc = self.uts = self.net = False
        self.hostname = None
        self.network = None     # --network: comma-separated network names
        self.network_args = []  # --network-args: KEY=VALUE strings
        self.no_eval = False    # --no-eval: injected variables (and OCI runscript args) verbatim
        self.instance_ready_fd = None  # instance start: end as its init, report on this fd
        self.join = None        # exec|run|shell instance://NAME: a JoinTarget
        self.shell = None
        self.gpu = []       # satchel.hpc.gpu.GpuBinds objects (launch.run_options finds them)
        self.prog = "satchel"
        self.scratch = []       # -S/--scratch: container directories, empty and writable
        self.dns = None         # --dns: comma-separated name servers for /etc/resolv.conf
        self.no_pid = False     # --no-pid: no PID namespace even with --containall
        self.cleanup = ()       # host paths the reaper removes after the container (--unsquash)
        self.cgroup = None      # a cgroups.CgroupRequest (resource limits), or None
        self.fusemounts = ()    # --fusemount: fusemount.FuseMount objects (host programs)
        self.seccomp = None     # --security seccomp: the compiled filter (seccomp.py), or None
        self.writable = False   # --writable: a sandbox the caller can write, a SIF's overlay
        self.fakeroot = False   # --fakeroot: uid 0 of a user namespace (subordinate ids)
        self.ignore_subuid = False  # --ignore-subuid: --fakeroot maps root alone
        self.share = True       # --no-share: this container's image mount is its own
        self.sharens = False    # --sharens, the first container of its parent: record it
        for key, value in values.items():
            setattr(self, key, value)


class ContainerPlan:
    """Everything the executor needs; printable as JSON (to_dict)."""

    __slots__ = ("rootless", "namespaces", "uid", "gid", "session", "root", "ops", "environ",
                 "argv", "cwd", "hostname", "image", "warnings", "server")

    def __init__(self, **values):
        for key in self.__slots__:
            setattr(self, key, values.get(key))

    def to_dict(self) -> dict:
        return {
            "image": {"path": self.image.path, "kind": self.image.kind,
                      "offset": self.image.fs_offset, "size": self.image.fs_size},
            "rootless": self.rootless,
            "namespaces": list(self.namespaces),
            "uid": self.uid, "gid": self.gid,
            "session": self.session, "root": self.root,
            "server": self.server.to_dict() if self.server is not None else None,
            "operations": [op.to_dict() for op in self.ops],
            "argv": [a if len(a) < 200 else a[:60] + "...<script>" for a in self.argv],
            "cwd": list(self.cwd), "hostname": self.hostname,
            "environ": dict(self.environ),
            "warnings": list(self.warnings),
        }

    def ops_of(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind]


class JoinTarget:
    """A running instance to join: the process holding its namespaces, and its image."""

    __slots__ = ("name", "pid", "namespaces", "image")

    def __init__(self, name: str, pid: int, namespaces, image: str):
        self.name = name
        self.pid = pid
        self.namespaces = tuple(namespaces)
        self.image = image


def default_session_dir() -> str:
    """runtime/session/, shipped as a package (see its __init__); found without importing it."""
    return posixpath.join(posixpath.dirname(posixpath.abspath(__file__)), "session")


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


class _Plan:
    """The plan being built: the inputs, what they imply (derived once, here, never written
    back to the options), and the operations so far. The step functions below read it and
    add operations; the checks that can fail on bad input run in __init__, before any step."""

    def __init__(self, opts: RunOptions, config, image, host, session_dir: str | None):
        self.opts, self.config, self.image, self.host = opts, config, image, host
        self.ops: list[Op] = []
        self.warnings: list[str] = []
        self.binds_done: list[tuple[str, str]] = []  # (source, destination) of host binds
        containall = opts.containall
        self.contain = opts.contain or containall
        self.cleanenv = opts.cleanenv or containall
        self.pid = (opts.pid or containall) and not opts.no_pid
        self.ipc = opts.ipc or containall
        self.no_mount = _no_mount(opts.no_mount)
        # -u/--userns is accepted for compatibility: it is already the mode of every non-root
        # caller, and root keeps the kernel SquashFS runtime (a loop device needs no FUSE
        # server)
        self.rootless = host.uid != 0
        self.session = session_dir or default_session_dir()
        self.root = self.session + "/root"
        self.network_args = ()
        if opts.net or opts.network or opts.network_args:
            self.network_args = _extra().network_request(opts, self.warnings)
        self.fakeroot = None  # --fakeroot without privilege: overlays.fakeroot_maps()
        self.layers = None    # overlays.Layers: --overlay, --writable, a SIF's overlay
        if opts.overlay or opts.writable or opts.writable_tmpfs or opts.fakeroot or \
                getattr(image, "overlay_part", None):
            from satchel.runtime import overlays
            if opts.fakeroot and self.rootless:
                self.fakeroot = overlays.fakeroot_maps(host, opts.ignore_subuid)
            self.layers = overlays.request(opts, config, host, image, self.session)
        self.overlay = None if self.layers is None or not self.layers.overlaid else \
            (self.layers.upper, self.layers.work, self.layers.tmpfs_upper)
        self.image_target = self.root if self.overlay is None else self.session + "/lower"
        # the ids FUSE mounts admit: uid 0 of a --fakeroot namespace is the caller
        self.fuse_ids = (0, 0) if self.fakeroot else (host.uid, host.gid)
        self.fuse_flags = ("allow_other",) if self.fakeroot else ()
        self.server = server_start(config, image, host.uid, opts) if self.rootless else None
        self.user_binds = _user_bind_specs(opts, config, host)
        self.home_src, self.home_dst, self.home_explicit = _home_dirs(opts, host)
        self.workdir = _workdir(opts, host)
        self.cwd: list[str] = []
        self.gpu_env: dict[str, str] = {}

    def mounts(self, key: str) -> bool:
        """Whether --no-mount leaves KEY, and the admin's `mount KEY` allows it."""
        return key not in self.no_mount and self.config.get_bool("mount " + key, True)

    def add(self, kind, source=None, destination=None, flags=(), data=None) -> None:
        self.ops.append(Op(kind, source, destination, flags, data))

    def ensure(self, destination: str, kind: str, user: bool = False) -> None:
        # "user": a user bind, refused if it resolves to the container's root (a system
        # bind is skipped with a warning then: executor.op_ensure_mountpoint)
        self.add(ENSURE_MOUNTPOINT, None, destination, ("root", "user") if user else ("root",),
                 kind)

    def bind(self, source: str, destination: str, kind: str, readonly=False, rec=True,
             user: bool = False) -> None:
        self.ensure(destination, kind, user)
        flags = ["root"] + (["rec"] if rec else [])
        self.add(BIND, source, destination, flags)
        if readonly:
            self.add(REMOUNT_RO, None, destination, ("root", "rec"))
        self.binds_done.append((source, destination))

    def tmpfs(self, destination: str, options: str) -> None:
        self.ensure(destination, "dir")
        self.add(TMPFS, "tmpfs", destination, ("root", "nosuid", "nodev"), options)

    def namespaces(self) -> tuple[str, ...]:
        """The namespaces created after the user namespace (and the FUSE servers)."""
        opts = self.opts
        return tuple(name for name, wanted in (
            ("mount", True), ("pid", self.pid), ("ipc", self.ipc),
            ("uts", opts.uts or opts.hostname), ("net", opts.net)) if wanted)


def _extra():
    """plan_extra.py: the steps of rarely used options (instance://, --net, --dns, -S, --nv,
    --fusemount, overlay images), imported only by a plan that needs one."""
    from satchel.runtime import plan_extra
    return plan_extra


def build_plan(opts: RunOptions, config, image, host, session_dir: str | None = None):
    """Decide the whole container (see the module docstring). Raises UsageError/ContainerError.

    Reads `opts`, never changes it."""
    instance = opts.instance_ready_fd is not None
    if opts.command not in ACTIONS and not (instance and opts.command in INSTANCE_ACTIONS):
        raise UsageError(f"unknown action {opts.command!r}")
    if opts.join is not None:
        return _extra().join_plan(opts, config, host)
    p = _Plan(opts, config, image, host, session_dir)
    _cleanup_and_limits(p)
    _namespaces(p)
    _session(p)
    _image(p)
    _proc_and_sys(p)
    _devices(p)
    _home(p)
    _tmp(p)
    _system_binds(p)
    _identity(p)
    _working_directory(p)
    _user_binds(p)
    if opts.fusemounts:
        _extra().fusemounts(p)
    if opts.gpu:
        _extra().gpus(p)
    _finish_root(p)
    _protect_kernel(p)
    _switch_root(p)
    environ, argv = _process(p)
    return ContainerPlan(
        rootless=p.rootless, namespaces=(("user",) if p.rootless else ()) + p.namespaces(),
        uid=host.uid, gid=host.gid, session=p.session, root=p.root, ops=tuple(p.ops),
        environ=environ, argv=argv, cwd=tuple(p.cwd), hostname=opts.hostname, image=image,
        warnings=p.warnings, server=p.server)


# -- the steps, in the order their operations run ----------------------------------------------

def _cleanup_and_limits(p: _Plan) -> None:
    """First of all, while still in the host's namespaces: the reaper (runtime/reaper.py) for
    what must go when the container ends, then the cgroup the launcher enters, so that every
    process of the container (the payload and all it starts) is in it from the start. The
    reaper is forked before the cgroup is entered: it must not count against its limits."""
    opts = p.opts
    cgroup_dirs = opts.cgroup.dirs if opts.cgroup is not None else ()
    if opts.cleanup or cgroup_dirs:
        p.add(REAPER, data=(tuple(opts.cleanup), tuple(cgroup_dirs)))
    if opts.cgroup is not None:
        p.add(CGROUP, data=opts.cgroup.to_data())


def _namespaces(p: _Plan) -> None:
    """Non-root: the user namespace (own ids mapped to themselves, never root) and, before
    the mount namespace exists, the FUSE servers (fuse.py says why); then the others."""
    host, config, image = p.host, p.config, p.image
    if p.rootless:
        if p.fakeroot is not None and p.fakeroot[0] == "subid":
            p.add(FAKEROOT_MAP, data=p.fakeroot[1:])
        elif p.fakeroot is not None:  # root-mapped: the caller alone, as uid 0
            p.add(UNSHARE, data=("user",))
            p.add(ID_MAP, data=p.fakeroot[1:])
        else:
            p.add(UNSHARE, data=("user",))
            p.add(ID_MAP, data=(f"{host.uid} {host.uid} 1", f"{host.gid} {host.gid} 1"))
        if p.server is not None:
            p.add(FUSE_PREPARE, "image", flags=("builtin",))
        elif image.kind != "sandbox":
            program = config.get("squashfuse path", "squashfuse_ll") or "squashfuse_ll"
            p.add(FUSE_PREPARE, "image", data=(
                program, "-o", f"offset={image.fs_offset}", image.path, "/dev/fd/{fd}"))
        for layer in p.layers.images if p.layers is not None else ():
            if layer.fs == "ext3":  # fuse2fs mounts in a namespace of its own (fuse2fs.py)
                p.add(FUSE2FS_PREPARE, layer.name,
                      data=(layer.path, layer.offset, layer.size, layer.readonly))
            else:
                program = config.get("squashfuse path", "squashfuse_ll") or "squashfuse_ll"
                p.add(FUSE_PREPARE, layer.name, data=(
                    program, "-o", f"offset={layer.offset}", layer.path, "/dev/fd/{fd}"))
        if p.overlay is not None:
            # fuse-overlayfs must see the image mount (its lower layer): its helper takes a
            # private copy of the container's mounts before the overlay is mounted
            # (FUSE_SNAPSHOT), so the server pins neither the container nor its own mount
            upper, work, _ = p.overlay
            program = config.get("fuse-overlayfs path", "fuse-overlayfs") or "fuse-overlayfs"
            options = "lowerdir=" + ":".join(p.layers.lowers + [p.image_target])
            if upper is not None:
                options += f",upperdir={upper},workdir={work}"
            if p.fakeroot is None:
                options += f",squash_to_uid={host.uid},squash_to_gid={host.gid}"
            p.add(FUSE_PREPARE, "overlay", data=(program, "-o", options, "/dev/fd/{fd}"))
    for mount in p.opts.fusemounts:  # --fusemount: its program serves from the host's mounts
        p.add(FUSE_PREPARE, mount.name, flags=() if mount.daemon else ("detach",),
              data=mount.argv)
    p.add(UNSHARE, data=p.namespaces())
    if p.opts.net:
        p.add(NET_LOOPBACK, "lo", data=p.network_args)


def _session(p: _Plan) -> None:
    """Private propagation, then the session tmpfs where the root is staged."""
    p.add(MAKE_PRIVATE, destination="/", flags=("rec",))
    # satchel installed under a directory bound recursively (home, /tmp, a user bind) would
    # copy the session's mounts, the staged root included, into the container: recursive
    # binds skip an unbindable mount and everything below it
    p.add(UNBINDABLE, destination=p.session)
    size = p.config.get_int("sessiondir max size", 64)
    p.add(TMPFS, "tmpfs", p.session, ("nosuid", "nodev"), f"mode=0755,size={size}m")
    p.add(MKDIR, destination=p.root)
    if p.image_target != p.root:
        p.add(MKDIR, destination=p.image_target)
    for layer in p.layers.images if p.layers is not None else ():
        p.add(MKDIR, destination=layer.mountpoint)
    p.add(MKDIR, destination=p.session + "/files")


def _image(p: _Plan) -> None:
    """The image at the root (or below the overlay that becomes the root)."""
    image, host, target = p.image, p.host, p.image_target
    if image.kind == "sandbox":
        # like the SquashFS mount: a sandbox's device nodes and setuid bits grant nothing
        writable = p.layers is not None and p.layers.sandbox_rw  # --writable
        p.add(BIND_IMAGE_DIR, image.path, target,
              ("rec", "nosuid", "nodev") if writable else ("rec", "ro", "nosuid", "nodev"))
    elif p.rootless:
        p.add(MOUNT_SQUASHFS_FUSE, "image", target, ("ro", "nosuid", "nodev") + p.fuse_flags,
              p.fuse_ids)
        p.add(FUSE_WAIT, "image")
        if p.config.get_bool("prefetch", True):
            p.add(PREFETCH, "image", data=first_reads(p.opts.command, p.opts.args))
    else:
        p.add(MOUNT_SQUASHFS_LOOP, image.path, target, ("ro", "nosuid", "nodev"),
              (image.fs_offset, image.fs_size))
    if p.layers is not None and p.layers.images:
        _extra().layers(p)
    if p.overlay is None:
        return
    upper, work, tmpfs_upper = p.overlay
    in_layer = any(not layer.readonly for layer in p.layers.images)
    if upper is not None:
        # a directory of the user's: refused if a symlink or another user's
        # (executor._owned_dir); in an image mounted just now: no symlink followed ("layer")
        flags = () if tmpfs_upper else ("layer",) if in_layer else ("owned",)
        p.add(MKDIR, destination=upper, flags=flags)
        p.add(MKDIR, destination=work, flags=flags)
    if p.rootless:
        p.add(FUSE_SNAPSHOT, "overlay")
        p.add(MOUNT_OVERLAY_FUSE, "overlay", p.root, ("nosuid", "nodev") + p.fuse_flags,
              p.fuse_ids)
        p.add(FUSE_WAIT, "overlay", flags=("writable",) if upper is not None else ())
    else:
        lower = ":".join(p.layers.lowers + [target])
        p.add(MOUNT_OVERLAY, "overlay", p.root,
              ("nosuid", "nodev") + (("layer",) if in_layer else ()), (lower, upper, work))


def _proc_and_sys(p: _Plan) -> None:
    """The host's /proc (a fresh one comes later under --pid: _finish_root), /sys read-only."""
    if p.mounts("proc"):
        p.ensure("/proc", "dir")
        if not p.pid:
            p.add(BIND, "/proc", "/proc", ("root", "rec"))
    if p.mounts("sys"):
        p.bind("/sys", "/sys", "dir")
        p.add(REMOUNT_RO, None, "/sys", ("root", "rec"))


def _devices(p: _Plan) -> None:
    """/dev: the host's whole (`mount dev = yes`) or a minimal one (the default)."""
    dev_mode = (p.config.get("mount dev", "minimal") or "minimal").lower()
    if "dev" in p.no_mount or dev_mode == "no":
        return
    if dev_mode in ("yes", "true") and not p.contain:
        p.bind("/dev", "/dev", "dir")
    else:
        _minimal_dev(p, terminal=p.host.terminal, devpts=p.mounts("devpts"), contain=p.contain)


def _home(p: _Plan) -> None:
    """The home directory: the caller's (or -H's), or an empty one under --contain."""
    if p.config.get_bool("mount hostfs", False) and "hostfs" not in p.no_mount:
        p.warnings.append("mount hostfs is not supported: ignored")
    if p.opts.no_home or not p.mounts("home"):
        return
    src, dst = p.home_src, p.home_dst
    if p.contain and not p.home_explicit:
        if p.workdir:
            p.add(MKDIR, destination=p.workdir + "/home")
            p.bind(p.workdir + "/home", dst, "dir")
        else:
            p.tmpfs(dst, "mode=0700")
    elif p.host.path_kind(src) == "dir":
        p.bind(src, dst, "dir")
    elif p.home_explicit:
        raise ContainerError(f"home directory {src} does not exist (-H)")
    else:
        p.warnings.append(f"home directory {src} does not exist: not mounted")


def _tmp(p: _Plan) -> None:
    """/tmp and /var/tmp: the host's, or private ones under --contain (in -W if given)."""
    if not p.mounts("tmp"):
        return
    for path, name in (("/tmp", "tmp"), ("/var/tmp", "var_tmp")):
        if p.contain:
            if p.workdir:
                p.add(MKDIR, destination=f"{p.workdir}/{name}")
                p.bind(f"{p.workdir}/{name}", path, "dir")
            else:
                p.tmpfs(path, "mode=1777")
        elif p.host.path_kind(path) == "dir":
            p.bind(path, path, "dir")


def _system_binds(p: _Plan) -> None:
    """The admin's `bind path` entries (read-only) and /etc/resolv.conf (or --dns's)."""
    host, config, no_mount = p.host, p.config, p.no_mount
    if "bind-paths" not in no_mount:
        for entry in config.get_list("bind path"):
            src, _, dst = entry.partition(":")
            src, dst = _clean(src), _clean(dst or src)
            key = posixpath.basename(dst)
            if dst in no_mount or src in no_mount or key in no_mount:
                continue
            kind = host.path_kind(src)
            if kind is None:
                continue
            p.bind(host.realpath(src), dst, kind, readonly=True, rec=False)
    if p.opts.dns:  # --dns: a resolv.conf of those servers instead of the host's
        resolv = p.session + "/files/resolv.conf"
        p.add(WRITE_FILE, None, resolv, (), _extra().resolv_conf(p.opts.dns))
        p.bind(resolv, "/etc/resolv.conf", "file", readonly=True, rec=False)
    elif (config.get_bool("config resolv_conf", True) and "resolv" not in no_mount
            and "/etc/resolv.conf" not in no_mount
            and host.path_kind("/etc/resolv.conf") == "file"):
        p.bind(host.realpath("/etc/resolv.conf"), "/etc/resolv.conf", "file", readonly=True,
               rec=False)


def _identity(p: _Plan) -> None:
    """Non-root: /etc/passwd and /etc/group of the image plus the caller's entries."""
    host, config = p.host, p.config
    if not p.rootless or p.fakeroot is not None:
        return  # root (and --fakeroot's root) keeps the image's own
    files = p.session + "/files"
    if config.get_bool("config passwd", True) and "passwd" not in p.no_mount:
        shell = host.shell or "/bin/sh"
        line = f"{host.user}:x:{host.uid}:{host.gid}:{host.gecos}:{p.home_dst}:{shell}"
        p.add(GEN_PASSWD, "/etc/passwd", files + "/passwd", ("root",),
              (line, host.uid, host.user))
        p.bind(files + "/passwd", "/etc/passwd", "file", readonly=True, rec=False)
    if config.get_bool("config group", True) and "group" not in p.no_mount:
        groups = tuple((gid, host.group_names.get(gid, str(gid))) for gid in host.groups)
        p.add(GEN_GROUP, "/etc/group", files + "/group", ("root",), (groups, host.user))
        p.bind(files + "/group", "/etc/group", "file", readonly=True, rec=False)


def _working_directory(p: _Plan) -> None:
    """--pwd, else the caller's directory (bound unless a bind covers it), home, /."""
    if p.opts.pwd:
        p.cwd.append(p.opts.pwd)
        return
    cwd = p.host.cwd
    if (cwd and not p.contain and p.mounts("cwd") and cwd not in SYSTEM_CWDS
            and not any(_under(cwd, top) for top in ("/proc", "/sys", "/dev"))):
        # bound already (home, /tmp...), or a user bind decides what is there
        covered = (any(src == dst and _under(cwd, dst) for src, dst in p.binds_done)
                   or any(_under(cwd, spec.destination) for spec in p.user_binds))
        if not covered and p.host.path_kind(cwd) == "dir":
            p.bind(cwd, cwd, "dir")
    if cwd and not p.contain:
        p.cwd.append(cwd)
    p.cwd.append(p.home_dst)
    p.cwd.append("/")


def _user_binds(p: _Plan) -> None:
    """-B/--mount/APPTAINER_BIND (checked in _Plan), then -S/--scratch directories."""
    for spec in p.user_binds:
        p.bind(spec.host_path, spec.destination, spec.kind, readonly=spec.readonly, user=True)
    for dst in _extra().scratch_dirs(p.opts.scratch) if p.opts.scratch else ():
        if p.workdir:  # -W: kept on the host, as Apptainer does, under WORKDIR/scratch/
            host_dir = f"{p.workdir}/scratch/{dst.strip('/').replace('/', '_')}"
            p.add(MKDIR, destination=host_dir)
            p.bind(host_dir, dst, "dir")
        else:
            p.tmpfs(dst, "mode=0755")


def _finish_root(p: _Plan) -> None:
    """nosuid everywhere, the read-ahead stored, hostname, and --pid's init with its /proc."""
    p.add(NOSUID_TREE, None, p.root)
    if any(op.kind == PREFETCH for op in p.ops):
        # late enough that the server has found and begun reading the files, early enough
        # that it stores most of their pages before the payload asks for them
        p.add(PREFETCH_STORE, "image")
    if p.opts.hostname:
        p.add(SETHOSTNAME, data=p.opts.hostname)
    if p.pid:
        p.add(FORK_INIT)
        if p.mounts("proc"):
            p.add(MOUNT_PROC, "proc", "/proc", ("root", "nosuid", "nodev", "noexec"))


def _switch_root(p: _Plan) -> None:
    p.add(PIVOT_ROOT, None, p.root)
    if p.opts.sharens:  # the later --sharens launches of this parent join these namespaces
        p.add(RECORD_NAMESPACES, data=(("user",) if p.rootless else ()) + p.namespaces())
    p.add(CHDIR, data=tuple(p.cwd), flags=("strict",) if p.opts.pwd else ())
    # --fakeroot: root of the user namespace keeps its capabilities there (dpkg chowns files);
    # they reach nothing outside it
    p.add(DROP_CAPS, flags=("fakeroot",) if p.fakeroot is not None else ())
    p.add(CHECK_SHELL, None, "/bin/sh")
    if p.opts.seccomp is not None:  # last before the exec: after no_new_privs (DROP_CAPS)
        p.add(SECCOMP, data=p.opts.seccomp)


def _process(p: _Plan) -> tuple[dict, list]:
    """The first process: its environment, `/bin/sh -c ACTION-SCRIPT` argv, and how it runs."""
    opts = p.opts
    environ, argv = _environment_and_argv(
        opts, p.host, p.image.path, p.home_dst, p.user_binds, p.gpu_env, p.cleanenv, p.warnings)
    if opts.instance_ready_fd is not None:
        p.add(INSTANCE_INIT, "/bin/sh", None, (), opts.instance_ready_fd)
    else:
        p.add(EXEC_CHILD if p.pid else EXEC, "/bin/sh")
    return environ, argv


def _environment_and_argv(opts: RunOptions, host, image_path: str, home_dst: str, user_binds,
                          gpu_env, cleanenv: bool, warnings: list) -> tuple[dict, list]:
    extra = dict(gpu_env)
    if opts.no_eval:  # read by runscripts of images converted from OCI (build/layout.py)
        extra["SINGULARITY_NO_EVAL"] = extra["APPTAINER_NO_EVAL"] = "1"
    env = environment.build_environment(
        host.environ, cleanenv=cleanenv, home=home_dst, image_path=image_path,
        command=opts.command, env_pairs=environment.parse_env_option(opts.env),
        env_file_pairs=opts.env_file_pairs, extra=extra,
        bind_list=",".join(spec.text() for spec in user_binds),
        shell=opts.shell, evaluate=not opts.no_eval)
    warnings.extend(env.warnings)
    prompt = {"apptainer": "Apptainer> ", "singularity": "Singularity> "}.get(
        opts.prog, "Satchel> ")
    script = environment.action_script(opts.command, prompt, libs_first=bool(opts.gpu),
                                       instance=opts.instance_ready_fd is not None)
    argv = ["/bin/sh", "-c", script, "/.singularity.d/actions/" + opts.command]
    return env.environ, argv + list(opts.args)


# options that shape a new container; a running instance's mounts and namespaces are fixed
def first_reads(command: str, args) -> tuple[str, ...]:
    """Files the payload reads first, to be read ahead while the launcher stages the rest.

    The first exec from a fresh FUSE mount decompresses every page it touches (~15 ms for a
    static busybox). The built-in server reads these files (and the loader and libraries they
    need) ahead from its start (ContainerPlan.server.reads) and stores their pages in the
    kernel's cache after PREFETCH_STORE; the squashfuse_ll program is asked to read them at
    PREFETCH. Either way they are decompressed while the launcher stages the container.
    """
    paths = ["/bin/sh"]
    if command == "exec" and args and args[0].startswith("/"):
        paths.append(args[0])
    elif command == "run":
        paths.append("/.singularity.d/runscript")
    return tuple(dict.fromkeys(paths))


def server_start(config, image, uid: int, opts: RunOptions):
    """The built-in SquashFS server this launch uses (ServerStart), or None: root (a loop
    device), a sandbox (nothing to serve), or `squashfuse mode = program`.

    A function of its arguments alone: launch.plan_launch asks it before build_plan (which
    asks it again, for ContainerPlan.server) to tell the early server its image sooner."""
    if uid == 0 or image.kind == "sandbox":
        return None
    mode = (config.get("squashfuse mode", "builtin") or "builtin").lower()
    if mode not in ("builtin", "program"):
        raise ConfigError(f"squashfuse mode = {mode}: expected builtin or program")
    if mode != "builtin":
        return None
    program = config.get("squashfuse path", "squashfuse_ll") or "squashfuse_ll"
    # the program is the fallback when the libraries are missing: in the foreground (-f), as
    # the built-in server is already detached
    reads = first_reads(opts.command, opts.args) if config.get_bool("prefetch", True) else ()
    return ServerStart(image.path, image.fs_offset, (
        program, "-f", "-o", f"offset={image.fs_offset}", image.path, "/dev/fd/{fd}"), reads,
        _share(config, image, opts))


def _share(config, image, opts: RunOptions) -> bool:
    """Whether the image mount is shared with this user's other containers of the image
    (runtime/share.py): the plain read-only image at the root, as `share image mounts` (the
    admin) and --no-share leave it; not under an overlay, whose helper needs its own view."""
    return (opts.share and config.get_bool("share image mounts", True)
            and not (opts.overlay or opts.writable or opts.writable_tmpfs or opts.fakeroot
                     or getattr(image, "overlay_part", None)))


def _no_mount(values) -> frozenset:
    """--no-mount values (comma-separated lists allowed): keys of NO_MOUNT_KEYS or paths."""
    out = set()
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in NO_MOUNT_KEYS and not item.startswith("/"):
                raise UsageError(f"--no-mount {item}: unknown mount; use one of "
                                 f"{', '.join(sorted(NO_MOUNT_KEYS))} or an absolute bind path")
            out.add(item)
    return frozenset(out)


def _user_bind_specs(opts: RunOptions, config, host) -> tuple:
    """APPTAINER_BIND (or SINGULARITY_BIND) then -B and --mount (opts.binds), each checked:
    BindSpecs with host_path and kind (binds.BindSpec.checked)."""
    specs = bindmod.from_environ(host.environ) + tuple(opts.binds)
    if specs and not config.get_bool("user bind control", True):
        raise ConfigError("user bind control is disabled by the administrator: -B/--mount "
                          "not allowed")
    return tuple(_check_bind(spec, host) for spec in specs)


def _protect_kernel(p: _Plan) -> None:
    """READONLY_PATHS and MASKED_PATHS, those the host has, once /proc and /sys are in place.

    Last before pivot_root, after MOUNT_PROC under --pid (a fresh procfs of the same kernel:
    the host's paths say what it holds) and after the user's binds (one below /proc/sys is
    made read-only with it). Only below a /proc or /sys the runtime mounted: an image's own
    /proc is no kernel's. As root any failure is fatal: these mounts are what keeps a root
    container from host sysctls. Rootless, EPERM or EACCES (a kernel or LSM that refuses
    mounts over procfs in a user namespace) is tolerated: the caller's uid owns none of these
    files and its capabilities are dropped, so it could not write them anyway.
    """
    host, proc, sysfs = p.host, p.mounts("proc"), p.mounts("sys")
    flags = ("root", "optional") if p.rootless else ("root",)
    for path in READONLY_PATHS:
        if (proc if path.startswith("/proc/") else sysfs) and host.path_kind(path):
            p.add(READONLY_PATH, None, path, flags)
    for path in MASKED_PATHS:
        kind = (proc if path.startswith("/proc/") else sysfs) and host.path_kind(path)
        if kind:
            p.add(MASK_PATH, None, path, flags + ("ro", "nosuid", "nodev", "noexec"), kind)


def _minimal_dev(p: _Plan, devpts: bool, terminal: bool, contain: bool = False) -> None:
    """tmpfs /dev with the usual nodes bound from the host, a pts directory, shm, fd links.

    /dev/shm is the host's unless --contain: ranks of one MPI job on a node each run their own
    container and meet in /dev/shm (Open MPI's shared-memory transport), as they do under
    Apptainer, whose default binds the host's whole /dev.

    /dev/pts: with the caller on a terminal, the host's devpts is bound so that terminal stays
    what it is inside (tty, ttyname(), ssh, sudo prompts); the host's /dev/pts/ptmx is usually
    mode 000, though, so a non-root container cannot open new ptys then. Without a terminal
    (batch jobs, pipes) nothing needs the host's ptys, and a new devpts instance with an
    openable ptmx serves programs that create their own (script, expect, tmux, Jupyter).
    """
    p.tmpfs("/dev", "mode=0755,size=512k")
    for name in DEV_NODES:
        p.ensure("/dev/" + name, "file")
        p.add(BIND_DEV_NODE, "/dev/" + name, "/dev/" + name, ("root",))
    if devpts and terminal:
        p.bind("/dev/pts", "/dev/pts", "dir", rec=False)
        p.add(SYMLINK, "pts/ptmx", "/dev/ptmx", ("root",))
    elif devpts:
        p.ensure("/dev/pts", "dir")
        p.add(MOUNT_DEVPTS, "devpts", "/dev/pts", ("root", "nosuid", "noexec"),
              "newinstance,ptmxmode=0666,mode=0620")
        p.add(SYMLINK, "pts/ptmx", "/dev/ptmx", ("root",))
    if contain:
        p.tmpfs("/dev/shm", "mode=1777")
    else:
        p.bind("/dev/shm", "/dev/shm", "dir", rec=False)
    p.add(SYMLINK, "/proc/self/fd", "/dev/fd", ("root",))
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        p.add(SYMLINK, f"/proc/self/fd/{number}", "/dev/" + name, ("root",))


def _home_dirs(opts: RunOptions, host) -> tuple[str, str, bool]:
    """(source, destination, given with -H) of the home directory."""
    if opts.home:
        src, _, dst = opts.home.partition(":")
        if not src:
            raise UsageError(f"invalid --home value {opts.home!r}: expected SRC[:DST]")
        if not src.startswith("/"):
            src = posixpath.join(host.cwd or "/", src)
        dst = dst or src
        if not dst.startswith("/"):
            raise UsageError(f"--home destination {dst} must be an absolute path")
        return _clean(src), _clean(dst), True
    return host.home, host.home, False


def _workdir(opts: RunOptions, host) -> str | None:
    if not opts.workdir:
        return None
    path = opts.workdir
    if not path.startswith("/"):
        path = posixpath.join(host.cwd or "/", path)
    path = _clean(path)
    if host.path_kind(path) != "dir":
        raise ContainerError(f"--workdir {opts.workdir}: not an existing directory")
    return path


def _check_bind(spec, host):
    """The BindSpec checked against the host: absolute, not onto /, an existing source."""
    src, dst = spec.source, spec.destination
    if not src.startswith("/"):
        src = posixpath.join(host.cwd or "/", src)
    if not dst.startswith("/"):
        raise UsageError(f"bind destination {spec.destination} must be an absolute path "
                         f"(in {spec.origin!r})")
    dst = _clean(dst)
    if dst == "/":
        raise UsageError(f"invalid bind {spec.origin!r}: cannot bind onto the container's root /")
    kind = host.path_kind(src)
    if kind is None:
        raise ContainerError(f"bind source {spec.source} does not exist (in {spec.origin!r})")
    return spec.checked(host.realpath(src), dst, kind)

