"""build_plan(): every decision about a container, as plain data, before anything happens.

The plan is PURE: the options, the admin Config, the ImageRef and a HostInfo go in; a
ContainerPlan comes out (namespaces, id maps, an ordered tuple of small Op records, the
environment, argv, working directory, hostname). Nothing is read from the world except through
HostInfo, so unit tests feed a fake host and assert on the operations; `-d` prints the plan as
JSON. executor.apply() then performs the operations in order and decides nothing.

Op destinations are host paths, except for ops flagged "root", whose destination is a path
inside the container, resolved below ContainerPlan.root at apply time the way the container
will see it (image symlinks are relative to the container root, never the host).
"""

from __future__ import annotations

import posixpath

from satchel.errors import ConfigError, ContainerError, UsageError
from satchel.runtime import binds as bindmod
from satchel.runtime import environment

# --- operation kinds (executor.py has one method per kind) ---------------------------------
UNSHARE = "unshare"                # data: namespace names
ID_MAP = "id_map"                  # data: (uid_map, gid_map) lines; setgroups deny
FUSE_PREPARE = "fuse_prepare"      # source: server name; data: server argv ('{fd}' = fd)
MAKE_PRIVATE = "make_private"      # destination: mount tree whose propagation becomes private
TMPFS = "tmpfs"                    # data: tmpfs options
MKDIR = "mkdir"                    # host directory in a tmpfs the runtime owns (or a workdir)
MOUNT_SQUASHFS_FUSE = "mount_squashfs_fuse"  # source: server name; data: uid, gid
FUSE_WAIT = "fuse_wait"            # source: server name
FUSE_SNAPSHOT = "fuse_snapshot"    # the server's helper takes a private copy of the mounts
PREFETCH = "prefetch"              # source: server name; data: container files to read ahead
PREFETCH_STORE = "prefetch_store"  # source: server name; let it store the pages it read ahead
MOUNT_SQUASHFS_LOOP = "mount_squashfs_loop"  # source: image; data: (offset, size)
BIND_IMAGE_DIR = "bind_image_dir"  # source: sandbox directory
MOUNT_OVERLAY = "mount_overlay"    # data: (lower, upper, work); kernel overlayfs (root)
MOUNT_OVERLAY_FUSE = "mount_overlay_fuse"  # source: server name; data: uid, gid (non-root)
ENSURE_MOUNTPOINT = "ensure_mountpoint"  # data: "dir" | "file"; underlay if missing
BIND = "bind"                      # flags: rec, ro
BIND_DEV_NODE = "bind_dev_node"    # a host device node onto a file in the /dev tmpfs
MOUNT_DEVPTS = "mount_devpts"      # a new devpts instance (ptys openable by the container)
SYMLINK = "symlink"                # source: link target
WRITE_FILE = "write_file"          # data: text
GEN_PASSWD = "gen_passwd"          # destination: host file; data: (entry line, uid, name)
GEN_GROUP = "gen_group"            # destination: host file; data: ((gid, name), ...), user
MOUNT_PROC = "mount_proc"          # a fresh procfs (in a new pid namespace)
READONLY_PATH = "readonly_path"    # a kernel path bound on itself, read-only (rec); "optional":
                                   # EPERM/EACCES tolerated (rootless, see _protect_kernel)
MASK_PATH = "mask_path"            # data: "dir" (an empty read-only tmpfs over it) | "file"
                                   # (/dev/null bound over it); "optional" as READONLY_PATH
UNBINDABLE = "unbindable"          # destination bound on itself and made MS_UNBINDABLE: the
                                   # recursive bind of a directory above it skips what is below
REMOUNT_RO = "remount_ro"          # flags: rec
NOSUID_TREE = "nosuid_tree"        # nosuid on every mount below destination
SETHOSTNAME = "sethostname"        # data: name
NET_LOOPBACK = "net_loopback"      # --net --network none: bring up lo in the new net namespace
FORK_INIT = "fork_init"            # --pid: parent forwards signals, child (pid 1) goes on
PIVOT_ROOT = "pivot_root"
CHDIR = "chdir"                    # data: candidate directories, first that works
DROP_CAPS = "drop_caps"            # no_new_privs + every capability set emptied
CHECK_SHELL = "check_shell"        # /bin/sh must exist in the container
EXEC = "exec"                      # execve(argv, environ): the launcher becomes the payload
EXEC_CHILD = "exec_child"          # --pid: init forks the payload, reaps, returns its status
INSTANCE_INIT = "instance_init"    # instance start: stay as the instance's init (data: ready fd)
JOIN_NAMESPACES = "join_namespaces"  # instance://: data: (pid, namespace names), user first
REAPER = "reaper"                  # data: (host paths, cgroup dirs) removed after the container
CGROUP = "cgroup"                  # data: cgroups.CgroupPlan.to_data(): create, limit, enter

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


class Op:
    """One setup operation: what to do, from where, to where, how."""

    __slots__ = ("kind", "source", "destination", "flags", "data")

    def __init__(self, kind: str, source=None, destination=None, flags=(), data=None):
        self.kind = kind
        self.source = source
        self.destination = destination
        self.flags = tuple(flags)
        self.data = data

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


class RunOptions:
    """The options of exec/run/shell/test, as the plan needs them (action.py fills it)."""

    __slots__ = ("command", "args", "binds", "mounts", "contain", "containall", "cleanenv",
                 "env", "env_file_pairs", "home", "no_home", "no_mount", "pwd", "workdir",
                 "writable_tmpfs", "overlay", "pid", "ipc", "uts", "hostname", "userns", "net",
                 "network", "network_args", "no_eval", "instance_ready_fd", "join",
                 "shell", "gpu", "prog", "scratch", "dns", "no_pid", "cleanup", "cgroup",
                 "fusemount", "seccomp")

    def __init__(self, command: str = "exec", args=(), **values):
        self.command = command
        self.args = list(args)
        self.binds = []
        self.mounts = []
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
        self.pid = self.ipc = self.uts = self.userns = self.net = False
        self.hostname = None
        self.network = None     # --network: comma-separated network names
        self.network_args = []  # --network-args: KEY=VALUE strings
        self.no_eval = False    # --no-eval: injected variables (and OCI runscript args) verbatim
        self.instance_ready_fd = None  # instance start: end as its init, report on this fd
        self.join = None        # exec|run|shell instance://NAME: a JoinTarget
        self.shell = None
        self.gpu = []       # satchel.hpc.gpu.GpuBinds objects, found by action.py
        self.prog = "satchel"
        self.scratch = []       # -S/--scratch: container directories, empty and writable
        self.dns = None         # --dns: comma-separated name servers for /etc/resolv.conf
        self.no_pid = False     # --no-pid: no PID namespace even with --containall
        self.cleanup = ()       # host paths the reaper removes after the container (--unsquash)
        self.cgroup = None      # a cgroups.CgroupRequest (resource limits), or None
        self.fusemount = []     # --fusemount specs (runtime/fusemount.py parses them)
        self.seccomp = None     # --security seccomp:FILE, a compiled BPF program's path
        for key, value in values.items():
            setattr(self, key, value)


class ContainerPlan:
    """Everything the executor needs; printable as JSON (to_dict)."""

    __slots__ = ("rootless", "namespaces", "uid", "gid", "session", "root", "ops", "environ",
                 "argv", "cwd", "hostname", "image", "warnings", "binds")

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
    """Accumulates operations; the methods keep build_plan() readable."""

    def __init__(self, root: str):
        self.root = root
        self.ops: list[Op] = []
        self.binds_done: list[tuple[str, str]] = []  # (source, destination) of host binds

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


def build_plan(opts: RunOptions, config, image, host, session_dir: str | None = None):
    """Decide the whole container (see the module docstring). Raises UsageError/ContainerError."""
    instance = opts.instance_ready_fd is not None
    if opts.command not in ACTIONS and not (instance and opts.command in INSTANCE_ACTIONS):
        raise UsageError(f"unknown action {opts.command!r}")
    if opts.join is not None:
        return _join_plan(opts, config, host)
    warnings: list[str] = []
    if opts.containall:
        opts.contain = opts.cleanenv = opts.pid = opts.ipc = True
    if opts.no_pid:
        opts.pid = False
    no_mount = set()
    for value in opts.no_mount or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in NO_MOUNT_KEYS and not item.startswith("/"):
                raise UsageError(f"--no-mount {item}: unknown mount; use one of "
                                 f"{', '.join(sorted(NO_MOUNT_KEYS))} or an absolute bind path")
            no_mount.add(item)

    # -u/--userns is accepted for compatibility: it is already the mode of every non-root
    # caller, and root keeps the kernel SquashFS runtime (a loop device needs no FUSE server).
    rootless = host.uid != 0
    session = session_dir or default_session_dir()
    root = session + "/root"
    p = _Plan(root)
    _reaper_and_cgroup(p, opts)

    namespaces = ["mount"]
    if opts.pid:
        namespaces.append("pid")
    if opts.ipc:
        namespaces.append("ipc")
    if opts.uts or opts.hostname:
        namespaces.append("uts")
    network_args = _network_request(opts, warnings)
    if opts.net:
        namespaces.append("net")

    # -- 1. namespaces and the image mount --------------------------------------------------
    overlay_dirs = _overlay_request(opts, config, host, rootless, session)
    image_target = root if overlay_dirs is None else session + "/lower"
    if rootless:
        p.add(UNSHARE, data=("user",))
        p.add(ID_MAP, data=(f"{host.uid} {host.uid} 1", f"{host.gid} {host.gid} 1"))
        if image.kind != "sandbox":
            builtin = early_server(config, image, host.uid)
            if builtin is not None:
                p.add(FUSE_PREPARE, "image", flags=("builtin",), data=tuple(builtin))
            else:
                server = config.get("squashfuse path", "squashfuse_ll") or "squashfuse_ll"
                p.add(FUSE_PREPARE, "image", data=(
                    server, "-o", f"offset={image.fs_offset}", image.path, "/dev/fd/{fd}"))
        if overlay_dirs is not None:
            # fuse-overlayfs must see the image mount (its lower layer): its helper takes a
            # private copy of the container's mounts before the overlay is mounted
            # (FUSE_SNAPSHOT), so the server pins neither the container nor its own mount
            upper, work, _ = overlay_dirs
            server = config.get("fuse-overlayfs path", "fuse-overlayfs") or "fuse-overlayfs"
            options = (f"lowerdir={image_target},upperdir={upper},workdir={work},"
                       f"squash_to_uid={host.uid},squash_to_gid={host.gid}")
            p.add(FUSE_PREPARE, "overlay", data=(server, "-o", options, "/dev/fd/{fd}"))
    p.add(UNSHARE, data=tuple(namespaces))
    if opts.net:
        p.add(NET_LOOPBACK, "lo", data=network_args)
    p.add(MAKE_PRIVATE, destination="/", flags=("rec",))
    # satchel installed under a directory bound recursively (home, /tmp, a user bind) would
    # copy the session's mounts, the staged root included, into the container: recursive
    # binds skip an unbindable mount and everything below it
    p.add(UNBINDABLE, destination=session)
    size = config.get_int("sessiondir max size", 64)
    p.add(TMPFS, "tmpfs", session, ("nosuid", "nodev", "session"), f"mode=0755,size={size}m")
    p.add(MKDIR, destination=root)
    if image_target != root:
        p.add(MKDIR, destination=image_target)
    p.add(MKDIR, destination=session + "/files")
    if image.kind == "sandbox":
        # like the SquashFS mount: a sandbox's device nodes and setuid bits grant nothing
        p.add(BIND_IMAGE_DIR, image.path, image_target, ("rec", "ro", "nosuid", "nodev"))
    elif rootless:
        p.add(MOUNT_SQUASHFS_FUSE, "image", image_target, ("ro", "nosuid", "nodev"),
              (host.uid, host.gid))
        p.add(FUSE_WAIT, "image")
        if config.get_bool("prefetch", True):
            p.add(PREFETCH, "image", data=first_reads(opts.command, opts.args))
    else:
        p.add(MOUNT_SQUASHFS_LOOP, image.path, image_target, ("ro", "nosuid", "nodev"),
              (image.fs_offset, image.fs_size))
    if overlay_dirs is not None:
        upper, work, tmpfs_upper = overlay_dirs
        if tmpfs_upper:
            p.add(MKDIR, destination=upper)
            p.add(MKDIR, destination=work)
        else:
            # "owned": refused if a symlink or another user's (executor._owned_dir)
            p.add(MKDIR, destination=upper, flags=("host", "owned"))
            p.add(MKDIR, destination=work, flags=("host", "owned"))
        if rootless:
            p.add(FUSE_SNAPSHOT, "overlay")
            p.add(MOUNT_OVERLAY_FUSE, "overlay", root, ("nosuid", "nodev"), (host.uid, host.gid))
            p.add(FUSE_WAIT, "overlay", flags=("writable",))
        else:
            p.add(MOUNT_OVERLAY, "overlay", root, ("nosuid", "nodev"),
                  (image_target, upper, work))

    # -- 2. what the container sees of the host ---------------------------------------------
    specs = bindmod.collect(opts.binds, opts.mounts, host.environ)
    if specs and not config.get_bool("user bind control", True):
        raise ConfigError("user bind control is disabled by the administrator: -B/--mount "
                          "not allowed")
    user_binds, bind_list = [], []
    for spec in specs:
        src, dst, kind = _check_bind(spec, host)
        user_binds.append((src, dst, kind, spec.readonly))
        bind_list.append(f"{spec.source}:{dst}" + (":ro" if spec.readonly else ""))
    home_src, home_dst, home_explicit = _home(opts, host)
    contain = opts.contain
    workdir = _workdir(opts, host)

    if "proc" not in no_mount and config.get_bool("mount proc", True):
        p.ensure("/proc", "dir")
        if not opts.pid:
            p.add(BIND, "/proc", "/proc", ("root", "rec"))
    if "sys" not in no_mount and config.get_bool("mount sys", True):
        p.bind("/sys", "/sys", "dir")
        p.add(REMOUNT_RO, None, "/sys", ("root", "rec"))
    dev_mode = (config.get("mount dev", "minimal") or "minimal").lower()
    if "dev" not in no_mount and dev_mode != "no":
        if dev_mode in ("yes", "true") and not contain:
            p.bind("/dev", "/dev", "dir")
        else:
            _minimal_dev(p, terminal=host.terminal, devpts="devpts" not in no_mount
                         and config.get_bool("mount devpts", True), contain=contain)

    if config.get_bool("mount hostfs", False) and "hostfs" not in no_mount:
        warnings.append("mount hostfs is not supported: ignored")

    mount_home = (not opts.no_home and "home" not in no_mount
                  and config.get_bool("mount home", True))
    if mount_home:
        if contain and not home_explicit:
            if workdir:
                p.add(MKDIR, destination=workdir + "/home", flags=("host",))
                p.bind(workdir + "/home", home_dst, "dir")
            else:
                p.tmpfs(home_dst, "mode=0700")
        elif host.path_kind(home_src) == "dir":
            p.bind(home_src, home_dst, "dir")
        elif home_explicit:
            raise ContainerError(f"home directory {home_src} does not exist (-H)")
        else:
            warnings.append(f"home directory {home_src} does not exist: not mounted")

    if "tmp" not in no_mount and config.get_bool("mount tmp", True):
        for path, name in (("/tmp", "tmp"), ("/var/tmp", "var_tmp")):
            if contain:
                if workdir:
                    p.add(MKDIR, destination=f"{workdir}/{name}", flags=("host",))
                    p.bind(f"{workdir}/{name}", path, "dir")
                else:
                    p.tmpfs(path, "mode=1777")
            elif host.path_kind(path) == "dir":
                p.bind(path, path, "dir")

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
    if opts.dns:  # --dns: a resolv.conf of those servers instead of the host's
        p.add(WRITE_FILE, None, session + "/files/resolv.conf", (), _resolv_conf(opts.dns))
        p.bind(session + "/files/resolv.conf", "/etc/resolv.conf", "file", readonly=True,
               rec=False)
    elif (config.get_bool("config resolv_conf", True) and "resolv" not in no_mount
            and "/etc/resolv.conf" not in no_mount
            and host.path_kind("/etc/resolv.conf") == "file"):
        p.bind(host.realpath("/etc/resolv.conf"), "/etc/resolv.conf", "file", readonly=True,
               rec=False)

    if host.uid != 0:
        files = session + "/files"
        if config.get_bool("config passwd", True) and "passwd" not in no_mount:
            shell = host.shell or "/bin/sh"
            line = f"{host.user}:x:{host.uid}:{host.gid}:{host.gecos}:{home_dst}:{shell}"
            p.add(GEN_PASSWD, "/etc/passwd", files + "/passwd", ("root",),
                  (line, host.uid, host.user))
            p.bind(files + "/passwd", "/etc/passwd", "file", readonly=True, rec=False)
        if config.get_bool("config group", True) and "group" not in no_mount:
            groups = tuple((gid, host.group_names.get(gid, str(gid))) for gid in host.groups)
            p.add(GEN_GROUP, "/etc/group", files + "/group", ("root",), (groups, host.user))
            p.bind(files + "/group", "/etc/group", "file", readonly=True, rec=False)

    # -- 3. working directory -------------------------------------------------------------------
    cwd_candidates = []
    if opts.pwd:
        cwd_candidates.append(opts.pwd)
    else:
        cwd = host.cwd
        if (cwd and not contain and "cwd" not in no_mount and config.get_bool("mount cwd", True)
                and cwd not in SYSTEM_CWDS
                and not any(_under(cwd, top) for top in ("/proc", "/sys", "/dev"))):
            # bound already (home, /tmp...), or a user bind decides what is there
            covered = (any(src == dst and _under(cwd, dst) for src, dst in p.binds_done)
                       or any(_under(cwd, dst) for _, dst, _, _ in user_binds))
            if not covered and host.path_kind(cwd) == "dir":
                p.bind(cwd, cwd, "dir")
        if cwd and not contain:
            cwd_candidates.append(cwd)
        cwd_candidates.append(home_dst)
        cwd_candidates.append("/")

    # -- 4. user binds ------------------------------------------------------------------------
    for src, dst, kind, readonly in user_binds:
        p.bind(src, dst, kind, readonly=readonly, user=True)
    for dst in _scratch_dirs(opts.scratch):
        if workdir:  # -W: kept on the host, as Apptainer does, under WORKDIR/scratch/
            host_dir = f"{workdir}/scratch/{dst.strip('/').replace('/', '_')}"
            p.add(MKDIR, destination=host_dir, flags=("host",))
            p.bind(host_dir, dst, "dir")
        else:
            p.tmpfs(dst, "mode=0755")

    gpu_env: dict[str, str] = {}
    for gpu in opts.gpu or ():
        for lib in gpu.libraries:
            p.bind(lib, "/.singularity.d/libs/" + posixpath.basename(lib), "file",
                   readonly=True, rec=False)
        for src, dst in gpu.binaries:
            p.bind(src, dst, "file", readonly=True, rec=False)
        for dev in gpu.devices:
            kind = host.path_kind(dev) or "file"
            p.bind(dev, "/dev/" + posixpath.basename(dev), kind, rec=kind == "dir")
        gpu_env.update(gpu.env)
        warnings.extend(gpu.warnings)

    # -- 5. finish the root and switch to it ------------------------------------------------
    p.add(NOSUID_TREE, None, root)
    if any(op.kind == PREFETCH for op in p.ops):
        # late enough that the server has found and begun reading the files, early enough
        # that it stores most of their pages before the payload asks for them
        p.add(PREFETCH_STORE, "image")
    hostname = opts.hostname
    if hostname:
        p.add(SETHOSTNAME, data=hostname)
    if opts.pid:
        p.add(FORK_INIT)
        if "proc" not in no_mount and config.get_bool("mount proc", True):
            p.add(MOUNT_PROC, "proc", "/proc", ("root", "nosuid", "nodev", "noexec"))
    _protect_kernel(p, host, rootless,
                    proc="proc" not in no_mount and config.get_bool("mount proc", True),
                    sysfs="sys" not in no_mount and config.get_bool("mount sys", True))
    p.add(PIVOT_ROOT, None, root)
    p.add(CHDIR, data=tuple(cwd_candidates), flags=("strict",) if opts.pwd else ())
    p.add(DROP_CAPS)
    p.add(CHECK_SHELL, None, "/bin/sh")

    # -- 6. the process ---------------------------------------------------------------------------
    environ, argv = _process(opts, host, image.path, home_dst, bind_list, gpu_env, warnings)
    if opts.instance_ready_fd is not None:
        p.add(INSTANCE_INIT, "/bin/sh", None, (), opts.instance_ready_fd)
    else:
        p.add(EXEC_CHILD if opts.pid else EXEC, "/bin/sh", None, (), None)

    all_ns = (("user",) if rootless else ()) + tuple(namespaces)
    return ContainerPlan(
        rootless=rootless, namespaces=all_ns, uid=host.uid, gid=host.gid, session=session,
        root=root, ops=tuple(p.ops), environ=environ, argv=argv,
        cwd=tuple(cwd_candidates), hostname=hostname, image=image, warnings=warnings,
        binds=bind_list)


def _process(opts: RunOptions, host, image_path: str, home_dst: str, bind_list, gpu_env,
             warnings: list) -> tuple[dict, list]:
    """The first process: its environment and `/bin/sh -c ACTION-SCRIPT` argv."""
    if opts.no_eval:  # read by runscripts of images converted from OCI (build/layout.py)
        gpu_env["SINGULARITY_NO_EVAL"] = gpu_env["APPTAINER_NO_EVAL"] = "1"
    env = environment.build_environment(
        host.environ, cleanenv=opts.cleanenv, home=home_dst, image_path=image_path,
        command=opts.command, env_pairs=environment.parse_env_option(opts.env),
        env_file_pairs=opts.env_file_pairs, extra=gpu_env, bind_list=",".join(bind_list),
        shell=opts.shell, evaluate=not opts.no_eval)
    warnings.extend(env.warnings)
    prompt = {"apptainer": "Apptainer> ", "singularity": "Singularity> "}.get(
        opts.prog, "Satchel> ")
    script = environment.action_script(opts.command, prompt, libs_first=bool(opts.gpu),
                                       instance=opts.instance_ready_fd is not None)
    argv = ["/bin/sh", "-c", script, "/.singularity.d/actions/" + opts.command]
    return env.environ, argv + list(opts.args)


# options that shape a new container; a running instance's mounts and namespaces are fixed
_FIXED_BY_INSTANCE = ("binds", "mounts", "contain", "containall", "home", "no_home", "no_mount",
                      "workdir", "writable_tmpfs", "overlay", "pid", "ipc", "uts", "hostname",
                      "net", "gpu")


def _join_plan(opts: RunOptions, config, host):
    """exec|run|shell instance://NAME: enter the instance's namespaces instead of building.

    The instance's mount namespace already holds the pivoted container root, so setns() into
    it (after its user namespace, which gives the capabilities to do so) lands in the
    container; with a PID namespace a fork puts the payload inside it.
    """
    target = opts.join
    warnings = []
    ignored = [name for name in _FIXED_BY_INSTANCE if getattr(opts, name, None)]
    if ignored:
        warnings.append(f"options fixed when instance {target.name} started are ignored: "
                        + ", ".join("--" + n.replace("_", "-") for n in ignored))
    names = [n for n in ("user", "mount", "ipc", "uts", "net", "pid") if n in target.namespaces]
    if "mount" not in names:
        raise ContainerError(f"instance {target.name} has no mount namespace to join")
    p = _Plan("/")
    p.add(JOIN_NAMESPACES, data=(target.pid, tuple(names)))
    if "pid" in names:
        p.add(FORK_INIT)
    _, home_dst, _ = _home(opts, host)
    cwd = [opts.pwd] if opts.pwd else [c for c in (host.cwd, home_dst, "/") if c]
    p.add(CHDIR, data=tuple(cwd), flags=("strict",) if opts.pwd else ())
    p.add(DROP_CAPS)
    p.add(CHECK_SHELL, None, "/bin/sh")
    environ, argv = _process(opts, host, target.image, home_dst, [], {}, warnings)
    p.add(EXEC, "/bin/sh", None, (), None)
    from satchel.image.formats import ImageRef
    return ContainerPlan(
        rootless=host.uid != 0, namespaces=tuple(names), uid=host.uid, gid=host.gid,
        session=None, root="/", ops=tuple(p.ops), environ=environ, argv=argv, cwd=tuple(cwd),
        hostname=None, image=ImageRef(target.image, "instance"), warnings=warnings, binds=[])


def first_reads(command: str, args) -> tuple[str, ...]:
    """Files the payload reads first, to be read ahead while the launcher stages the rest.

    The first exec from a fresh FUSE mount decompresses every page it touches (~15 ms for a
    static busybox). The built-in server reads these files (and the loader and libraries they
    need) ahead from its start (action.py hands it this list) and stores their pages in the
    kernel's cache after PREFETCH_STORE; the squashfuse_ll program is asked to read them at
    PREFETCH. Either way they are decompressed while the launcher stages the container.
    """
    paths = ["/bin/sh"]
    if command == "exec" and args and args[0].startswith("/"):
        paths.append(args[0])
    elif command == "run":
        paths.append("/.singularity.d/runscript")
    return tuple(dict.fromkeys(paths))


def early_server(config, image, uid: int):
    """The built-in SquashFS server's fallback argv if this launch uses that server, else None.

    action.py asks this before anything else, so the server can start (and open the image)
    while the rest of the plan is built; FUSE_PREPARE in the plan carries the same argv.
    """
    if uid == 0 or image.kind == "sandbox":
        return None
    mode = (config.get("squashfuse mode", "builtin") or "builtin").lower()
    if mode not in ("builtin", "program"):
        raise ConfigError(f"squashfuse mode = {mode}: expected builtin or program")
    if mode != "builtin":
        return None
    server = config.get("squashfuse path", "squashfuse_ll") or "squashfuse_ll"
    # the program is the fallback when the libraries are missing: in the foreground (-f), as
    # the built-in server is already detached
    return [server, "-f", "-o", f"offset={image.fs_offset}", image.path, "/dev/fd/{fd}"]


def _protect_kernel(p: _Plan, host, rootless: bool, proc: bool, sysfs: bool) -> None:
    """READONLY_PATHS and MASKED_PATHS, those the host has, once /proc and /sys are in place.

    Last before pivot_root, after MOUNT_PROC under --pid (a fresh procfs of the same kernel:
    the host's paths say what it holds) and after the user's binds (one below /proc/sys is
    made read-only with it). Only below a /proc or /sys the runtime mounted: an image's own
    /proc is no kernel's. As root any failure is fatal: these mounts are what keeps a root
    container from host sysctls. Rootless, EPERM or EACCES (a kernel or LSM that refuses
    mounts over procfs in a user namespace) is tolerated: the caller's uid owns none of these
    files and its capabilities are dropped, so it could not write them anyway.
    """
    flags = ("root", "optional") if rootless else ("root",)
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


def _home(opts: RunOptions, host) -> tuple[str, str, bool]:
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


def _check_bind(spec, host) -> tuple[str, str, str]:
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
    return host.realpath(src), dst, kind


def _reaper_and_cgroup(p: _Plan, opts: RunOptions) -> None:
    """First of all, while still in the host's namespaces: the reaper (runtime/reaper.py) for
    what must go when the container ends, then the cgroup the launcher enters, so that every
    process of the container (the payload and all it starts) is in it from the start. The
    reaper is forked before the cgroup is entered: it must not count against its limits."""
    cgroup_dirs = opts.cgroup.dirs if opts.cgroup is not None else ()
    if opts.cleanup or cgroup_dirs:
        p.add(REAPER, data=(tuple(opts.cleanup), tuple(cgroup_dirs)))
    if opts.cgroup is not None:
        p.add(CGROUP, data=opts.cgroup.to_data())


def _scratch_dirs(values) -> list[str]:
    """-S/--scratch: absolute container directories (comma-separated lists allowed)."""
    out = []
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if not item.startswith("/") or _clean(item) == "/":
                raise UsageError(f"--scratch {item}: expected an absolute directory below /")
            out.append(_clean(item))
    return out


def _resolv_conf(servers: str) -> str:
    """--dns 1.1.1.1,8.8.8.8 -> resolv.conf text (one nameserver line each)."""
    names = [s.strip() for s in servers.split(",") if s.strip()]
    for name in names:
        if not all(c.isalnum() or c in ".:%" for c in name):
            raise UsageError(f"--dns {name!r}: not an IP address")
    return "".join(f"nameserver {name}\n" for name in names)


SUPPORTED_NETWORKS = ("none",)


def _network_request(opts: RunOptions, warnings: list) -> tuple:
    """Check --net/--network/--network-args; return the network args as (key, value) pairs.

    Only `none` is provided: a new network namespace with the loopback interface up, which a
    non-root user may create (the namespace belongs to the user namespace). Apptainer's
    default network is `bridge` (CNI, root only): satchel says so rather than silently
    giving a container without network to a caller who asked for one.
    """
    pairs = []
    for value in opts.network_args or ():
        text = value.strip()
        # tolerate a literal layer of quotes, as shells in job scripts leave them
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].strip()
        key, eq, val = text.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"invalid --network-args value {value!r}: expected KEY=VALUE")
        pairs.append((key.strip(), val.strip()))
    if not opts.net:
        if opts.network or pairs:
            warnings.append("--network and --network-args have no effect without --net")
        return ()
    names = [n.strip() for n in (opts.network or "").split(",") if n.strip()]
    if not names:
        raise UsageError("--net without --network asks for Apptainer's default 'bridge' "
                         "network, which satchel does not provide",
                         hint="use --net --network none for a private network with only "
                              "the loopback interface")
    for name in names:
        if name not in SUPPORTED_NETWORKS:
            raise UsageError(f"network {name!r} is not supported by satchel: only 'none' "
                             "(a private network namespace with loopback only)")
    if pairs:
        warnings.append("--network-args have no effect with --network none: ignored")
    return tuple(pairs)


def _overlay_request(opts: RunOptions, config, host, rootless: bool, session: str):
    """(upper, work, upper_is_tmpfs) for --overlay/--writable-tmpfs, or None."""
    if not opts.overlay and not opts.writable_tmpfs:
        return None
    if not config.get_bool("enable overlay", True):
        raise ConfigError("overlay is disabled by the administrator (enable overlay = no)")
    if opts.overlay and len(opts.overlay) > 1:
        raise UsageError("only one --overlay directory is supported")
    if opts.overlay:
        value = opts.overlay[0]
        path, _, mode = value.partition(":")
        if mode not in ("", "rw"):
            raise UsageError(f"--overlay {value}: read-only overlays are not supported yet")
        if not path.startswith("/"):
            path = posixpath.join(host.cwd or "/", path)
        path = _clean(path)
        kind = host.path_kind(path)
        if kind is None:
            raise ContainerError(f"overlay {value} does not exist")
        if kind != "dir":
            raise ContainerError(f"overlay {value}: overlay image files are not supported, "
                                 "give a writable directory")
        if not host.is_writable_dir(path):
            raise ContainerError(f"overlay directory {value} is not writable by you")
        return path + "/upper", path + "/work", False
    return session + "/overlay/upper", session + "/overlay/work", True
