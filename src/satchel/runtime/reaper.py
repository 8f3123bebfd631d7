"""The reaper: a small process outside the container that cleans up after it.

The launcher execs into the payload, so nothing of satchel is left to run when the payload
exits or is SIGKILLed. What must go then (a resource-limit cgroup, the temporary sandbox of
--unsquash, the temporary SIF of --disable-cache with an image URI) is handed to a reaper,
forked only by launches that have something to clean up (the REAPER operation, first in the
plan):

- double-forked and in its own session: it is no child of the payload (whose wait() for "all
  children" would otherwise wait for it) and gets no terminal signals;
- it holds a pidfd of the launcher's process (os.pidfd_open: the same process before and after
  execve), opened before the launcher goes on, so an exit at any point is seen;
- it keeps stderr (for its warnings) and nothing else: a pipe of a FUSE server or the caller's
  stdout held open here would change what they see. A caller that reads the launcher's stderr
  to its end therefore also waits for the clean-up, which makes "nothing is left after the
  container exits" a fact a script (or a test) can rely on.

Not cgroup v1's release_agent: it is one global program per hierarchy (the host's, owned by
whoever set it first, systemd or Slurm), and cgroup v2 has none. Apptainer keeps a monitoring
process for the same reason. Under Slurm's proctrack/cgroup the step's end kills the reaper
with the rest of the step; the step's cgroup, and ours nested in it, go with the step.
"""

from __future__ import annotations

import os

from satchel.errors import ContainerError

CGROUP_EMPTY_TIMEOUT = 10.0  # seconds a cgroup may take to empty after SIGKILL


def start(paths=(), cgroup_dirs=()) -> None:
    """Fork the reaper for this process; return once it watches us (ContainerError if not)."""
    me = os.getpid()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate process: new session, fork the reaper, leave
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _reap(me, ready_w, tuple(paths), tuple(cgroup_dirs))
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.waitpid(child, 0)
    try:
        answer = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    if answer != b"1":
        raise ContainerError("starting the clean-up process (reaper) failed")


def _reap(pid: int, ready_w: int, paths: tuple, cgroup_dirs: tuple) -> None:
    """The reaper's life: watch `pid`, then remove what the container leaves. Never returns."""
    code = 1
    try:
        pidfd = os.pidfd_open(pid)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.write(ready_w, b"1")
        os.closerange(3, pidfd)
        os.closerange(pidfd + 1, 1 << 16)
        import select
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
        clean(paths, cgroup_dirs)
        code = 0
    except BaseException as err:  # noqa: BLE001 - the reaper must exit, whatever happened
        _warn(f"clean-up after the container failed: {err}")
    finally:
        os._exit(code)


def clean(paths, cgroup_dirs) -> None:
    """Remove cgroups (killing what is left in them), then temporary files and trees."""
    if cgroup_dirs:
        from satchel.runtime import cgroups
        for error in cgroups.remove(cgroup_dirs, CGROUP_EMPTY_TIMEOUT):
            _warn(error)
    for path in paths:
        remove_tree(path)


def temp_dir(prefix: str, parsed, what: str, fill) -> str:
    """A new private directory under --tmpdir (else $TMPDIR or /tmp), filled by `fill(path)`,
    for this reaper to remove after the container (--unsquash's sandbox, a URI's temporary
    SIF); removed at once if `fill` fails. UsageError naming `what` if none can be made."""
    import tempfile

    from satchel.errors import UsageError

    tmpdir = getattr(parsed, "tmpdir", None) or None
    try:
        top = tempfile.mkdtemp(prefix=prefix, dir=tmpdir)
    except OSError as err:
        raise UsageError(f"{what}: cannot create a temporary directory in "
                         f"{tmpdir or tempfile.gettempdir()}: {err.strerror}") from None
    try:
        fill(top)
    except BaseException:
        remove_tree(top)
        raise
    return top


def remove_tree(path: str) -> None:
    """rm -rf, also through directories the image made unwritable (mode 0555 and the like)."""
    import shutil

    def failed(_func, name, exc_info):
        _warn(f"could not remove {name}: {exc_info[1]}")

    if os.path.isdir(path) and not os.path.islink(path):
        _chmod_dirs(path)
        shutil.rmtree(path, onerror=failed)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            _warn(f"could not remove {path}: {err.strerror}")


def _chmod_dirs(path: str) -> None:
    """Owner rwx on every directory below path (top-down, before os.walk lists it)."""
    def allow(directory):
        try:
            os.chmod(directory, 0o700)
        except OSError:
            pass

    allow(path)
    for top, dirs, _ in os.walk(path):
        for name in dirs:
            full = os.path.join(top, name)
            if not os.path.islink(full):
                allow(full)


def _warn(text: str) -> None:
    try:
        os.write(2, f"WARNING: {text}\n".encode(errors="replace"))
    except OSError:
        pass
