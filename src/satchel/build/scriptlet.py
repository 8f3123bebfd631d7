"""Running %setup on the host and %post/%test inside the rootfs.

%post and %test run in the same sandbox engine as `exec`: runtime/plan_build.py decides the
sandbox as a ContainerPlan (mount + PID namespaces, the rootfs bound on itself and made the
root by pivot_root, never a bare chroot, which root can leave; a fresh /proc, a read-only
/sys, the minimal /dev, a private /tmp, staged copies of the host's /etc/resolv.conf and
/etc/hosts, runc's read-only and masked kernel paths) and runtime/executor.py applies it. As
root this is real root with every capability (what package managers need); under --fakeroot
the whole build already runs as uid 0 of a user namespace (fakeroot.py), and the same plan
works there. This module only forks, reports and waits:

    build process ──fork──> helper: executor.apply(plan): unshare(NEWNS|NEWPID), FORK_INIT
                                 │   (forwards signals, waits, exits with pid 1's status)
                                 └──> pid 1 of the new PID namespace: mounts, pivot_root,
                                      execve /bin/sh -ex /.post.script

The PID namespace makes cleanup exact: killing the helper kills pid 1 (PR_SET_PDEATHSIG) and
the kernel then kills everything %post started, so an interrupted build (SIGINT in the middle
of %post) leaves no process writing into the tree we are about to delete. A "lifeline" pipe
held by every process of the scriptlet tells the build when they are all gone.
"""

from __future__ import annotations

import os
import select
import signal

from satchel import fsutil, log
from satchel.build import ns
from satchel.errors import BuildError, PathError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIFELINE_TIMEOUT = 30.0


def section_argv(section_name: str, script_path: str, args: str) -> list[str]:
    """Apptainer's interpreter rules: `/bin/sh -ex SCRIPT`, or with `-c SHELL [ARGS]` in the
    section arguments `/bin/sh -ex -c "SHELL [ARGS] SCRIPT"`; other arguments go to /bin/sh."""
    params = args.split("#", 1)[0].split()
    argv = ["/bin/sh", "-ex"]
    if "-c" in params:
        i = params.index("-c")
        if i + 1 >= len(params):
            raise BuildError(f"%{section_name} -c needs an interpreter, e.g. '%{section_name} -c /bin/bash'")
        return argv + params[:i] + ["-c", " ".join(params[i + 1:]) + " " + script_path]
    return argv + params + [script_path]


def container_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for scriptlets in the container (Apptainer runs %post --cleanenv)."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/sh",
        "LANG": "C",
        "TERM": os.environ.get("TERM", "xterm"),
        "APPTAINER_CONTAINER": "build",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update(extra or {})
    return env


def test_command(rootfs: str) -> tuple[dict[str, str], list[str]]:
    """(environment, argv) of the build's %test, as `satchel test` runs it (and Apptainer's
    build, which runs `apptainer test ROOTFS` with the host environment less its APPTAINER_*
    and SINGULARITY_* variables): the host environment passes, except HOME, PATH,
    LD_LIBRARY_PATH and the runtime's own variables; APPTAINERENV_X sets X; the image's
    /.singularity.d/env scripts are sourced before /.singularity.d/test runs."""
    from satchel.runtime import environment
    env = environment.build_environment(dict(os.environ), cleanenv=False, home="/root",
                                        image_path=rootfs, command="test", evaluate=True)
    for warning in env.warnings:
        log.warning(warning)
    script = environment.action_script("test", "Satchel> ")
    return env.environ, ["/bin/sh", "-c", script, "/.singularity.d/actions/test"]


def run_on_host(script_text: str, section, workdir: str, env_extra: dict[str, str], cwd: str,
                what: str) -> None:
    """%setup / %pre: run on the host as the building user (root or fakeroot)."""
    from satchel.build import process
    path = os.path.join(workdir, f"{section.name}.script")
    fsutil.write_new_file(path, script_text, 0o755)
    try:
        env = dict(os.environ)
        env.update(env_extra)
        process.run(section_argv(section.name, path, section.args), what, env=env, cwd=cwd)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


class Staged:
    """Host files staged for binding into the container during %post (never the originals)."""

    def __init__(self, workdir: str):
        from satchel.runtime.plan_build import STAGED_FILES
        self.workdir = workdir
        self.files: dict[str, str] = {}
        for path in STAGED_FILES:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                log.warning(f"cannot read {path}: name resolution in %post may fail")
                continue
            staged = os.path.join(workdir, "staged-" + os.path.basename(path))
            # a trailing newline makes the copy differ from a distribution's pristine file, so
            # package scripts do not try to replace it (Apptainer found this with yum)
            fsutil.write_new_file(staged, data + b"\n", 0o644)
            self.files[path] = staged


def run_in_rootfs(rootfs: str, argv: list[str], env: dict[str, str], what: str,
                  staged: Staged | None = None) -> None:
    """Run argv with rootfs as its root (see module doc). BuildError on failure."""
    from satchel.runtime import plan_build
    from satchel.runtime.host import HostInfo
    rootfs = os.path.abspath(rootfs)
    try:
        shell = fsutil.secure_join(rootfs, "/bin/sh")
    except PathError as err:
        raise BuildError(f"{what}: {err}") from None
    if not os.path.exists(shell):
        raise BuildError(f"{what}: the image has no /bin/sh to run the scriptlet")
    plan = plan_build.build_sandbox_plan(
        rootfs, argv, env, staged.files if staged else {}, HostInfo.gather(),
        user_namespace=not in_initial_user_namespace(),
        workdir=staged.workdir if staged else None)
    log.flush_outputs()
    err_r, err_w = os.pipe()
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # helper, then also pid 1 of the sandbox (executor's FORK_INIT)
        try:
            os.close(err_r)
            os.close(life_r)
            _helper(plan, life_w)
        except BaseException as err:  # report and leave, never return into the build
            _report(err_w, err)
        finally:
            os._exit(127)
    os.close(err_w)
    os.close(life_w)
    try:
        message = ns.read_to_eof(err_r).strip()
        _, wait_status = os.waitpid(pid, 0)
        pid = 0
        _wait_lifeline(life_r)
    except BaseException:
        if pid:
            ns.kill_and_reap(pid)
            _wait_lifeline(life_r)
        raise
    finally:
        os.close(err_r)
        os.close(life_r)
    if message:
        raise BuildError(f"{what}: {message}")
    code = os.waitstatus_to_exitcode(wait_status)
    if code != 0:
        if code > 128:
            raise BuildError(f"{what} killed by signal {code - 128}")
        raise BuildError(f"{what} failed with exit status {code}")


def _wait_lifeline(fd: int) -> None:
    """Wait until every process that inherited the lifeline has exited (bounded)."""
    import time
    deadline = time.monotonic() + LIFELINE_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("processes started by a scriptlet are still running")
            return
        ready, _, _ = select.select([fd], [], [], left)
        if ready and not os.read(fd, 4096):
            return


def _report(fd: int, err: BaseException) -> None:
    from satchel.errors import SatchelError
    try:
        text = str(err) if isinstance(err, (OSError, SatchelError)) else f"{type(err).__name__}: {err}"
        os.write(fd, text.encode(errors="replace")[:4000])
    except OSError:
        pass


def _helper(plan, life_w: int) -> None:
    """In the forked helper: apply the sandbox plan (runtime/executor.py). On success it does
    not return: the helper exits with pid 1's status, pid 1 becomes the scriptlet."""
    from satchel.runtime import executor, linux
    linux.set_parent_death_signal(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.set_inheritable(life_w, True)  # held by every process of the scriptlet
    os.umask(0o022)
    executor.apply(plan)


def in_initial_user_namespace() -> bool:
    """True for real root; False as uid 0 of a --fakeroot user namespace."""
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False
