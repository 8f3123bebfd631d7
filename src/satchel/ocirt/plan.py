"""An OCI spec -> a ContainerPlan of runtime/plan.py's operations (pure but for path_kind).

The order follows runc's init: cgroup, user namespace and its id maps, namespaces joined by
path, the other new namespaces, the fork of the container's init (pid 1 of a new PID
namespace), the mounts' propagation, the root bound on itself, the spec's mounts and devices
in order, masked and read-only paths, a read-only root, pivot_root, rootfsPropagation on the
new root, the working directory, the console, the wait
for `start` on exec.fifo, then the process's credentials and exec. executor.apply() performs
it; satchel exec/run plans go through the same executor.

The descriptors the operations use (sync socket, exec.fifo, console socket) are opened by the
create process before the fork and named in the ops' data.
"""

from __future__ import annotations

import os
import posixpath

from satchel.errors import ConfigError
from satchel.runtime import plan as rp

# spec namespace type -> satchel's name (linux.NAMESPACE_FLAGS)
NS_NAMES = {"pid": "pid", "network": "net", "mount": "mount", "ipc": "ipc", "uts": "uts",
            "user": "user", "cgroup": "cgroup"}
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))


class _Ops:
    """Accumulates operations (the shape of runtime/plan.py's _Plan, kept local: that one is
    private to build_plan)."""

    def __init__(self, root: str):
        self.root = root
        self.ops: list = []

    def add(self, kind, source=None, destination=None, flags=(), data=None) -> None:
        self.ops.append(rp.Op(kind, source, destination, flags, data))

    def ensure(self, destination: str, kind: str) -> None:
        self.add(rp.ENSURE_MOUNTPOINT, None, destination, ("root",), kind)


class Context:
    """What the create (or exec) process opened or found for the plan."""

    __slots__ = ("uid", "gid", "sync_fd", "fifo_fd", "console_fd", "cgroup", "cgroup_sync",
                 "path_kind", "self_map", "join_pid", "join_names")

    def __init__(self, **values):
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.sync_fd = self.fifo_fd = self.console_fd = None
        self.cgroup = None      # cgroups.CgroupRequest.to_data(), or None
        self.cgroup_sync = False  # the create process moves the setup into its cgroup: wait
        self.path_kind = _path_kind
        self.self_map = False   # the init writes its own id maps (rootless, one line each)
        self.join_pid = None    # exec: the container's init
        self.join_names = ()
        for key, value in values.items():
            setattr(self, key, value)


def _path_kind(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return "dir" if (mode & 0o170000) == 0o040000 else "file"


def _frozen(value):
    """JSON-like data as nested tuples ((key, value) pairs for objects): Op data is immutable."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def process_data(spec_process, seccomp) -> tuple:
    """The rp.OCI_PROCESS op's data: credentials and limits of the process, plain values."""
    p = spec_process
    caps = p.capabilities
    return (("uid", p.uid), ("gid", p.gid),
            ("groups", tuple(p.additional_gids) if p.additional_gids is not None else None),
            ("umask", p.umask), ("rlimits", _frozen(p.rlimits)),
            ("capabilities", _frozen(caps) if caps is not None else None),
            ("no_new_privileges", p.no_new_privileges), ("oom_score_adj", p.oom_score_adj),
            ("seccomp", _frozen(seccomp) if seccomp is not None else None))


def compile_seccomp(spec):
    """linux.seccomp as runtime/seccomp.py's filter data (the one loader satchel exec's
    --security uses too), or None; names this libseccomp does not know are skipped, as runc
    does."""
    if spec.seccomp is None:
        return None
    from satchel.runtime import seccomp
    return seccomp.compile_document(spec.seccomp, "config.json: linux.seccomp", ConfigError,
                                    skip_unknown=True)


def environ_of(process) -> dict:
    env = {}
    for item in process.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _mapping_text(mappings) -> str:
    return "".join(f"{c} {h} {n}\n" for c, h, n in mappings)


def build(spec, ctx: Context):
    """The create plan (see the module docstring)."""
    if spec.process is None:
        raise ConfigError("config.json has no process to run")
    seccomp_data = compile_seccomp(spec)
    p = _Ops(spec.root_path)
    if ctx.cgroup is not None:
        p.add(rp.CGROUP, data=ctx.cgroup)
    elif ctx.cgroup_sync:  # before anything is forked: the init starts inside
        p.add(rp.OCI_SYNC, data=("cgroup", ctx.sync_fd))
    new = [NS_NAMES[k] for k, path in spec.namespaces if not path and k in NS_NAMES]
    joined = [(NS_NAMES.get(k, k), path) for k, path in spec.namespaces if path]
    for kind, path in spec.namespaces:
        if kind not in NS_NAMES:
            raise ConfigError(f"config.json: the {kind} namespace is not supported by satchel")
    if "user" in [k for k, _ in joined]:
        p.add(rp.OCI_SETNS, data=next(j for j in joined if j[0] == "user"))
    elif "user" in new:
        p.add(rp.UNSHARE, data=("user",))
        if ctx.self_map:
            p.add(rp.ID_MAP, data=(_mapping_text(spec.uid_mappings),
                                   _mapping_text(spec.gid_mappings)))
        else:
            p.add(rp.OCI_SYNC, data=("idmap", ctx.sync_fd))
    elif ctx.uid != 0:
        raise ConfigError("a rootless container needs a user namespace in linux.namespaces "
                          "(with uidMappings and gidMappings)")
    for kind, path in joined:
        if kind != "user":
            p.add(rp.OCI_SETNS, data=(kind, path))
    rest = tuple(n for n in new if n != "user")
    if "mount" not in rest and "mount" not in [k for k, _ in joined]:
        raise ConfigError("config.json: satchel needs a mount namespace in linux.namespaces")
    if rest:
        p.add(rp.UNSHARE, data=rest)
    p.add(rp.OCI_FORK, data=ctx.sync_fd)
    # runc's start: the host's mounts become slaves (host events still reach the container,
    # none of its mounts leaks out), unless rootfsPropagation asks for private, shared or
    # unbindable: then private, as pivot_root refuses a shared root (set after it, below)
    propagation = spec.rootfs_propagation
    p.add(rp.PROPAGATION, None, "/",
          data="rslave" if propagation in ("", "slave", "rslave") else "rprivate")
    p.add(rp.BIND_IMAGE_DIR, spec.root_path, spec.root_path, ("owned",))
    dev_tmpfs = _mounts(p, spec, ctx)
    _devices(p, spec, ctx, dev_tmpfs)
    for key, value in sorted(spec.sysctl.items()):
        p.add(rp.WRITE_FILE, None, f"{spec.root_path}/proc/sys/{key.replace('.', '/')}",
              data=value)
    if "uts" in new and spec.hostname:
        p.add(rp.SETHOSTNAME, data=spec.hostname)
    elif spec.hostname:
        raise ConfigError("config.json: hostname needs a new uts namespace")
    if any(spec.hooks.get(k) for k in ("prestart", "createRuntime")):
        p.add(rp.OCI_SYNC, data=("hooks", ctx.sync_fd))
    _kernel_paths(p, spec, ctx)
    if spec.process.cwd != "/":  # made if missing, as runc does
        p.ensure(spec.process.cwd, "dir")
    if spec.root_readonly:
        p.add(rp.REMOUNT_RO, None, spec.root_path)
    p.add(rp.PIVOT_ROOT, None, spec.root_path)
    if propagation:  # the container's root mount itself (crun's and runc 1.2's order)
        p.add(rp.PROPAGATION, None, "/", data=propagation)
    _process_tail(p, spec.process, ctx, seccomp_data, wait=True)
    return _container_plan(spec, ctx, p, new)


def build_exec(spec, process, ctx: Context):
    """`exec`: into the running container's namespaces (and cgroup), then the process."""
    seccomp_data = compile_seccomp(spec)
    p = _Ops("/")
    if ctx.cgroup is not None:
        p.add(rp.CGROUP, data=ctx.cgroup)
    p.add(rp.JOIN_NAMESPACES, data=(ctx.join_pid, tuple(ctx.join_names)))
    p.add(rp.OCI_FORK, data=ctx.sync_fd)
    _process_tail(p, process, ctx, seccomp_data, wait=False)
    return _container_plan(spec, ctx, p, list(ctx.join_names), process)


def _process_tail(p, process, ctx, seccomp_data, wait: bool) -> None:
    p.add(rp.CHDIR, data=(process.cwd,), flags=("strict",))
    if process.terminal:
        if ctx.console_fd is None:
            raise ConfigError("process.terminal is true: --console-socket is required")
        p.add(rp.OCI_CONSOLE, data=(ctx.console_fd, process.console_size))
    elif ctx.console_fd is not None:
        raise ConfigError("--console-socket given but process.terminal is false")
    late = seccomp_data is not None and process.no_new_privileges
    p.add(rp.OCI_PROCESS, data=process_data(process, None if late else seccomp_data))
    # exec: no fifo, the setup says "ready" and goes on
    p.add(rp.OCI_WAIT_START, data=(ctx.fifo_fd if wait else None, ctx.sync_fd))
    if late:
        p.add(rp.OCI_SECCOMP, data=_frozen(seccomp_data))
    p.add(rp.EXEC, process.args[0], None, ("lookup",))


def _container_plan(spec, ctx, p, namespaces, process=None):
    process = process or spec.process
    values = dict(rootless=ctx.uid != 0, namespaces=tuple(namespaces), uid=process.uid,
                  gid=process.gid, session=None, root=p.root, ops=tuple(p.ops),
                  environ=environ_of(process), argv=list(process.args), cwd=(process.cwd,),
                  hostname=spec.hostname, image=None, warnings=[])
    return rp.ContainerPlan(**{k: v for k, v in values.items()
                               if k in rp.ContainerPlan.__slots__})


def _mounts(p, spec, ctx) -> bool:
    """The spec's mounts, in order; returns whether /dev is a tmpfs of the runtime."""
    dev_tmpfs = False
    for m in spec.mounts:
        if m.destination == "/":
            raise ConfigError("config.json: a mount onto / is not supported (use root.path)")
        bind = m.type in ("bind", "rbind") or any(o in ("bind", "rbind") for o in m.options)
        if bind:
            source = m.source if m.source.startswith("/") else posixpath.join(spec.bundle,
                                                                                m.source)
            kind = ctx.path_kind(source)
            if kind is None:
                raise ConfigError(f"config.json: bind source {m.source} does not exist")
            options = m.options if any(o in ("bind", "rbind") for o in m.options) else \
                (("rbind",) if m.type == "rbind" else ("bind",)) + m.options
            p.ensure(m.destination, kind)
            p.add(rp.OCI_MOUNT, None, m.destination, ("root",), ("bind", source, options))
            continue
        if m.type not in ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"):
            raise ConfigError(f"config.json: mount type {m.type!r} on {m.destination} is not "
                              "supported by satchel")
        p.ensure(m.destination, "dir")
        p.add(rp.OCI_MOUNT, None, m.destination, ("root",), (m.type, m.source, m.options))
        if m.destination == "/dev" and m.type == "tmpfs":
            dev_tmpfs = True
    return dev_tmpfs


def _devices(p, spec, ctx, dev_tmpfs: bool) -> None:
    """The default nodes and /dev links (runc's, when /dev is its tmpfs), then linux.devices.
    In a user namespace mknod is refused: the host's nodes are bound, as runc does."""
    in_userns = "user" in spec.namespace_types()
    devices = []
    if dev_tmpfs:
        for name in DEFAULT_DEVICES:
            st = os.stat("/dev/" + name)
            devices.append({"path": "/dev/" + name, "type": "c", "major": os.major(st.st_rdev),
                            "minor": os.minor(st.st_rdev), "mode": 0o666, "uid": 0, "gid": 0})
    listed = {d["path"] for d in spec.devices}
    devices = [d for d in devices if d["path"] not in listed] + list(spec.devices)
    for dev in devices:
        p.ensure(dev["path"], "file")
        p.add(rp.OCI_DEVICE, None, dev["path"], ("root", "bind") if in_userns else ("root",),
              _frozen(dev))
    if dev_tmpfs:
        for target, link in DEV_SYMLINKS:
            p.add(rp.SYMLINK, target, link, ("root",))
        if not any(m.destination == "/dev/ptmx" for m in spec.mounts):
            p.add(rp.SYMLINK, "pts/ptmx", "/dev/ptmx", ("root",))


def _kernel_paths(p, spec, ctx) -> None:
    """maskedPaths and readonlyPaths: those that exist (runc skips the others). A path below
    /proc or /sys is looked up on the host (the same kernel), others in the root."""
    def kind_of(path: str):
        if path.startswith(("/proc/", "/sys/")):
            return ctx.path_kind(path)
        return ctx.path_kind(spec.root_path + path)

    # rootless, a kernel or LSM may refuse mounts over procfs: tolerated as satchel exec does
    # (the caller's uid owns none of those files)
    flags = ("root", "optional") if ctx.uid != 0 else ("root",)
    flags += ("if_exists",)  # an earlier mask may hide it by then (ocirt/executor.py)
    for path in spec.readonly_paths:
        if kind_of(path):
            p.add(rp.READONLY_PATH, None, posixpath.normpath(path), flags)
    for path in spec.masked_paths:
        kind = kind_of(path)
        if kind:
            p.add(rp.MASK_PATH, None, posixpath.normpath(path),
                  flags + ("ro", "nosuid", "nodev", "noexec"), kind)
