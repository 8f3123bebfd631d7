"""create / start / kill / delete / exec / run: the container's life, runc's way.

create forks the setup process, which builds the plan (ocirt/plan.py) and applies it with the
executor: it makes the namespaces, forks the container's init, mounts, pivots and sets the
credentials, then blocks opening exec.fifo for writing. Meanwhile create makes the cgroup and
moves the setup into it (the first write to a v1 cgroup.procs in a while waits ~10 ms for an
RCU grace period: the setup's imports and plan fill that wait; it forks the init only once
create has answered `cgroup`). create answers the setup's requests on a socket
pair (id maps need a writer outside the new user namespace; prestart/createRuntime hooks run
in the runtime's namespaces with the init's pid), records the init, writes --pid-file and
exits: the init stays, stopped before the user's program, until `start` opens the fifo.

Each command is its own interpreter, started by containerd's shim five times per container:
start, state, kill and delete import nothing beyond os, time and the builtin _signal/select
(no json, re, enum, socket, subprocess or ctypes: ~15 ms together here); create and exec load
the plan, the spec and the executor, and the rest where a feature asks for it (hooks:
subprocess, a console: socket, seccomp: ctypes).
"""

from __future__ import annotations

import _signal  # signal.py builds enums (and imports enum) that nothing here needs
import os
import time

from satchel import log
from satchel.errors import ContainerError, SatchelError, UsageError
from satchel.ocirt import jsonlite
from satchel.ocirt import state as st

HOOK_TIMEOUT = 60
SIGKILL = _signal.SIGKILL
SIGNALS = {name: getattr(_signal, name) for name in dir(_signal)
           if name.startswith("SIG") and not name.startswith("SIG_")}
# the signals the setup and run/exec waiters handle
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


# -- hooks ------------------------------------------------------------------------------------------
def run_hooks(hooks: list, state: dict, kind: str, fatal: bool) -> None:
    """Each hook with the state on its stdin; a failure is an error (fatal) or a warning."""
    if not hooks:
        return
    import subprocess

    data = jsonlite.dumps(state).encode()
    for hook in hooks:
        try:
            proc = subprocess.run(hook["args"], executable=hook["path"], input=data,
                                  env=dict(e.split("=", 1) for e in hook["env"]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=hook.get("timeout") or HOOK_TIMEOUT)
            problem = (f"exit status {proc.returncode}: "
                       f"{proc.stderr.decode(errors='replace').strip()}"
                       if proc.returncode else None)
        except subprocess.TimeoutExpired:
            problem = "timed out"
        except OSError as err:
            problem = err.strerror
        if problem:
            message = f"{kind} hook {hook['path']}: {problem}"
            if fatal:
                raise ContainerError(message)
            log.warning(message)


# -- create -----------------------------------------------------------------------------------------
class _Channel:
    """The create side of the setup socket: lines in, `ok`/`error` out."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def line(self) -> str | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def answer(self, text: str) -> None:
        self.sock.sendall((text + "\n").encode())


def _write_maps(pid: int, spec) -> None:
    """uid_map/gid_map of the setup process, from outside its user namespace."""
    for name, mappings, tool in (("uid_map", spec.uid_mappings, "newuidmap"),
                                 ("gid_map", spec.gid_mappings, "newgidmap")):
        if not mappings:
            raise ContainerError(f"a new user namespace needs linux.{name[:3]}Mappings")
        if os.getuid() == 0:
            text = "".join(f"{c} {h} {n}\n" for c, h, n in mappings)
            try:
                fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            except OSError as err:
                raise ContainerError(f"writing {name} ({text.strip()!r}): "
                                     f"{err.strerror}") from None
            continue
        import subprocess  # rootless with several ranges: the setuid helpers of shadow-utils
        argv = [tool, str(pid)] + [str(v) for m in mappings for v in m]
        proc = subprocess.run(argv, stderr=subprocess.PIPE)
        if proc.returncode:
            raise ContainerError(f"{' '.join(argv)}: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")


def _self_map(spec) -> bool:
    """Rootless with one line each naming only the caller: the process writes its own maps."""
    return (os.getuid() != 0 and len(spec.uid_mappings) == 1 and len(spec.gid_mappings) == 1
            and spec.uid_mappings[0][1:] == (os.getuid(), 1)
            and spec.gid_mappings[0][1:] == (os.getgid(), 1))


# the devices a container may use whatever its rules say, as runc allows them (libcontainer's
# AllowedDevices): mknod of any node, the standard character devices, ptys and tun
DEFAULT_DEVICE_RULES = tuple(
    {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    for kind, major, minor, access in (
        ("c", None, None, "m"), ("b", None, None, "m"), ("c", 1, 3, "rwm"), ("c", 1, 8, "rwm"),
        ("c", 1, 7, "rwm"), ("c", 5, 0, "rwm"), ("c", 1, 5, "rwm"), ("c", 1, 9, "rwm"),
        ("c", 136, None, "rwm"), ("c", 5, 2, "rwm"), ("c", 10, 200, "rwm")))


def _cgroup(spec, cid: str):
    res = {k: v for k, v in (spec.resources or {}).items() if k in ("memory", "cpu", "pids")}
    from satchel.runtime import cgroups
    rules = (spec.resources or {}).get("devices")
    if rules and os.getuid() == 0:
        # runc's order: the spec's rules (containerd's and runc spec's begin by denying
        # everything), then its defaults. A node linux.devices creates gets no rule of its own
        # (runc 1.1 neither: the spec allows it, as containerd's does for what it adds).
        # Without privilege a user namespace cannot use device nodes: nothing to filter.
        res["devices"] = list(rules) + list(DEFAULT_DEVICE_RULES)
    if not cgroups._controllers(res):
        return None
    if os.getuid() != 0:
        raise ContainerError("linux.resources: resource limits need root on this host")
    with open("/proc/self/mountinfo") as a, open("/proc/self/cgroup") as b:
        return cgroups.request(res, 0, os.getpid(), a.read(), b.read(),
                               path=spec.cgroups_path)


def _connect(path: str):
    import socket  # a terminal only

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise ContainerError(f"connecting to the console socket {path}: {err.strerror}") from None
    return sock


def _socketpair():
    """The setup's sync channel. _socket's own (socket.py's wrapper imports enum and
    selectors for nothing used here); ops.py reads and writes its descriptor."""
    import _socket
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)


def _setup_child(build, spec, process, keep, close) -> None:
    """The forked setup process: build the plan (build()), load what the operations after
    pivot_root need, apply it; report a failure on the socket. Never returns."""
    code = 1
    try:
        close.close()
        for name in _FORWARDED[:4]:
            # pid 1 of a new namespace ignores signals without a handler: a created
            # container waiting at exec.fifo must still die of `kill ID TERM`
            _signal.signal(SIGNALS[name], lambda n, _f: os._exit(128 + n))
        _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
        plan = build()
        if log.debug_enabled():
            import json
            log.debug("plan: " + json.dumps([op.to_dict() for op in plan.ops], default=str))
        from satchel.ocirt import ops
        from satchel.runtime import executor
        # before pivot_root: the host's Python library and libseccomp are out of reach after
        ops.preload(seccomp=spec.seccomp is not None, terminal=bool(process.terminal),
                    rlimits=bool(process.rlimits))
        executor.apply(plan)
    except SatchelError as err:
        message = err.message
    except BaseException as err:  # noqa: BLE001 - a bug: say so on the socket
        message = f"unexpected error in the container setup: {type(err).__name__}: {err}"
    try:
        os.write(keep.fileno(), ("error " + message.replace("\n", " ") + "\n").encode())
    except OSError:
        os.write(2, f"satchel-runc: {message}\n".encode(errors="replace"))
    os._exit(code)


def _fork_setup(build, spec, process, mine, theirs):
    """Fork the setup process, which builds its plan itself (build()): the plan and executor
    modules load there, while this process does its part (create: the cgroup)."""
    log.flush_outputs()
    pid = os.fork()
    if pid == 0:
        _setup_child(build, spec, process, theirs, mine)
    theirs.close()
    return pid


def _drive(channel: _Channel, setup_pid: int, spec, record: dict, store) -> int:
    """Answer the setup process until it is ready; the init's pid."""
    init_pid = 0
    ready = False
    try:
        while True:
            line = channel.line()
            if line is None:
                break
            if line == "idmap":
                try:
                    _write_maps(setup_pid, spec)
                    channel.answer("ok")
                except ContainerError as err:
                    channel.answer("error " + err.message)
            elif line.startswith("pid "):
                init_pid = int(line[4:])
            elif line == "cgroup":  # moved by create() before it listens
                channel.answer("ok")
            elif line == "hooks":
                state = dict(st.public_state(record, store), pid=init_pid, status="created")
                try:
                    run_hooks(spec.hooks.get("prestart", []), state, "prestart", True)
                    run_hooks(spec.hooks.get("createRuntime", []), state, "createRuntime", True)
                    channel.answer("ok")
                except ContainerError as err:
                    channel.answer("error " + err.message)
                    raise
            elif line == "ready":
                ready = True
                break
            elif line.startswith("error "):
                raise ContainerError(line[6:])
    finally:
        _reap(setup_pid)
    if not ready:
        raise ContainerError("the container's setup process ended before it was ready")
    return init_pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def create(store, cid: str, bundle: str, pid_file: str | None, console_socket: str | None,
           subreaper: bool = False) -> dict:
    """Create container `cid` from `bundle`; returns its record (the init is waiting)."""
    from satchel.ocirt import spec as specmod

    spec = specmod.load(bundle)
    if spec.process is not None and spec.process.terminal and not console_socket:
        raise UsageError("process.terminal is true: --console-socket is required")
    cgroup = _cgroup(spec, cid)
    dfd = store.container_dir(cid, create=True)
    record = {"id": cid, "ociVersion": spec.version, "pid": 0, "status": "creating",
              "bundle": spec.bundle, "rootfs": spec.root_path, "created": _now(),
              "owner": "", "annotations": spec.annotations,
              "cgroup_dirs": list(cgroup.dirs) if cgroup else [],
              "hooks": {k: spec.hooks.get(k, []) for k in ("poststart", "poststop")},
              "config_process": spec.raw_process,
              "seccomp": spec.seccomp, "own_pid_ns": "pid" in spec.namespace_types()}
    init_pid = 0
    console = None
    try:
        try:
            os.mkfifo(st.FIFO, 0o622, dir_fd=dfd)
            # runc's mode: the init, once it runs as the process's user, opens it to write
            os.chmod(st.FIFO, 0o622, dir_fd=dfd, follow_symlinks=False)
            fifo_fd = os.open(st.FIFO, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dfd)
        finally:
            os.close(dfd)
        store.save(cid, record)
        mine, theirs = _socketpair()
        console = _connect(console_socket) if console_socket else None
        fds = (theirs.fileno(), fifo_fd, console.fileno() if console else None)

        def build():
            from satchel.ocirt import plan as oplan
            return oplan.build(spec, oplan.Context(
                sync_fd=fds[0], fifo_fd=fds[1], console_fd=fds[2],
                cgroup_sync=cgroup is not None, self_map=_self_map(spec)))

        if subreaper:  # run/exec wait for the init, which the setup process forks
            _prctl_subreaper()
        setup = _fork_setup(build, spec, spec.process, mine, theirs)
        os.close(fifo_fd)
        if console:
            console.close()
            console = None
        channel = _Channel(mine)
        if cgroup is not None:
            _enter_cgroup(cgroup, setup, channel)
        init_pid = _drive(channel, setup, spec, record, store)
        mine.close()
        record.update(pid=init_pid, start_time=st.start_time(init_pid), status="created")
        if record["start_time"] is None:
            raise ContainerError("the container's init exited during create")
        store.save(cid, record)
        if pid_file:
            _write_pid_file(pid_file, init_pid)
    except BaseException:
        if console:
            console.close()
        if init_pid:
            _kill_quietly(init_pid, SIGKILL)
        _remove(store, cid, record)
        raise
    return record


def _enter_cgroup(cgroup, setup: int, channel: _Channel) -> None:
    """Make the container's cgroup and move the setup process into it, before that forks
    the init (it waits for our `cgroup` answer). On failure the setup is stopped; if it had
    failed first (a config its plan refused: then it is gone), its error is the one raised."""
    from satchel.runtime import cgroups
    try:
        cgroups.enter(cgroup.to_data(), pid=setup)
    except BaseException:
        _kill_quietly(setup, SIGKILL)
        _reap(setup)  # its end of the socket is closed now: reading cannot block
        while (line := channel.line()) is not None:
            if line.startswith("error "):
                raise ContainerError(line[6:]) from None
        raise


def _prctl_subreaper() -> None:
    from satchel.ocirt import ops
    ops._prctl(36, 1, "becoming a child subreaper")  # PR_SET_CHILD_SUBREAPER


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(str(pid))
        os.rename(tmp, path)
    except OSError as err:
        raise ContainerError(f"writing the pid file {path}: {err.strerror}") from None


def _kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


# -- start / state / kill / delete --------------------------------------------------------------------
def start(store, cid: str) -> None:
    record = store.load(cid)
    current = st.status(record, store)
    if current != "created":
        raise ContainerError(f"cannot start a container that is {current}")
    dfd = store.container_dir(cid)
    try:
        fd = os.open(st.FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError as err:
        os.close(dfd)
        raise ContainerError(f"opening exec.fifo of {cid}: {err.strerror}") from None
    try:
        data = _read_fifo(fd, record)
        os.unlink(st.FIFO, dir_fd=dfd)
    finally:
        os.close(fd)
        os.close(dfd)
    if data != b"0":
        raise ContainerError(f"container {cid} exited before it was started")
    state = st.public_state(record, store)
    run_hooks(record["hooks"].get("poststart", []), state, "poststart", False)


def _read_fifo(fd: int, record: dict) -> bytes:
    """The init's "0" on exec.fifo: our open (O_NONBLOCK) let its blocked open for writing
    return, and it writes at once. Blocks in poll; the timeout only serves to notice an init
    that died before it could write (a FIFO that never had a writer reports no POLLHUP)."""
    import select  # builtin, no import cost

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if poller.poll(1000):
            return os.read(fd, 1)
        if st.start_time(record["pid"]) != record["start_time"]:
            return b""


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in SIGNALS:
        raise UsageError(f"unknown signal {text!r}")
    return SIGNALS[name]


def pids(record: dict) -> list[int]:
    """The container's processes: those in its PID namespace (or the init alone)."""
    init = record["pid"]
    if not record.get("own_pid_ns"):
        return [init] if st.start_time(init) == record.get("start_time") else []
    try:
        ns = os.stat(f"/proc/{init}/ns/pid").st_ino
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino == ns:
                    out.append(int(name))
            except OSError:
                continue
    return sorted(out)


def kill(store, cid: str, sig: int, all_: bool) -> None:
    record = store.load(cid)
    if st.status(record, store) == "stopped":
        raise ContainerError("container not running")
    targets = pids(record) if all_ else [record["pid"]]
    for pid in targets:
        _kill_quietly(pid, sig)


def delete(store, cid: str, force: bool) -> None:
    record = store.load(cid)
    current = st.status(record, store)
    if current == "running" and not force:
        raise ContainerError(f"cannot delete container {cid} that is not stopped: running")
    if current in ("running", "created", "creating"):
        _kill_and_wait(record)
    _remove(store, cid, record)
    state = dict(st.public_state(record, store), status="stopped")
    run_hooks(record["hooks"].get("poststop", []), state, "poststop", False)


def _kill_and_wait(record: dict, timeout: float = 10.0) -> None:
    """SIGKILL the container's processes and block until its init is gone: a pidfd of the
    init (opened, then checked to be the recorded process) becomes readable when it exits."""
    import select

    pid = record["pid"]
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # already gone (ESRCH)
        pidfd = None
    try:
        if pidfd is not None and st.start_time(pid) != record.get("start_time"):
            return  # the pid was recycled: not ours to wait for
        for target in pids(record) or [pid]:
            _kill_quietly(target, SIGKILL)
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(int(timeout * 1000))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _remove(store, cid: str, record: dict) -> None:
    if record.get("cgroup_dirs"):
        from satchel.runtime import cgroups
        left = cgroups.remove(record["cgroup_dirs"], 2.0)
        for path in left or ():
            log.warning(f"cgroup {path} could not be removed")
    store.remove(cid)


# -- exec ----------------------------------------------------------------------------------------------
def exec_process(store, cid: str, process, pid_file: str | None, console_socket: str | None,
                 detach: bool) -> int:
    """Run `process` in the container; its exit status (0 at once when detached)."""
    record = store.load(cid)
    if st.status(record, store) not in ("running", "created"):
        raise ContainerError(f"cannot exec in a stopped container {cid}")
    if process.terminal and not console_socket:
        raise UsageError("a terminal needs --console-socket")
    names = []
    for name, ns in (("user", "user"), ("mount", "mnt"), ("ipc", "ipc"), ("uts", "uts"),
                     ("net", "net"), ("pid", "pid")):
        try:
            if os.stat(f"/proc/{record['pid']}/ns/{ns}").st_ino != \
                    os.stat(f"/proc/self/ns/{ns}").st_ino:
                names.append(name)
        except OSError as err:
            raise ContainerError(f"container {cid}: reading its {ns} namespace: "
                                 f"{err.strerror}") from None
    if "mount" not in names:
        raise ContainerError(f"container {cid} has no mount namespace of its own")
    cgroup = None
    if record.get("cgroup_dirs"):
        dirs = tuple(record["cgroup_dirs"])
        cgroup = (1, dirs, (), tuple(d + "/cgroup.procs" for d in dirs))
    from satchel.ocirt import plan as oplan
    from satchel.ocirt import spec as specmod

    spec = specmod.Spec(seccomp=None, hostname=None)
    if record.get("seccomp"):
        spec.seccomp = record["seccomp"]
    mine, theirs = _socketpair()
    console = _connect(console_socket) if console_socket else None
    ctx = oplan.Context(sync_fd=theirs.fileno(), console_fd=console.fileno() if console else None,
                        cgroup=cgroup, join_pid=record["pid"], join_names=tuple(names))
    if not detach:
        _prctl_subreaper()
    setup = _fork_setup(lambda: oplan.build_exec(spec, process, ctx), spec, process, mine,
                        theirs)
    if console:
        console.close()
    pid = _drive(_Channel(mine), setup, spec, record, store)
    mine.close()
    if pid_file:
        _write_pid_file(pid_file, pid)
    if detach:
        return 0
    return wait_for(pid)


def wait_for(pid: int) -> int:
    """Wait for a process this one reaps (as subreaper), forwarding signals; its status."""
    def forward(signum, _frame):
        _kill_quietly(pid, signum)

    for name in _FORWARDED:
        _signal.signal(SIGNALS[name], forward)
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if got == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def exec_from_args(record: dict, args, env, cwd, user, tty: bool):
    """`exec ID CMD...` without --process: the init's process with these args."""
    base = dict(record.get("config_process") or {})
    base["args"] = list(args)
    base["terminal"] = tty
    base["env"] = list(base.get("env") or []) + list(env)
    if cwd:
        base["cwd"] = cwd
    if user:
        uid, _, gid = user.partition(":")
        base["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    from satchel.ocirt import spec as specmod
    return specmod.parse_process(base)
