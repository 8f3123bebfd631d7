"""Podman (Debian, as root) with --runtime satchel-runc: run --rm, exec, stop; the same
process status (capabilities, seccomp filter from Podman's default profile) as under runc."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid

import pytest

from test_oci_runtime_containerd import _oci_archive

pytestmark = pytest.mark.slow
# FACTS.md: Podman as root here needs these (no CAP_SYS_RESOURCE; its network edits the
# host firewall); crun, its default, fails on this hybrid cgroup host
FLAGS = ["--network", "none", "--ulimit", "nofile=20000:20000", "--ulimit",
         "nproc=32768:32768"]
STATUS = "grep -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"


@pytest.fixture(scope="module")
def podman_image():
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    top = tempfile.mkdtemp(prefix="satchel-podman-")
    name = "localhost/satchel-bb-" + uuid.uuid4().hex[:6]
    archive = _oci_archive(top)
    loaded = subprocess.run(["podman", "load", "-q", "-i", archive], capture_output=True,
                            text=True, check=True).stdout
    ref = loaded.strip().split()[-1]
    subprocess.run(["podman", "tag", ref, name], check=True)
    yield name
    subprocess.run(["podman", "rmi", "-f", name], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)


def podman(runtime, *args, timeout=90):
    return subprocess.run(["podman", "--runtime", runtime] + list(args), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_podman_run_matches_runc(podman_image, satchel_runc):
    """podman run --rm: exit code, output and the process's credentials and seccomp state
    equal runc's under the same Podman defaults."""
    argv = ["run", "--rm"] + FLAGS + [podman_image, "sh", "-c", f"echo hi; {STATUS}; exit 6"]
    reference = podman("runc", *argv)
    ours = podman(satchel_runc, *argv)
    assert (ours.returncode, ours.stdout) == (reference.returncode, reference.stdout), \
        ours.stderr
    assert ours.returncode == 6 and "Seccomp:\t2" in ours.stdout


def test_podman_exec_and_stop(podman_image, satchel_runc):
    """podman run -d, exec (status back), stop (the container ends), rm."""
    name = "sr-" + uuid.uuid4().hex[:6]
    started = podman(satchel_runc, "run", "-d", "--name", name, *FLAGS, podman_image,
                     "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")
    assert started.returncode == 0, started.stderr
    try:
        out = podman(satchel_runc, "exec", name, "sh", "-c", "cat /proc/1/cmdline; exit 3")
        assert out.returncode == 3 and out.stdout.startswith("sh"), out.stderr
        stopped = podman(satchel_runc, "stop", "-t", "10", name)
        assert stopped.returncode == 0, stopped.stderr
        state = podman(satchel_runc, "inspect", "-f", "{{.State.Status}}", name)
        assert state.stdout.strip() == "exited"
    finally:
        podman(satchel_runc, "rm", "-f", name)
