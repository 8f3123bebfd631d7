"""--pid: the two small processes a new PID namespace forces on us.

unshare(CLONE_NEWPID) puts only *children* in the new namespace, so a fork is unavoidable:

  launcher (host pid ns)  forwards every catchable signal to init, waits, and exits with the
                          payload's status exactly: exit N -> N, death by signal S -> 128+S
  init (pid 1)            mounts /proc (done by the executor), forks the payload, forwards
                          signals to it, reaps every zombie, exits with the payload's status
  payload                 execve()s the user's command

Pid 1 ignores signals it has no handler for, even SIGTERM, hence the explicit forwarding. If
the launcher is killed, PR_SET_PDEATHSIG kills init, and the kernel kills everything else in
the namespace with it.
"""

from __future__ import annotations

import os
import signal

from satchel.errors import ContainerError

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
# not forwarded: we need SIGCHLD ourselves; terminal stop signals would stop the forwarder
_KEEP = {signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def _forwardable():
    for sig in range(1, signal.NSIG):
        if sig not in _UNCATCHABLE and sig not in _KEEP and not 32 <= sig < signal.SIGRTMIN:
            yield sig  # 32..SIGRTMIN-1 belong to the C library's threads


def _status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _forward_to(pid_box: list) -> None:
    def handler(signum, _frame):
        pid = pid_box[0]
        if pid > 0:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    for sig in _forwardable():
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError, RuntimeError):
            pass


def fork_init() -> None:
    """Fork pid 1 of the new namespace. Returns in the child; the parent never returns."""
    from satchel.runtime import linux

    box = [0]
    _forward_to(box)  # before fork: no window where a signal kills the launcher unforwarded
    pid = os.fork()
    if pid == 0:
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() == 1:  # the launcher died between fork and prctl
            os._exit(255)
        for sig in _forwardable():
            signal.signal(sig, signal.SIG_DFL)
        return
    box[0] = pid
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(255)
        except InterruptedError:
            continue
    os._exit(_status_code(status))


def run_init(argv: list[str], environ: dict) -> None:
    """In pid 1: fork and exec the payload, forward signals, reap, exit with its status."""
    box = [0]
    _forward_to(box)
    read_fd, write_fd = os.pipe()  # carries an exec failure back from the child
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        for sig in _forwardable():
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execve(argv[0], argv, environ)
        except OSError as err:
            os.write(write_fd, f"{err.strerror}".encode())
        os._exit(255)
    box[0] = pid
    os.close(write_fd)
    failure = os.read(read_fd, 4096)
    os.close(read_fd)
    if failure:
        raise ContainerError(f"executing {argv[0]} in the container: {failure.decode()}")
    code = 255
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if reaped == pid:
            code = _status_code(status)
            break
    os._exit(code)
