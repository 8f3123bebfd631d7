"""containerd 1.6 (Debian) drives satchel-runc through its runc shim: `ctr run
--runc-binary`, task exec, kill, ps and a terminal. containerd is started by the fixture on
its own root/state/socket (no systemd, no CRI) and everything it left is removed after."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from support.fixtures_ocirt import make_rootfs, start_containerd

pytestmark = pytest.mark.slow
IMAGE = "docker.io/library/satchel-bb:latest"


def _oci_archive(top: str) -> str:
    """A one-layer busybox image as an oci-archive (umoci builds it, skopeo archives it)."""
    layout, unpacked = os.path.join(top, "layout"), os.path.join(top, "unpacked")
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", layout + ":latest")
    run("umoci", "unpack", "--image", layout + ":latest", unpacked)
    make_rootfs(os.path.join(unpacked, "rootfs"))
    run("umoci", "repack", "--image", layout + ":latest", unpacked)
    archive = os.path.join(top, "image.oci.tar")
    run("skopeo", "copy", "-q", f"oci:{layout}:latest", f"oci-archive:{archive}:{IMAGE}")
    return archive


@pytest.fixture(scope="module")
def containerd(satchel_runc):
    for tool in ("containerd", "ctr", "umoci", "skopeo"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    top = tempfile.mkdtemp(prefix="satchel-ctd-")
    daemon, ctr = start_containerd(top)
    subprocess.run(ctr + ["images", "import", _oci_archive(top)], check=True,
                   capture_output=True)
    yield ctr
    # tasks still running, then the daemon, its shims and the overlay mounts under its root
    subprocess.run(ctr + ["task", "ls", "-q"], capture_output=True)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)
    out = subprocess.run(["pgrep", "-f", top], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    for line in reversed(open("/proc/self/mounts").read().splitlines()):
        point = line.split()[1]
        if point.startswith(top):
            subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)


def ctr(containerd, *args, timeout=60, **kw):
    return subprocess.run(containerd + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def test_ctr_run_exit_codes(containerd, satchel_runc):
    """ctr run --runc-binary satchel-runc: output and exit code of the task come back."""
    for code in (0, 5):
        out = ctr(containerd, "run", "--rm", "--runc-binary", satchel_runc, IMAGE,
                  f"exit{code}", "sh", "-c", f"echo hi from ctr; id -u; exit {code}")
        assert (out.returncode, out.stdout) == (code, "hi from ctr\n0\n"), out.stderr


def test_ctr_task_exec_ps_kill(containerd, satchel_runc):
    """A detached task: exec in it (status back), ps lists it, kill stops it, rm cleans."""
    name = "long"
    started = ctr(containerd, "run", "-d", "--runc-binary", satchel_runc, IMAGE, name,
                  "sleep", "300")
    assert started.returncode == 0, started.stderr
    try:
        out = ctr(containerd, "task", "exec", "--exec-id", "e1", name, "sh", "-c",
                  "cat /proc/1/cmdline; echo; exit 4")
        assert out.returncode == 4, out.stderr
        assert out.stdout.split("\x00")[:2] == ["sleep", "300"]
        listed = ctr(containerd, "task", "ps", name)
        pid = ctr(containerd, "task", "ls").stdout.split("\n")[1].split()[1]
        assert pid in listed.stdout
        assert ctr(containerd, "task", "kill", "-s", "SIGKILL", name).returncode == 0
        deadline = time.monotonic() + 20
        while "STOPPED" not in ctr(containerd, "task", "ls").stdout:
            assert time.monotonic() < deadline, "the task did not stop"
            time.sleep(0.05)
    finally:
        ctr(containerd, "task", "rm", "-f", name)
        ctr(containerd, "container", "rm", name)
    assert name not in ctr(containerd, "container", "ls", "-q").stdout


def test_ctr_run_with_terminal(containerd, satchel_runc):
    """ctr run -t: the task's stdio is a pty whose master reached the shim through the
    console socket (SCM_RIGHTS)."""
    if not shutil.which("script"):
        pytest.skip("script(1) is needed to give ctr a terminal")
    command = " ".join(containerd + ["run", "-t", "--rm", "--runc-binary", satchel_runc,
                                     IMAGE, "tty1", "sh", "-c",
                                     "'tty; test -t 0 && echo term-ok; exit 2'"])
    out = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out
    assert "/dev/pts/0" in out.stdout and "term-ok" in out.stdout
