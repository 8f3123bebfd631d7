"""Starting and stopping instances: the only code that creates or ends their processes.

start: the caller (P) reserves the name under a lock (a provisional record naming P itself),
  opens the logs, plans the container with the runtime's own build_plan() (so every exec/run
  option means the same here, except that an instance always gets a PID namespace, as
  Apptainer's do), then forks C. C detaches (setsid, stdin /dev/null, stdout/stderr to the
  logs) and applies the plan: C stays outside as the PID namespace's forwarding parent, its
  child I (pid 1 inside, PR_SET_PDEATHSIG from C) becomes the instance's init
  (satchel.instance.init) instead of exec'ing the payload. I writes one line on a socket once
  the payload runs ("ok 1") or why it could not ("error MESSAGE"); P finds I's host pid,
  records I and then writes "c" (committed) on the socket. P never waits for more than the line.

Nothing may outlive its record (issue 10): I waits for "c" before it serves, and only P holds
  the other end of the socket, so if P dies at any moment after the fork (SIGKILL included) I
  reads end of file and exits, and with pid 1 gone the kernel kills everything in the PID
  namespace; until then the provisional record names P, so no window exists in which
  something runs that no record covers for longer than P's death takes to reach I. Once
  recorded, killing I (by stop, or SIGKILL from anyone) likewise ends the payload, every
  process that joined with `exec instance://` (they join the PID namespace) and C; the mount
  namespace then has no process left, the kernel aborts the FUSE connection and the server
  exits. The next list removes the record of a process that is gone.

stop: the recorded process is verified (state.claim: pid and start time, and when root acts
  for another user, a user namespace that user created) and held by a pidfd; send it the
  signal, give it the timeout, SIGKILL it, then SIGKILL anything still in the instance's
  mount namespace (joined processes, orphans of an init killed by force) that the owner could
  signal itself: root serving `-u USER` never reaches a process of anyone else.
"""

from __future__ import annotations

import os
import time

from satchel import log
from satchel.errors import ContainerError, InstanceError, SatchelError, UsageError
from satchel.instance import state

DEFAULT_STOP_TIMEOUT = 10
# the container is up in well under a second; a start still not ready after this is stuck
# (an unresponsive file system under the image, a hung FUSE server) and is killed
def _ready_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("SATCHEL_INSTANCE_READY_TIMEOUT") or 60))
    except ValueError:
        return 60.0


READY_TIMEOUT = _ready_timeout()
_POLL = 0.02


# -- start -------------------------------------------------------------------------------------

def start(command: str, parsed, prog: str = "satchel") -> state.Record:
    """`instance start|run [options] IMAGE NAME [ARGS...]`; returns the running record."""
    from satchel.runtime import launch
    from satchel.runtime.config import load_config
    from satchel.runtime.host import HostInfo
    from satchel.runtime.plan import build_plan

    image_arg, name, args = parsed.args[0], parsed.args[1], list(parsed.args[2:])
    state.check_name(name)
    if image_arg.startswith(state.URI_PREFIX):
        raise UsageError("an instance cannot be started from another instance: give an image")
    config = load_config()
    temporary: list[str] = []  # a temporary SIF: the reaper removes it when the instance ends
    image = launch.open_image_arg(image_arg, parsed, config, temporary)  # docker://... pulled
    # always a PID namespace (as Apptainer's instances): see the module doc
    opts = launch.run_options(command, parsed, config, args=args, cleanup=temporary,
                              instance=True)
    registry = state.Registry(state.Owner.current())

    with registry.lock():
        existing = registry.load(name)
        if existing is not None and state.is_alive(existing):
            raise InstanceError(f"instance {name} already exists")
        me = os.getpid()
        registry.save(state.Record(name=name, pid=me, starttime=state.process_start_time(me),
                                   status="starting", image=image.path))
    try:
        return _launch(registry, name, image, opts, config, args, command, prog,
                       HostInfo.gather(), build_plan, getattr(parsed, "pid_file", None))
    except BaseException:
        registry.remove(name)
        raise


def _launch(registry, name, image, opts, config, args, command, prog, host, build_plan,
            pid_file) -> state.Record:
    import socket

    # the readiness channel is a socket pair, not a pipe: the init answers on it and then waits
    # on it for our "committed"; only this process holds our end, so its EOF means we died
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_fd, write_fd = ours.detach(), theirs.detach()
    out_fd = err_fd = -1
    try:
        opts.instance_ready_fd = write_fd
        plan = build_plan(opts, config, image, host)  # bad options fail before any file exists
        for warning in plan.warnings:
            log.warning(warning)
        if log.debug_enabled():
            import json
            log.debug("container plan: " + json.dumps(plan.to_dict(), indent=1))
        out_fd, err_fd = registry.open_logs(name)
        from satchel.instance import init  # noqa: F401  (needed after pivot_root: see init.py)
        from satchel.runtime import executor, linux  # noqa: F401
        child = os.fork()
        if child == 0:
            _become_instance(plan, read_fd, write_fd, out_fd, err_fd)  # never returns
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        for fd in (write_fd, out_fd, err_fd):
            if fd >= 0:
                os.close(fd)
    try:
        _await_ready(name, child, read_fd, registry.log_paths(name)[1])
        return _commit(registry, name, image, plan, command, args, pid_file, child, read_fd)
    finally:
        os.close(read_fd)


def _await_ready(name: str, child: int, channel: int, err_log: str) -> None:
    """Wait for the init's "ok"; on anything else the half-started instance is gone or
    killed, and the error says why."""
    try:
        line = _read_line(channel, READY_TIMEOUT)
    except BaseException:  # interrupted, or never ready: no unrecorded instance may stay
        _abort(child)
        raise
    if line is None:
        _abort(child)
        raise InstanceError(f"instance {name} was not ready after {READY_TIMEOUT:.0f}s: "
                            "stopped it", hint=f"see {err_log}")
    if not line.startswith("ok "):
        _reap_if_child(child)
        if line.startswith("error "):
            message, _, hint = line[6:].partition("\x1f")
            raise InstanceError(f"instance {name} failed to start: {message}",
                                hint=hint or f"see {err_log}")
        raise InstanceError(f"instance {name} failed to start: its process exited before the "
                            "container was ready", hint=f"see {err_log}")


def _commit(registry, name, image, plan, command, args, pid_file, child, channel):
    """Record the running instance, then tell its init so (until then it dies with us)."""
    try:
        return _record_and_release(registry, name, image, plan, command, args, pid_file, child,
                                   channel)
    except BaseException:  # running but unrecorded would be a leak: take it down again
        _abort(child)
        raise


def _record_and_release(registry, name, image, plan, command, args, pid_file, child, channel):
    out_log, err_log = registry.log_paths(name)
    init = _init_of(child)
    started = None if init is None else state.process_start_time(init)
    if started is None:
        raise InstanceError(f"instance {name} exited right after starting", hint=f"see {err_log}")
    record = state.Record(
        name=name, pid=init, starttime=started, status="running", image=image.path,
        user=registry.owner.name, uid=registry.owner.uid, host=registry.host,
        started=int(time.time()), rootless=plan.rootless, namespaces=list(plan.namespaces),
        pid_namespace="pid" in plan.namespaces, log_out=out_log, log_err=err_log,
        command=command, args=args, ip="")
    registry.save(record)
    if pid_file:
        _write_pid_file(pid_file, init)
    try:
        os.write(channel, b"c")
    except OSError:
        raise InstanceError(f"instance {name} exited right after starting",
                            hint=f"see {err_log}") from None
    return record


def _init_of(child: int) -> int | None:
    """Host pid of the instance's init: the child of `child` (the PID namespace's forwarding
    parent) that is pid 1 of a namespace below ours; `child` itself without a PID namespace."""
    try:
        with open(f"/proc/{child}/task/{child}/children") as fh:
            candidates = [int(p) for p in fh.read().split()]
    except OSError:
        return None
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/status") as fh:
                nspid = next((line.split()[1:] for line in fh if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
    return child if state.process_start_time(child) is not None else None


def _become_instance(plan, read_fd: int, write_fd: int, out_fd: int, err_fd: int) -> None:
    """In C: detach from the caller's terminal and session, then build the container."""
    code = 255
    try:
        os.close(read_fd)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (null, out_fd, err_fd):
            if fd > 2:
                os.close(fd)
        from satchel.runtime import executor, launch
        executor.apply(plan, launch.start_server(plan))  # INSTANCE_INIT never returns
        raise ContainerError("the container plan ended without starting the instance's init")
    except SatchelError as err:
        _report(write_fd, err.message, err.hint or "")
    except BaseException as err:  # a bug: say so in the caller's FATAL line, not a traceback
        _report(write_fd, f"unexpected error (this is a bug in satchel): "
                          f"{type(err).__name__}: {err}", "")
    finally:
        os._exit(code)


def _report(fd: int, message: str, hint: str) -> None:
    text = "error " + message.replace("\n", " ") + "\x1f" + hint.replace("\n", " ") + "\n"
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass
    try:
        os.write(2, f"FATAL:   {message}\n".encode(errors="replace"))  # into the .err log
    except OSError:
        pass


def _read_line(fd: int, timeout: float) -> str | None:
    """One line from the instance, or None if none came within `timeout` seconds."""
    import select

    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").rstrip("\n")


def _abort(child: int) -> None:
    """Kill a half-started instance: its process, then anything left in its mount namespace."""
    import signal

    ns_inode = mount_namespace(child)
    host_ns = mount_namespace(os.getpid())
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap_if_child(child)
    if ns_inode is not None and ns_inode != host_ns:
        _kill_namespace(ns_inode, None if os.getuid() == 0 else os.getuid())


def _reap_if_child(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _write_pid_file(path: str, pid: int) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(f"{pid}\n")
    except OSError as err:
        raise InstanceError(f"writing --pid-file {path}: {err.strerror}") from None


# -- stop --------------------------------------------------------------------------------------

def parse_signal(text: str) -> int:
    """-s value: 15, TERM, SIGTERM, sigterm."""
    import signal

    value = text.strip()
    if value.isdigit():
        number = int(value)
        if 0 < number < signal.NSIG:
            return number
        raise UsageError(f"invalid signal {text!r}")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"invalid signal {text!r}") from None


def mount_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _members(ns_inode: int, owner_uid: int | None):
    """Yield the live processes in mount namespace `ns_inode`, each held (state.Process) and,
    if owner_uid is given, only those that user could signal itself (runs as that uid, or in a
    user namespace that uid created). The caller closes each one."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        process = state.Process.open(int(entry))
        if process is None:
            continue
        if (process.namespace("mnt") == ns_inode and process.alive()
                and (owner_uid is None or process.belongs_to(owner_uid))):
            yield process
        else:
            process.close()


def _kill_namespace(ns_inode: int, owner_uid: int | None) -> None:
    """SIGKILL every process still in the mount namespace: all of them for root's own
    instances, only those `owner_uid` could signal itself otherwise (root serving -u USER
    never reaches a process of anyone else that sits in, or was moved into, the namespace)."""
    import signal

    for _ in range(50):
        killed = 0
        for process in _members(ns_inode, owner_uid):
            killed += process.signal(signal.SIGKILL)
            process.close()
        if not killed:
            return
        time.sleep(_POLL)


def _acting_for(owner: state.Owner) -> int | None:
    """The uid whose processes this stop may touch: None (any) for root's own instances."""
    return None if os.getuid() == 0 and owner.uid == 0 else owner.uid


def _wait_gone(process: state.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def stop(registry: state.Registry, record: state.Record, signum: int | None = None,
         timeout: float = DEFAULT_STOP_TIMEOUT, force: bool = False) -> None:
    """Stop one instance (see the module docstring) and remove its record.

    The recorded process is checked (state.claim: pid, start time and, for root acting for
    a user, the user's own namespace) and then held by a pidfd, so every signal reaches that
    process or nothing."""
    process = state.claim(record, registry.owner)
    if process is None:
        registry.remove(record.name)  # gone already
        return
    try:
        _stop_process(record, process, signum, timeout, force, _acting_for(registry.owner))
    finally:
        process.close()
    registry.remove(record.name)


def _stop_process(record, process, signum, timeout, force, owner_uid) -> None:
    import signal

    ns_inode = process.namespace("mnt")
    host_ns = mount_namespace(os.getpid())
    sig = signal.SIGKILL if force else (signum or signal.SIGTERM)
    try:
        process.signal(sig)
    except PermissionError:
        raise InstanceError(f"stopping instance {record.name} (pid {record.pid}): "
                            "permission denied") from None
    if not _wait_gone(process, timeout if not force else 0):
        log.verbose(f"instance {record.name} still running after {timeout}s: killing it")
        process.signal(signal.SIGKILL)
        _wait_gone(process, 5)
    if ns_inode is not None and ns_inode != host_ns:
        _kill_namespace(ns_inode, owner_uid)
    if process.alive():
        raise InstanceError(f"instance {record.name} (pid {record.pid}) did not stop")
