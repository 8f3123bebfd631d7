"""Fixtures for the runtime tests: who runs satchel, and small purpose-made images.

- `who` (parametrized "user", "root"): every runtime test runs twice, as the real non-root user
  `satchel-test` (the main case: user namespace + squashfuse) and as root (loop device + kernel
  SquashFS). `who.run(args)` runs the installed satchel as that identity; `who.tmp()` makes a
  directory it owns.
- `rt_images` (session): images the shared busybox fixtures do not provide, made with
  mksquashfs and satchel.image.sif (no build step involved):
    suid      busybox tree + /usr/local/suid/id, a setuid-root (4755) busybox copy whose name
              selects busybox's `id` applet
    nosh      only /bin/busybox: no /bin/sh
    corrupt   a SIF whose descriptor table points past the end of the file
    dataonly  a SIF holding one data partition and no primary system partition
    sqfs      the suid tree as a bare SquashFS file, in a directory whose name contains ':'
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from support.fixtures_users import SATCHEL, run_satchel

BUSYBOX = "/bin/busybox"


class Who:
    """One identity the runtime is tested under."""

    def __init__(self, name: str, user=None):
        self.name = name
        self.user = user
        if user is None:
            self.uid, self.gid, self.home = 0, 0, "/root"
        else:
            self.uid, self.gid, self.home = user.uid, user.gid, user.home
        self._dirs: list[str] = []

    @property
    def rootless(self) -> bool:
        return self.user is not None

    def argv(self, args: list[str]) -> list[str]:
        argv = [SATCHEL] + list(args)
        return self.user.argv(argv) if self.user else argv

    def env(self, extra: dict | None = None) -> dict:
        if self.user:
            return self.user.env(extra)
        env = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        env.update(extra or {})
        return env

    def run(self, args: list[str], env: dict | None = None, timeout: float = 60, cwd=None,
            input: bytes | None = None, raw_env: dict | None = None):
        """Run satchel as this identity (env: extra variables; raw_env: the whole environment)."""
        if raw_env is not None:
            argv = self.argv(args)
            proc = subprocess.run(argv, env=raw_env, cwd=cwd or "/", input=input,
                                  capture_output=True, timeout=timeout)
            return subprocess.CompletedProcess(proc.args, proc.returncode,
                                               proc.stdout.decode(errors="replace"),
                                               proc.stderr.decode(errors="replace"))
        if self.user:
            return run_satchel(args, user=self.user, env=env, timeout=timeout, cwd=cwd,
                               input=input)
        proc = subprocess.run(self.argv(args), env=self.env(env), cwd=cwd or "/root",
                              input=input, capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))

    def popen(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(args), env=self.env(env), cwd=kw.pop("cwd", self.home),
                                **kw)

    def tmp(self, prefix: str = "satchel-rt-") -> str:
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        os.chown(path, self.uid, self.gid)
        self._dirs.append(path)
        return path

    def cleanup(self) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["user", "root"])
def who(request):
    if os.geteuid() != 0:
        pytest.skip("the runtime tests create a user and compare with root: run as root")
    if request.param == "user":
        identity = Who("user", request.getfixturevalue("test_user"))
    else:
        identity = Who("root")
    yield identity
    identity.cleanup()


# -- leftovers ---------------------------------------------------------------------------------

def live_processes(name: str, argument: str | None = None) -> list[int]:
    """Pids of running (not zombie) processes called `name` (with `argument` in argv if given)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2]
        if comm != name[:15] or state in "ZX":
            continue
        if argument is not None and os.fsencode(argument) not in argv:
            continue
        pids.append(int(entry))
    return pids


def image_mounts(image: str) -> list[str]:
    """Mount lines, in any process's mount namespace, whose source is `image` (FUSE mounts name
    the image as their source) or which stage a container of it (loop-mounted SquashFS)."""
    loops = set(satchel_loop_devices(image))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/mountinfo") as fh:
                for line in fh:
                    source = line.split(" - ", 1)[-1].split()[1] if " - " in line else ""
                    if source == image or source.removeprefix("/dev/") in loops:
                        found.append(f"pid {entry}: {line.strip()}")
        except OSError:
            continue
    return found


def satchel_loop_devices(image: str) -> list[str]:
    """Loop devices whose backing file is `image`."""
    found = []
    base = "/sys/block"
    for name in os.listdir(base):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"{base}/{name}/loop/backing_file") as fh:
                if fh.read().strip() == image:
                    found.append(name)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """The process exists and is no zombie (PID 1 here reaps no orphans: see FACTS.md)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until(predicate, timeout: float = 1.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_for_name_below(directory: str, name: str, timeout: float) -> bool:
    """Wait for a file called `name` anywhere below `directory` (a build's staging tree)."""
    def found() -> bool:
        return any(os.path.exists(os.path.join(root, name)) for root, _, _ in os.walk(directory))
    return wait_until(found, timeout, interval=0.1)


def processes_mentioning(marker: str) -> list[str]:
    """`ps` lines (pid, argv) of processes whose command line mentions marker (an image path
    used by one test only): the launcher, the payload or a server still running for it."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def wait_processes_gone(marker: str, timeout: float = 10) -> list[str]:
    """Wait up to `timeout` s for processes_mentioning(marker) to be empty; return what is left."""
    wait_until(lambda: not processes_mentioning(marker), timeout, interval=0.2)
    return processes_mentioning(marker)


def leftovers(image: str) -> tuple[list[int], list[str], list[str]]:
    """(squashfuse servers, mounts, loop devices) still alive for `image`."""
    return (live_processes("squashfuse_ll", image), image_mounts(image),
            satchel_loop_devices(image))


def assert_nothing_left(image: str, timeout: float = 1.0) -> None:
    """No squashfuse server, mount or loop device of `image` may outlive the container by 1 s.

    Only things naming this very image count, so containers other tests run at the same time
    (of other images) do not disturb the check.
    """
    if not wait_until(lambda: not any(leftovers(image)), timeout):
        servers, mounts, loops = leftovers(image)
        raise AssertionError(f"left behind after {timeout}s: servers {servers}, "
                             f"mounts {mounts[:5]}, loop devices {loops}")


# -- images ------------------------------------------------------------------------------------

def busybox_tree(root: str, applets=("sh", "id", "cat", "echo", "ls", "true", "false", "sleep",
                                     "env", "test", "touch", "stat", "grep", "kill", "trap",
                                     "mount", "tty", "pwd", "printf", "readlink", "mkdir",
                                     "rm", "wc", "head", "uname", "hostname")) -> None:
    """A minimal image tree: static busybox, applet links, the directories Apptainer expects."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "var/tmp", "home", "root",
              ".singularity.d/env", ".singularity.d/libs"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for applet in applets:
        if applet != "trap":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    for name, text in (("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                       ("group", "root:x:0:\n"), ("hosts", ""), ("resolv.conf", "")):
        with open(os.path.join(root, "etc", name), "w") as fh:
            fh.write(text)
    os.symlink("/usr/share/zoneinfo/UTC", os.path.join(root, "etc", "localtime"))


def make_sif(tree: str, path: str, primary: bool = True) -> None:
    from satchel.image import sif

    sqfs = path + ".sqfs"
    subprocess.run(["mksquashfs", tree, sqfs, "-noappend", "-quiet", "-all-root", "-no-progress"],
                   check=True, capture_output=True)
    try:
        part = sif.NewObject(datatype=sif.DATA_PARTITION, path=sqfs, fs_type=sif.FS_SQUASH,
                             part_type=sif.PART_PRIMSYS if primary else sif.PART_DATA)
        sif.create(path, [part])
    finally:
        os.unlink(sqfs)
    os.chmod(path, 0o755)


class RuntimeImages:
    def __init__(self, base: str):
        self.base = base
        work = tempfile.mkdtemp(prefix="tree-", dir=base)
        tree = os.path.join(work, "suid")
        busybox_tree(tree)
        os.makedirs(os.path.join(tree, "usr", "local", "suid"))
        suid = os.path.join(tree, "usr", "local", "suid", "id")
        shutil.copy2(BUSYBOX, suid)
        os.chmod(suid, 0o4755)
        self.suid = os.path.join(base, "suid.sif")
        make_sif(tree, self.suid)
        colon_dir = os.path.join(base, "with:colon")
        os.mkdir(colon_dir)
        os.chmod(colon_dir, 0o755)
        self.sqfs = os.path.join(colon_dir, "img:1.sqfs")
        subprocess.run(["mksquashfs", tree, self.sqfs, "-noappend", "-quiet", "-all-root",
                        "-no-progress"], check=True, capture_output=True)
        os.chmod(self.sqfs, 0o644)

        nosh = os.path.join(work, "nosh")
        os.makedirs(os.path.join(nosh, "bin"))
        for d in ("proc", "sys", "dev", "tmp", "etc", "home"):
            os.makedirs(os.path.join(nosh, d))
        shutil.copy2(BUSYBOX, os.path.join(nosh, "bin", "busybox"))
        self.nosh = os.path.join(base, "nosh.sif")
        make_sif(nosh, self.nosh)

        self.dataonly = os.path.join(base, "dataonly.sif")
        make_sif(nosh, self.dataonly, primary=False)

        self.corrupt = os.path.join(base, "corrupt.sif")
        with open(self.suid, "rb") as fh:
            data = fh.read()
        with open(self.corrupt, "wb") as fh:
            fh.write(data[:len(data) // 2])  # the partition now extends past the end
        os.chmod(self.corrupt, 0o644)
        shutil.rmtree(work)


@pytest.fixture(scope="session")
def rt_images(image_dir) -> RuntimeImages:
    base = os.path.join(image_dir, "runtime")
    os.mkdir(base)
    os.chmod(base, 0o755)
    return RuntimeImages(base)


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
