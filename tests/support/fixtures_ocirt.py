"""OCI bundles from the host's static busybox, the satchel-runc drop-in, and a runner that runs
one bundle under a given runc-compatible runtime (runc, crun, satchel-runc)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "echo", "ls", "id", "true", "false", "sleep", "hostname", "ps",
           "mount", "grep", "touch", "mkdir", "stat", "readlink", "pwd", "wc", "head", "kill",
           "env", "sed", "test", "tty")


def make_rootfs(path: str) -> str:
    for sub in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    for name in APPLETS:
        os.symlink("busybox", os.path.join(path, "bin", name))
    with open(os.path.join(path, "etc", "passwd"), "w") as fh:
        fh.write("root:x:0:0:root:/root:/bin/sh\n")
    return path


def default_config(rootless: bool = False) -> dict:
    """`runc spec` (or `runc spec --rootless`): the reference's own defaults."""
    tmp = tempfile.mkdtemp()
    try:
        subprocess.run(["runc", "spec"] + (["--rootless"] if rootless else []), cwd=tmp,
                       check=True)
        with open(os.path.join(tmp, "config.json")) as fh:
            config = json.load(fh)
    finally:
        shutil.rmtree(tmp)
    config["process"]["terminal"] = False
    return config


@pytest.fixture(scope="session")
def oci_rootfs():
    if not os.path.exists(BUSYBOX) or not shutil.which("runc"):
        pytest.skip("busybox-static and runc are needed for the OCI runtime tests")
    top = tempfile.mkdtemp(prefix="satchel-ocirt-")
    os.chmod(top, 0o755)
    yield make_rootfs(os.path.join(top, "rootfs"))
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def satchel_runc(satchel_bin):
    """DIR/satchel-runc written by `satchel dropin --name satchel-runc DIR`."""
    top = tempfile.mkdtemp(prefix="satchel-runc-bin-")
    os.chmod(top, 0o755)
    subprocess.run([satchel_bin, "dropin", "--name", "satchel-runc", top], check=True,
                   capture_output=True)
    yield os.path.join(top, "satchel-runc")
    shutil.rmtree(top, ignore_errors=True)


# crun 1.8 (Debian 12) refuses a host whose cgroup2 hierarchy is mounted beside v1 ("cgroups
# in hybrid mode not supported"); in a mount namespace without that mount it sees a plain v1
# host and runs. The wrapper is a runtime with crun's command line, for matrix and bench.
CRUN_WRAPPER = """#!/bin/sh
exec unshare --mount --propagation private sh -c \\
  'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' crun "$@"
"""


def start_containerd(top: str):
    """containerd 1.6 without systemd (the CRI plugin off), its root, state and socket in
    `top`: (the daemon, the `ctr` argv prefix for it). Used by the containerd tests and
    bench/oci_runtime_bench.py; RuntimeError if it does not answer within 30 s."""
    config = os.path.join(top, "config.toml")
    with open(config, "w") as fh:
        fh.write('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    sock = os.path.join(top, "containerd.sock")
    log = open(os.path.join(top, "containerd.log"), "w")
    daemon = subprocess.Popen(["containerd", "--config", config, "--root", top + "/root",
                               "--state", top + "/state", "--address", sock],
                              stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"containerd did not start (log: {top}/containerd.log)")
        time.sleep(0.05)  # polling for the socket, bounded by the deadline
    return daemon, ["ctr", "-a", sock]


def write_crun_wrapper(directory: str) -> str | None:
    """DIR/crun-v1: crun as above; None where crun or unshare is missing."""
    if not shutil.which("crun") or not shutil.which("unshare"):
        return None
    path = os.path.join(directory, "crun-v1")
    with open(path, "w") as fh:
        fh.write(CRUN_WRAPPER)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def crun_runtime():
    """crun as a reference runtime (root), or a skip saying why there is none."""
    if os.getuid() != 0:
        pytest.skip("crun is compared as root only")
    top = tempfile.mkdtemp(prefix="satchel-crun-bin-")
    os.chmod(top, 0o755)
    path = write_crun_wrapper(top)
    if path is None:
        shutil.rmtree(top)
        pytest.skip("crun is not installed (apt-get install crun)")
    yield path
    shutil.rmtree(top, ignore_errors=True)


def make_bundle(top: str, rootfs: str, config: dict) -> str:
    """TOP/bundle-N with config.json; the root is the shared rootfs (read-only runs) or a
    copy when the config makes it writable."""
    bundle = os.path.join(top, "bundle-" + uuid.uuid4().hex[:8])
    os.makedirs(bundle)
    config = copy.deepcopy(config)
    config["root"]["path"] = rootfs
    with open(os.path.join(bundle, "config.json"), "w") as fh:
        json.dump(config, fh)
    return bundle


def run_bundle(runtime: str, bundle: str, root: str, user=None, timeout: float = 30):
    """`RUNTIME --root ROOT run ID` in the bundle: (exit status, stdout, stderr)."""
    cid = "t" + uuid.uuid4().hex[:10]
    argv = [runtime, "--root", root, "run", cid]
    env = None
    if user is not None:
        argv = user.argv(argv)
        env = user.env({"XDG_RUNTIME_DIR": root})
    proc = subprocess.run(argv, cwd=bundle, capture_output=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")
