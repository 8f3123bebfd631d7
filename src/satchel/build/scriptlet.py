"""Running %setup on the host and %post/%test inside the rootfs.

%post and %test run in the rootfs made the root of a private mount namespace by pivot_root
(never a bare chroot, which root can leave), in a new PID namespace, with /proc, a read-only
/sys, a minimal /dev, a private /tmp and staged copies of the host's /etc/resolv.conf and
/etc/hosts. As root this is real root with every capability (what package managers need);
under --fakeroot the whole build already runs as uid 0 of a user namespace (fakeroot.py), and
the same calls work there. Process layout:

    build process ──fork──> helper: unshare(NEWNS|NEWPID), fork, wait, exit with the status
                                 └──> pid 1 of the new PID namespace: mounts, pivot_root, exec
                                      /bin/sh -ex /.post.script

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
from satchel.errors import BuildError, ContainerError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
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
        self.files: dict[str, str] = {}
        for path in ("/etc/resolv.conf", "/etc/hosts"):
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
    rootfs = os.path.abspath(rootfs)
    if not os.path.exists(fsutil.secure_join(rootfs, "/bin/sh")):
        raise BuildError(f"{what}: the image has no /bin/sh to run the scriptlet")
    binds = staged.files if staged else {}
    log.flush_outputs()
    err_r, err_w = os.pipe()
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # helper
        status = 127
        try:
            os.close(err_r)
            os.close(life_r)
            status = _helper(rootfs, argv, env, binds, err_w, life_w)
        except BaseException as err:  # report and leave, never return into the build
            _report(err_w, err)
        finally:
            os._exit(status)
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


def _helper(rootfs: str, argv: list[str], env: dict[str, str], binds: dict[str, str],
            err_w: int, life_w: int) -> int:
    """In the forked helper: new mount + PID namespaces, then pid 1 does the work."""
    from satchel.runtime import linux
    linux.set_parent_death_signal(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    linux.unshare(("mount", "pid"))
    child = os.fork()
    if child == 0:
        status = 127
        try:
            linux.set_parent_death_signal(signal.SIGKILL)
            _enter(rootfs, binds)
            os.set_inheritable(life_w, True)
            os.umask(0o022)
            try:
                os.execve(argv[0], argv, env)
            except FileNotFoundError:
                raise BuildError(f"{argv[0]} not found in the image") from None
        except BaseException as err:
            _report(err_w, err)
        finally:
            os._exit(status)
    os.close(err_w)
    os.close(life_w)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def in_initial_user_namespace() -> bool:
    """True for real root; False as uid 0 of a --fakeroot user namespace."""
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _enter(rootfs: str, binds: dict[str, str]) -> None:
    """Mounts for the scriptlet, all in our private mount namespace, then pivot_root.

    Never a bare chroot: a root process leaves a chroot at will (chroot into a subdirectory,
    chdir("..") up past it, chroot(".")), and %post runs code from the base image as root.
    The rootfs is bind-mounted on itself and becomes the namespace's root with pivot_root;
    the host's root is detached, so no path, `..` or /proc/PID/root leads back to it.
    Every mount failure ends the scriptlet with its error: a missing read-only /sys or a
    host /proc would leave the host open to a root %post.
    """
    from satchel.runtime import linux
    real_root = in_initial_user_namespace()
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None,
                "making the mount namespace private")
    linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC, None,
                "binding the root filesystem on itself")
    join = lambda path: fsutil.make_dirs_in_root(rootfs, path)  # noqa: E731
    proc = join("/proc")
    try:
        linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                    None, "mounting /proc")
    except ContainerError:
        # a user namespace on a host with masked /proc paths may refuse a fresh procfs; the
        # host's still shows our processes. Never as real root: its /proc/1/root is the host.
        if real_root:
            raise
        linux.mount("/proc", proc, None, linux.MS_BIND | linux.MS_REC, None, "binding /proc")
    sys_dir = join("/sys")
    linux.mount("/sys", sys_dir, None, linux.MS_BIND | linux.MS_REC, None, "binding /sys")
    linux.mount_setattr(sys_dir, linux.MOUNT_ATTR_RDONLY, 0, True, "making /sys read-only")
    _mount_dev(join("/dev"))
    linux.mount("tmpfs", join("/tmp"), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777",
                "mounting a tmpfs on /tmp")
    for container_path, host_file in binds.items():
        target = fsutil.secure_join(rootfs, container_path)
        if not os.path.exists(target):
            fsutil.make_dirs_in_root(rootfs, os.path.dirname(container_path))
            target = fsutil.secure_join(rootfs, container_path)
            with open(target, "a"):
                pass
        if os.path.isfile(target):
            linux.mount(host_file, target, None, linux.MS_BIND, None, f"binding {container_path}")
    linux.pivot_root(rootfs)


def _mount_dev(dev: str) -> None:
    """A minimal /dev: a tmpfs with the host's harmless nodes bound in, devpts and shm."""
    from satchel.runtime import linux
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=755,size=65536k",
                "mounting a tmpfs on /dev")
    for node in DEV_NODES:
        target = os.path.join(dev, node)
        with open(target, "w"):
            pass
        linux.mount(f"/dev/{node}", target, None, linux.MS_BIND, None, f"binding /dev/{node}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    linux.mount("devpts", os.path.join(dev, "pts"), "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620", "mounting /dev/pts")
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    linux.mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                "mode=1777", "mounting a tmpfs on /dev/shm")
