"""Starting and stopping instances: the only code that creates or ends their processes.

start: the caller (P) reserves the name under a lock, opens the logs, plans the container with
  the runtime's own build_plan() (so every exec/run option means the same here), then forks C.
  C detaches (setsid, stdin /dev/null, stdout/stderr to the logs) and applies the plan, whose
  last operation makes C the instance's init (satchel.instance.init) instead of exec'ing the
  payload. Init writes one line on a pipe once the payload runs ("ok PID") or why it could
  not ("error MESSAGE"); P waits for that line, records C and returns. P never waits for more
  than the line: C (and with --pid, its forwarding parent) keep the pipe open.

stop: send the signal to the recorded process, give it the timeout, SIGKILL it, then SIGKILL
  anything still in the instance's mount namespace (processes that joined with
  `exec instance://`, orphans of an init killed by force). When the last one is gone the
  namespace dies, the kernel aborts the FUSE connection and squashfuse exits: nothing is left.
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
    from satchel.cli.commands import action
    from satchel.image.formats import open_image
    from satchel.runtime.config import load_config
    from satchel.runtime.host import HostInfo
    from satchel.runtime.plan import build_plan

    image_arg, name, args = parsed.args[0], parsed.args[1], list(parsed.args[2:])
    state.check_name(name)
    if image_arg.startswith(state.URI_PREFIX):
        raise UsageError("an instance cannot be started from another instance: give an image")
    image = open_image(image_arg)
    config = load_config()
    opts = action.to_run_options("run", parsed)
    opts.command = command
    opts.args = args
    opts.gpu = action.gpu_binds(parsed, config)
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
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
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
    out_log, err_log = registry.log_paths(name)
    try:
        line = _read_line(read_fd, READY_TIMEOUT)
    except BaseException:  # interrupted, or never ready: no unrecorded instance may stay
        _abort(child)
        raise
    finally:
        os.close(read_fd)
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
    started = state.process_start_time(child)
    if started is None:
        raise InstanceError(f"instance {name} exited right after starting", hint=f"see {err_log}")
    record = state.Record(
        name=name, pid=child, starttime=started, status="running", image=image.path,
        user=registry.owner.name, uid=registry.owner.uid, host=registry.host,
        started=int(time.time()), rootless=plan.rootless, namespaces=list(plan.namespaces),
        pid_namespace="pid" in plan.namespaces, log_out=out_log, log_err=err_log,
        command=command, args=args, ip="")
    try:
        registry.save(record)
        if pid_file:
            _write_pid_file(pid_file, child)
    except BaseException:  # running but unrecorded would be a leak: take it down again
        _abort(child)
        raise
    return record


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
        from satchel.runtime import executor
        executor.apply(plan)  # the INSTANCE_INIT operation never returns
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
        _kill_namespace(ns_inode)


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


def namespace_members(ns_inode: int, uid: int | None) -> list[int]:
    """Live processes (of `uid`, if given) whose mount namespace is `ns_inode`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if uid is not None and os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != ns_inode:
                continue
        except OSError:
            continue
        if state.process_start_time(pid) is not None:
            found.append(pid)
    return found


def _kill_namespace(ns_inode: int) -> None:
    """SIGKILL every process (of ours; all, for root) still in the mount namespace."""
    import signal

    owner = None if os.getuid() == 0 else os.getuid()
    for _ in range(50):
        members = namespace_members(ns_inode, owner)
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(_POLL)


def _wait_gone(record: state.Record, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while state.is_alive(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def stop(registry: state.Registry, record: state.Record, signum: int | None = None,
         timeout: float = DEFAULT_STOP_TIMEOUT, force: bool = False) -> None:
    """Stop one instance (see the module docstring) and remove its record."""
    import signal

    ns_inode = mount_namespace(record.pid)
    host_ns = mount_namespace(os.getpid())
    sig = signal.SIGKILL if force else (signum or signal.SIGTERM)
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise InstanceError(f"stopping instance {record.name} (pid {record.pid}): "
                            "permission denied") from None
    if not _wait_gone(record, timeout if not force else 0):
        log.verbose(f"instance {record.name} still running after {timeout}s: killing it")
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(record, 5)
    if ns_inode is not None and ns_inode != host_ns:
        _kill_namespace(ns_inode)
    if state.is_alive(record):
        raise InstanceError(f"instance {record.name} (pid {record.pid}) did not stop")
    registry.remove(record.name)
