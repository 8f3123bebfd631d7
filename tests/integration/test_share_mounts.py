"""Concurrent rootless containers of one image share one image mount and one FUSE server
(runtime/share.py, issue 14), as the real non-root user; nothing is left when they are gone.

Other sessions may run containers of their own at the same time, so servers are counted for
this test's private image only: processes named squashfuse_ll holding that file open.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from support.fixtures_users import SATCHEL, ensure_user

# prints the device of the container's root, waits for a line, then reads directories of the
# image (readdir always reaches the server) and says "ok"
SCRIPT = ("stat -c %d /; read line; ls -R /bin /etc /usr >/dev/null && "
          "cat /etc/satchel-release >/dev/null && echo ok")
TIMEOUT = 120


@pytest.fixture
def private_sif(busybox_sif):
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

    def __init__(self, user, image: str, extra=()):
        self.proc = subprocess.Popen(
            user.argv([SATCHEL, "exec", *extra, image, "sh", "-c", SCRIPT]), env=user.env(),
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


def test_sixteen_concurrent_launches_share_one_server_and_leave_none(test_user, private_sif):
    """16 containers started at once: one mount (one device) and exactly one FUSE server
    while they run; each still reads the image; no server after the last one ends."""
    containers = start_all(test_user, private_sif, 16)
    try:
        assert len({c.dev for c in containers}) == 1, [c.dev for c in containers]
        assert len(servers(private_sif)) == 1
    finally:
        finish_all(containers)
    wait_no_servers(private_sif)


def test_sigkill_of_containers_leaves_the_others_running(test_user, private_sif):
    """kill -9 of the first container (whose launch started the server) and of one in the
    middle: the others go on reading the image and finish normally; nothing is left."""
    containers = start_all(test_user, private_sif, 6)
    assert len({c.dev for c in containers}) == 1
    killed = [containers[0], containers[3]]
    for container in killed:
        container.proc.send_signal(signal.SIGKILL)
        container.proc.wait(timeout=30)
    rest = [c for c in containers if c not in killed]
    late = Container(test_user, private_sif)  # a launch after the kills joins the others
    assert late.ready(time.monotonic() + TIMEOUT) == rest[0].dev
    finish_all(rest + [late])
    wait_no_servers(private_sif)


def test_other_user_and_other_image_never_share(test_user, private_sif):
    """The same user's second container of the image shares its mount; another user's
    container of that image, and a copy of the image (another file), get mounts of their
    own."""
    other_user = ensure_user("satchel-test2")
    copy = private_sif[:-4] + "-copy.sif"
    shutil.copyfile(private_sif, copy)
    os.chmod(copy, 0o644)
    started = start_all(test_user, private_sif, 1)
    try:
        for user, image, extra in ((test_user, private_sif, ()), (other_user, private_sif, ()),
                                   (test_user, copy, ()), (test_user, private_sif,
                                                           ("--no-share",))):
            started += start_all(user, image, 1, extra)
        first, same, other, copied, unshared = started
        assert same.dev == first.dev
        assert other.dev != first.dev and copied.dev != first.dev
        assert unshared.dev not in (first.dev, other.dev, copied.dev)
        assert len(servers(private_sif)) == 3  # the user's shared one, the other user's,
        assert len(servers(copy)) == 1         # --no-share's; the copy's own
    finally:
        finish_all(started)
    wait_no_servers(private_sif)
    wait_no_servers(copy)


def test_a_launch_during_the_last_exit_still_starts(test_user, private_sif):
    """The only container ends while new launches come (each round at another moment of its
    exit, and once right after a SIGKILL): each new one starts, on the dying mount never."""
    for delay in (0.0, 0.005, 0.02, 0.05, "kill"):
        last, peer = start_all(test_user, private_sif, 2)
        assert peer.dev == last.dev  # shared while both run...
        finish_all([peer])           # ...then `last` is the only one, and ends
        if delay == "kill":
            last.proc.send_signal(signal.SIGKILL)
        else:
            last.go()
            time.sleep(delay)
        new = Container(test_user, private_sif)
        new.ready(time.monotonic() + TIMEOUT)
        if delay != "kill":
            last.finish(time.monotonic() + TIMEOUT)
        last.proc.wait(timeout=30)
        finish_all([new])
    wait_no_servers(private_sif)
