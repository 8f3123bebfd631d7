"""The process model: exit statuses and signals pass through, and nothing outlives a container.

Without --pid satchel execs the payload: the pid satchel started with IS the user's process,
so its exit status and its death by a signal are the payload's own. With --pid a minimal init
runs the payload and the launcher returns exit N as N and death by signal S as 128+S.
After any end (exit, SIGTERM, SIGKILL of the payload, SIGKILL of the launcher mid-setup) no
squashfuse_ll, mount or loop device of the image may remain after a second.
"""

import os
import random
import signal
import time

import pytest

from support.fixtures_runtime import assert_nothing_left, kill_tree, leftovers


@pytest.mark.parametrize("code", [0, 1, 42])
@pytest.mark.parametrize("pid_ns", [False, True], ids=["exec", "pid"])
def test_exit_codes_pass_through(who, busybox_sif, code, pid_ns):
    args = ["exec"] + (["--pid"] if pid_ns else []) + [busybox_sif, "sh", "-c", f"exit {code}"]
    r = who.run(args)
    assert r.returncode == code, r.stderr
    assert r.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
@pytest.mark.parametrize("pid_ns", [False, True], ids=["exec", "pid"])
def test_death_by_signal_passes_through(who, busybox_sif, sig, pid_ns):
    args = ["exec"] + (["--pid"] if pid_ns else []) + [busybox_sif, "sh", "-c",
                                                     f"kill -{int(sig)} $$"]
    r = who.run(args)
    if pid_ns:
        assert r.returncode == 128 + sig, r.stderr
    else:  # the launcher became the payload: it dies of the signal itself
        assert r.returncode == -sig, r.stderr
    assert_nothing_left(busybox_sif)


def _start_trapping(who, image, out_dir, extra=()):
    flag = os.path.join(out_dir, "trapped")
    script = (f'trap "echo got-term > {flag}; exit 7" TERM; echo ready; '
              f'while :; do sleep 0.05; done')
    proc = who.popen(["exec", *extra, "-B", out_dir, image, "sh", "-c", script],
                     stdout=__import__("subprocess").PIPE)
    line = proc.stdout.readline()
    assert line == b"ready\n"
    return proc, flag


@pytest.mark.parametrize("pid_ns", [False, True], ids=["exec", "pid"])
def test_sigterm_to_satchel_reaches_payload(who, busybox_sif, pid_ns):
    out = who.tmp()
    proc, flag = _start_trapping(who, busybox_sif, out, ["--pid"] if pid_ns else [])
    try:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 7
        with open(flag) as fh:
            assert fh.read() == "got-term\n"
    finally:
        kill_tree(proc)
    assert_nothing_left(busybox_sif)


def test_payload_keeps_the_pid_satchel_started_with(who, busybox_sif):
    proc = who.popen(["exec", busybox_sif, "sh", "-c", "echo $$; cat /proc/self/stat; exit 0"],
                     stdout=__import__("subprocess").PIPE)
    out, _ = proc.communicate(timeout=30)
    lines = out.decode().split("\n")
    # inside shares the host pid namespace: $$ is the very pid Popen started
    assert int(lines[0]) == proc.pid
    assert lines[1].split()[3] == str(proc.pid)  # cat's parent is that same process


@pytest.mark.parametrize("pid_ns", [False, True], ids=["exec", "pid"])
def test_sigkill_of_payload_leaves_nothing(who, busybox_sif, pid_ns):
    extra = ["--pid"] if pid_ns else []
    proc = who.popen(["exec", *extra, busybox_sif, "sh", "-c", "echo ready; sleep 100"],
                     stdout=__import__("subprocess").PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        if pid_ns:  # kill the payload itself, inside the namespace (not the launcher)
            victim = _child_named(proc.pid, "sleep")
        else:
            victim = proc.pid
        os.kill(victim, signal.SIGKILL)
        proc.wait(10)
    finally:
        kill_tree(proc)
    assert_nothing_left(busybox_sif)


def _descendants(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(entry))
            except OSError:
                pass
    return kids + [k for kid in kids for k in _descendants(kid)]


def _child_named(pid, name):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for kid in _descendants(pid):
            try:
                with open(f"/proc/{kid}/comm") as fh:
                    if fh.read().strip() == name:
                        return kid
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"no {name} below {pid}")


def test_sigkill_of_launcher_with_pid_kills_the_container(who, busybox_sif):
    proc = who.popen(["exec", "--pid", busybox_sif, "sh", "-c", "echo ready; sleep 100"],
                     stdout=__import__("subprocess").PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        sleeper = _child_named(proc.pid, "sleep")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 1
        while os.path.exists(f"/proc/{sleeper}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{sleeper}") or _is_zombie(sleeper)
    finally:
        kill_tree(proc)
    assert_nothing_left(busybox_sif)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def test_sigkill_of_launcher_mid_setup_leaves_nothing(who, busybox_sif):
    rng = random.Random(1234)
    for _ in range(12):
        proc = who.popen(["exec", busybox_sif, "sleep", "5"])
        # the kill moment under test (not a wait): in the ~30-80 ms of setup, or just after
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert_nothing_left(busybox_sif)


def test_leftover_check_sees_a_running_container(who, busybox_sif):
    """The 'nothing left' checks above can fail: while a container runs, they see it."""
    proc = who.popen(["exec", busybox_sif, "sh", "-c", "echo ready; sleep 100"],
                     stdout=__import__("subprocess").PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        servers, mounts, loops = leftovers(busybox_sif)
        assert mounts
        if who.rootless:
            assert len(servers) == 1 and not loops
        else:
            assert len(loops) == 1 and not servers
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert_nothing_left(busybox_sif)


def test_squashfuse_program_mode(who, busybox_sif):
    """'squashfuse mode = program' execs squashfuse_ll instead of the built-in server."""
    from support.fixtures_runtime import live_processes
    conf = os.path.join(who.tmp(), "satchel.conf")
    with open(conf, "w") as fh:
        fh.write("squashfuse mode = program\n")
    os.chmod(conf, 0o644)
    proc = who.popen(["exec", busybox_sif, "sh", "-c", "echo ready; cat /etc/satchel-release; "
                      "sleep 100"], env={"SATCHEL_CONFIG": conf},
                     stdout=__import__("subprocess").PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        assert proc.stdout.readline() == b"satchel test image\n"
        servers = live_processes("squashfuse_ll", busybox_sif)
        if who.rootless:
            assert len(servers) == 1
            with open(f"/proc/{servers[0]}/cmdline", "rb") as fh:
                assert fh.read().split(b"\0")[0] == b"/usr/bin/squashfuse_ll"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert_nothing_left(busybox_sif)


@pytest.mark.parametrize("extra", [[], ["--writable-tmpfs"]], ids=["plain", "overlay"])
def test_payload_has_no_stray_children(who, busybox_sif, extra):
    """Every helper (FUSE server starters) is reaped before exec: the payload's only child is
    the one it starts itself."""
    r = who.run(["exec", *extra, busybox_sif, "sh", "-c",
                 "sleep 0.3; cat /proc/$$/task/$$/children; echo"])
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 1, r.stdout  # just the cat
