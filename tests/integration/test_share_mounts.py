"""Concurrent rootless containers of one image share one image mount and one FUSE server
(runtime/share.py, issue 14), as the real non-root user; nothing is left when they are gone.
Servers are counted for each test's private image only (support/fixtures_share.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from support.fixtures_share import TIMEOUT, Container, finish_all, servers, start_all, \
    wait_no_servers
from support.fixtures_users import SATCHEL, ensure_user


def test_sixteen_concurrent_launches_share_one_server_and_leave_none(test_user, share_sif):
    """16 containers started at once: one mount (one device) and exactly one FUSE server
    while they run; each still reads the image; no server after the last one ends."""
    containers = start_all(test_user, share_sif, 16)
    try:
        assert len({c.dev for c in containers}) == 1, [c.dev for c in containers]
        assert len(servers(share_sif)) == 1
    finally:
        finish_all(containers)
    wait_no_servers(share_sif)


def test_sigkill_of_containers_leaves_the_others_running(test_user, share_sif):
    """kill -9 of the first container (whose launch started the server) and of one in the
    middle: the others go on reading the image and finish normally; nothing is left."""
    containers = start_all(test_user, share_sif, 6)
    assert len({c.dev for c in containers}) == 1
    killed = [containers[0], containers[3]]
    for container in killed:
        container.proc.send_signal(signal.SIGKILL)
        container.proc.wait(timeout=30)
    rest = [c for c in containers if c not in killed]
    late = Container(test_user, share_sif)  # a launch after the kills joins the others
    assert late.ready(time.monotonic() + TIMEOUT) == rest[0].dev
    finish_all(rest + [late])
    wait_no_servers(share_sif)


def test_other_user_and_other_image_never_share(test_user, share_sif):
    """The same user's second container of the image shares its mount; another user's
    container of that image, and a copy of the image (another file), get mounts of their
    own."""
    other_user = ensure_user("satchel-test2")
    copy = share_sif[:-4] + "-copy.sif"
    shutil.copyfile(share_sif, copy)
    os.chmod(copy, 0o644)
    started = start_all(test_user, share_sif, 1)
    try:
        for user, image, extra in ((test_user, share_sif, ()), (other_user, share_sif, ()),
                                   (test_user, copy, ()), (test_user, share_sif,
                                                           ("--no-share",))):
            started += start_all(user, image, 1, extra)
        first, same, other, copied, unshared = started
        assert same.dev == first.dev
        assert other.dev != first.dev and copied.dev != first.dev
        assert unshared.dev not in (first.dev, other.dev, copied.dev)
        assert len(servers(share_sif)) == 3  # the user's shared one, the other user's,
        assert len(servers(copy)) == 1         # --no-share's; the copy's own
    finally:
        finish_all(started)
    wait_no_servers(share_sif)
    wait_no_servers(copy)


def test_containers_of_different_job_steps_never_share(test_user, share_sif):
    """A batch system ends a job step by killing what it started, the FUSE server of the
    step's first container included: containers of another step (or job, or node) must not
    depend on it. Same user, same image, other SLURM_STEP_ID: a mount of its own; the same
    step: shared."""
    step0 = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "n1"}
    step1 = dict(step0, SLURM_STEP_ID="1")
    started = [Container(test_user, share_sif, env=env) for env in (step0, step0, step1)]
    try:
        deadline = time.monotonic() + TIMEOUT
        for container in started:
            container.ready(deadline)
        first, same_step, other_step = started
        assert same_step.dev == first.dev
        assert other_step.dev != first.dev
        assert len(servers(share_sif)) == 2
    finally:
        finish_all(started)
    wait_no_servers(share_sif)


def test_a_launch_during_the_last_exit_still_starts(test_user, share_sif):
    """The only container ends while new launches come (each round at another moment of its
    exit, and once right after a SIGKILL): each new one starts, on the dying mount never."""
    for delay in (0.0, 0.005, 0.02, 0.05, "kill"):
        last, peer = start_all(test_user, share_sif, 2)
        assert peer.dev == last.dev  # shared while both run...
        finish_all([peer])           # ...then `last` is the only one, and ends
        if delay == "kill":
            last.proc.send_signal(signal.SIGKILL)
        else:
            last.go()
            time.sleep(delay)
        new = Container(test_user, share_sif)
        new.ready(time.monotonic() + TIMEOUT)
        if delay != "kill":
            last.finish(time.monotonic() + TIMEOUT)
        last.proc.wait(timeout=30)
        finish_all([new])
    wait_no_servers(share_sif)


# share.likely_joined as a launch calls it first thing (cli/commands/action.py), in a process
# that then stays (its lock, if it took one, stays held) until its stdin closes
LOOK = ("import os, sys\nfrom satchel.runtime import share\n"
        "print(share.likely_joined(sys.argv[1], os.getuid(), os.environ), flush=True)\n"
        "sys.stdin.read()\n")


def test_launches_starting_together_fork_one_early_server(test_user, share_sif):
    """16 launches of one image start at once (an MPI job's ranks on a node): no container
    runs it yet, so each would fork an early FUSE server and cancel it on joining the first
    one's mount (~40 ms of CPU and ~100 MiB at N=16). The first to look takes the image's lock
    there and then; the 15 others find it held and fork none: exactly one is the first."""
    looks = [subprocess.Popen(test_user.argv([sys.executable, "-c", LOOK, share_sif]),
                              env=test_user.env(), cwd="/tmp", stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(16)]
    try:
        answers = [look.stdout.readline().strip() for look in looks]
    finally:
        for look in looks:
            look.stdin.close()
            look.wait(timeout=30)
    assert sorted(answers) == [b"False"] + [b"True"] * 15, \
        [answers, looks[0].stderr.read().decode(errors="replace")]
    first, joiner = start_all(test_user, share_sif, 2)  # the lock went with its holder
    assert joiner.dev == first.dev
    finish_all([first, joiner])
    wait_no_servers(share_sif)


def test_a_launch_that_shares_nothing_lets_the_others_go(test_user, share_sif):
    """A first launch whose plan shares no mount (--writable-tmpfs: an overlay of its own),
    kept running with --pid (its supervisor, forked before the payload, stays): the lock its
    start took is dropped before its container runs, so a plain launch of the image starts
    at once, not after the first one's exit or the WAIT_S bound (30 s)."""
    holder = Container(test_user, share_sif, ("--writable-tmpfs", "--pid"))
    holder.ready(time.monotonic() + TIMEOUT)
    try:
        plain = Container(test_user, share_sif)
        plain.ready(time.monotonic() + 15)
        finish_all([plain])
    finally:
        finish_all([holder])
    wait_no_servers(share_sif)


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return sum(int(line.split()[1]) for line in fh if "ctxt_switches" in line)


def test_opening_files_of_the_image_costs_the_server_no_request(test_user, share_sif):
    """Every container sharing the mount opens and closes hundreds of files (a Python start:
    ~115 files, ~16 directories); each open was a request to the one single-threaded server
    and each close another. The server answers the first OPEN and OPENDIR with ENOSYS, so the
    kernel opens by itself from then on (sqfs_server.Handlers): 200 rounds of opening a file
    and a directory of the image, and reading them, leave the server idle (before: ~800
    requests, each a wake-up of the server)."""
    loop = ("i=0; while [ $i -lt 200 ]; do read x < /etc/satchel-release; "
            "ls /bin > /dev/null; i=$((i+1)); done")
    proc = subprocess.Popen(
        test_user.argv([SATCHEL, "exec", share_sif, "sh", "-c",
                        f"{loop}; echo ready; read line; {loop}; echo ok"]),
        env=test_user.env(), cwd="/tmp", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read1(4000)
        [server] = servers(share_sif)
        before = _switches(server)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.stdout.readline() == b"ok\n", proc.stderr.read1(4000)
        requests = _switches(server) - before
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert requests < 40, f"the server woke {requests} times for 400 opens"
    wait_no_servers(share_sif)


def test_a_container_whose_root_is_an_underlay_copy_is_not_joined(test_user, share_sif):
    """A bind onto a path the image lacks at its top makes an underlay copy over the root:
    that container's root is no longer the image mount, so it is not recorded for sharing (a
    later launch would otherwise clone the copy as its image): the next launch mounts the
    image itself, with a server of its own."""
    started = start_all(test_user, share_sif, 1, ("-B", "/tmp:/satchel-not-in-the-image"))
    try:
        started += start_all(test_user, share_sif, 2)
        covered, first, second = started
        assert first.dev != covered.dev and second.dev == first.dev
        assert len(servers(share_sif)) == 2
    finally:
        finish_all(started)
    wait_no_servers(share_sif)


def test_records_of_images_no_container_runs_go_with_the_last_server(test_user, share_sif):
    """When a shared server's mount is gone it removes the user's records that no live
    container holds (two files per image and scope would otherwise pile up, one scope per
    batch job), and keeps those a live container holds."""
    from satchel.runtime import share

    first = start_all(test_user, share_sif, 1)  # makes the user's directory if need be
    directory = f"/tmp/satchel-{test_user.uid}"
    me = share.start_time(os.getpid())
    files = {"stale-probe.members": "999999999 1 2 0\n", "stale-probe.lock": "",
             "live-probe.members": f"{os.getpid()} {me} 2 0\n", "live-probe.lock": ""}
    for name, text in files.items():
        path = os.path.join(directory, name)
        with open(path, "w") as fh:
            fh.write(text)
        os.chown(path, test_user.uid, test_user.gid)
        os.chmod(path, 0o600)
    try:
        finish_all(first)
        wait_no_servers(share_sif)
        left = set(os.listdir(directory))
        assert not {"stale-probe.members", "stale-probe.lock"} & left, sorted(left)
        assert {"live-probe.members", "live-probe.lock"} <= left
        st = os.stat(share_sif)  # this image's own record went too (share.image_key)
        own = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}-"
        assert not [name for name in left if name.startswith(own)], sorted(left)
    finally:
        for name in files:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
