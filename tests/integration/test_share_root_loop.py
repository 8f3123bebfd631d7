"""Root containers of one image share one read-only loop device (runtime/loopdev.py), so they
share the kernel's SquashFS superblock and its caches; the device goes away with the last one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from support.fixtures_users import SATCHEL

# prints the root mount's source device, then holds the container open until stdin closes
HOLD = "grep -m1 ' - squashfs ' /proc/self/mountinfo | sed 's/.* - squashfs //'; cat"


@pytest.fixture
def private_sif(busybox_sif):
    """A copy of the busybox SIF no other test mounts (its loop devices are this test's)."""
    directory = tempfile.mkdtemp(prefix="satchel-loop-", dir="/tmp")
    path = os.path.join(directory, "loop.sif")
    shutil.copyfile(busybox_sif, path)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def _loops_backed_by(path: str) -> list[str]:
    st = os.stat(path)
    found = []
    for name in os.listdir("/sys/block"):
        backing = f"/sys/block/{name}/loop/backing_file"
        try:
            with open(backing) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.removesuffix(" (deleted)") == path or text == f"{st.st_dev}:{st.st_ino}":
            found.append(name)
    return found


def _start(sif: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([SATCHEL, "exec", sif, "sh", "-c", HOLD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"no root mount line: {proc.communicate()[1].decode()[-2000:]}")
    return proc, line.split()[0]


def _finish(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]


def test_two_root_containers_share_one_loop_device_and_none_is_left(private_sif):
    """Apptainer's shared loop devices: the second launch of an image mounts the first one's
    loop device (same backing file, offset and size, read-only), and autoclear removes it once
    both are gone."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    first, first_device = _start(private_sif)
    try:
        second, second_device = _start(private_sif)
        try:
            assert first_device.startswith("/dev/loop")
            assert second_device == first_device
            assert _loops_backed_by(private_sif) == [first_device.rsplit("/", 1)[1]]
        finally:
            _finish(second)
        assert _loops_backed_by(private_sif), "the first container still uses the device"
    finally:
        _finish(first)
    deadline = time.monotonic() + 10  # autoclear runs as the last mount goes away
    while _loops_backed_by(private_sif) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loops_backed_by(private_sif) == []
