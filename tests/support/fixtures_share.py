"""Helpers for the tests of shared image mounts (runtime/share.py, issue 14): containers driven
through their stdin/stdout as a given user, and the FUSE servers of one image.

Other sessions may run containers of their own at the same time, so servers are counted for
a test's private image only: processes named squashfuse_ll holding that file open.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from support.fixtures_users import SATCHEL

# prints the device of the container's root, waits for a line, then reads directories of the
# image (readdir always reaches the server) and says "ok"
SCRIPT = ("stat -c %d /; read line; ls -R /bin /etc /usr >/dev/null && "
          "cat /etc/satchel-release >/dev/null && echo ok")
TIMEOUT = 120


@pytest.fixture
def share_sif(busybox_sif):
    """A copy of the busybox SIF that only this test runs (world-readable)."""
    directory = tempfile.mkdtemp(prefix="satchel-share-", dir="/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "share.sif")
    shutil.copyfile(busybox_sif, path)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def servers(image: str) -> list[int]:
    """Live FUSE servers (built-in or program) that have `image` open."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() != "squashfuse_ll":
                    continue
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == image:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


def wait_no_servers(image: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while servers(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers(image) == [], "a FUSE server outlived every container of its image"


class Container:
    """One `satchel exec IMAGE sh -c SCRIPT` as a user, driven through its stdin/stdout."""

    def __init__(self, user, image: str, extra=(), env=None):
        self.proc = subprocess.Popen(
            user.argv([SATCHEL, "exec", *extra, image, "sh", "-c", SCRIPT]), env=user.env(env),
            cwd="/tmp", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.dev = None

    def read_line(self, deadline: float) -> str:
        fd = self.proc.stdout.fileno()
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                raise AssertionError("no answer from the container: " + self.errors())
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"the container ended ({self.proc.wait()}): "
                                     + self.errors())
            data += chunk
        return data.decode().strip()

    def ready(self, deadline: float) -> str:
        self.dev = self.read_line(deadline)
        return self.dev

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def finish(self, deadline: float) -> None:
        assert self.read_line(deadline) == "ok"
        assert self.proc.wait(timeout=max(1, deadline - time.monotonic())) == 0, self.errors()

    def errors(self) -> str:
        try:
            return self.proc.stderr.read1(8000).decode(errors="replace")
        except (OSError, ValueError):
            return ""


def start_all(user, image: str, count: int, extra=()) -> list[Container]:
    containers = [Container(user, image, extra) for _ in range(count)]
    deadline = time.monotonic() + TIMEOUT
    for container in containers:
        container.ready(deadline)
    return containers


def finish_all(containers) -> None:
    for container in containers:
        container.go()
    deadline = time.monotonic() + TIMEOUT
    for container in containers:
        container.finish(deadline)
