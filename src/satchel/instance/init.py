"""The first process of an instance, inside the container: start the payload, reap, stop.

`instance start` builds the container like `satchel exec` but, instead of exec'ing the
payload, the launcher process stays and becomes this loop (the runtime's INSTANCE_INIT
operation). It must

- keep the instance alive when the %startscript ends: a startscript that starts a daemon and
  returns is the common case, and an image without one still makes a usable instance;
- reap every zombie: it is a child subreaper, so daemons that double-fork are reparented here
  and not to the host's init (in a PID namespace it is pid 1 and reaps anyway);
- report readiness: one line on a socket once the payload was exec'd (or failed to be), then
  wait there until the launcher has written the instance's record, and end everything if the
  launcher dies first (nothing may outlive its record);
- stop on SIGTERM/SIGINT/SIGHUP/SIGQUIT: forward the signal to its children and exit once
  none is left (`instance stop` SIGKILLs whatever outlives its timeout); other catchable
  signals are forwarded and the instance goes on.

It runs after pivot_root: the host's files, and so Python's module path, are out of reach, so
it may only use modules already imported (os, signal, satchel.runtime.linux).
"""

from __future__ import annotations

import os
import signal

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = frozenset((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT))
_UNCATCHABLE = frozenset((signal.SIGKILL, signal.SIGSTOP))


def _handled_signals() -> set:
    # 32..SIGRTMIN-1 belong to the C library's threads
    return {s for s in range(1, signal.NSIG)
            if s not in _UNCATCHABLE and not 32 <= s < signal.SIGRTMIN}


def children(parent: int) -> list[int]:
    """Pids whose parent is `parent` (direct children, adopted orphans included)."""
    found = []
    mine = str(parent).encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        if fields[1] == mine and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass


def _reap_all() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def _await_record(channel: int) -> None:
    """Go on only once the launcher has recorded the instance ("c" on the channel).

    The channel is a socket whose other end only the launcher holds: end of file means it died
    (SIGKILL between the fork and the record) and nobody could ever find or stop this
    instance, so it ends here, the payload with it: nothing may outlive its record. Signals
    stay blocked meanwhile and are handled afterwards.
    """
    try:
        committed = os.read(channel, 1) == b"c"
    except OSError:
        committed = False
    os.close(channel)
    if committed:
        return
    _say(2, "FATAL:   the instance's launcher died before recording it: stopping\n")
    for child in children(os.getpid()):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(255)  # as pid 1 of its PID namespace, this kills everything left in it


def run(argv: list[str], environ: dict, ready_fd: int) -> None:
    """Become the instance's init. Never returns: exits 0 once stopped and childless."""
    from satchel.runtime import linux

    linux.prctl(PR_SET_CHILD_SUBREAPER, 1, "becoming the instance's child subreaper")
    handled = _handled_signals()
    # every signal is taken synchronously with sigwaitinfo(): no handler runs at an awkward
    # moment, and a SIGCHLD between "no child left" and the wait cannot be lost
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    exec_read, exec_write = os.pipe2(os.O_CLOEXEC)
    payload = os.fork()
    if payload == 0:
        os.close(exec_read)
        os.close(ready_fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.setsid()  # its own process group: a terminal-less service, signalled as a group
            os.execve(argv[0], argv, environ)
        except OSError as err:
            _say(exec_write, f"executing {argv[0]} in the container: {err.strerror}")
        os._exit(127)
    os.close(exec_write)
    failure = os.read(exec_read, 4096)
    os.close(exec_read)
    if failure:
        _say(ready_fd, "error " + failure.decode(errors="replace").replace("\n", " ") + "\n")
        os._exit(255)
    _say(ready_fd, f"ok {os.getpid()}\n")
    _await_record(ready_fd)

    stopping = False
    while True:
        for pid, status in _reap_all():
            if pid == payload and not stopping:
                code = (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                        else os.WEXITSTATUS(status))
                _say(2, f"INFO:    the instance's start payload exited with status {code}; "
                        "the instance keeps running until it is stopped\n")
        if stopping and not children(os.getpid()):
            os._exit(0)
        info = signal.sigwaitinfo(handled)
        signum = info.si_signo
        if signum == signal.SIGCHLD:
            continue
        if signum in STOP_SIGNALS:
            stopping = True
        for child in children(os.getpid()):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass
