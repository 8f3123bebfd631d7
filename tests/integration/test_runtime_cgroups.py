"""Resource limits (--memory, --pids-limit, --cpus, --apply-cgroups) through cgroups, as root
on this host's cgroup v1; non-root on v1 is refused in one line. Nothing may be left in the
cgroup tree after the container exits or is SIGKILLed (the reaper, runtime/reaper.py)."""

import glob
import os
import signal
import subprocess

import pytest

from support.fixtures_runtime import wait_until
from support.fixtures_users import SATCHEL, run_satchel

V1 = os.path.isdir("/sys/fs/cgroup/memory") and not os.path.exists("/sys/fs/cgroup/cgroup.procs")


def _all() -> set[str]:
    """satchel-<pid> cgroups anywhere in the tree (every hierarchy, any depth)."""
    return set(glob.glob("/sys/fs/cgroup/**/satchel-[0-9]*", recursive=True))


_BEFORE: set[str] = set()


def _ours() -> list[str]:
    """The satchel-<pid> cgroups that appeared since this test began: what earlier runs on the
    machine left (a killed test run, a killed reaper) is not this test's to judge."""
    return sorted(_all() - _BEFORE)


def _root(args, **kw):
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run([SATCHEL] + args, env=env,
                          capture_output=True, text=True, **kw)


@pytest.fixture(autouse=True)
def _as_root():
    if os.geteuid() != 0:
        pytest.skip("resource limits are tested as root")
    _BEFORE.clear()
    _BEFORE.update(_all())


def test_memory_limit_kills_allocation(busybox_sif):
    """--memory 64M: a 100 MiB buffer gets the container OOM-killed (137); 10 MiB runs."""
    r = _root(["exec", "--memory", "64M", busybox_sif, "dd", "if=/dev/zero", "of=/dev/null",
               "bs=100M", "count=1"], timeout=60)
    assert r.returncode in (137, -9), (r.returncode, r.stderr)
    r = _root(["exec", "--memory", "64M", busybox_sif, "dd", "if=/dev/zero", "of=/dev/null",
               "bs=10M", "count=1"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert _ours() == []


def test_pids_limit_stops_fork_bomb(busybox_sif):
    """--pids-limit 20: a loop starting 40 sleeps hits the limit; at most 20 tasks exist."""
    script = ("( n=0; while [ $n -lt 40 ]; do sleep 30 & n=$((n+1)); done ) 2>/dev/null; "
              "p=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup); "
              "cat /sys/fs/cgroup/pids$p/pids.max /sys/fs/cgroup/pids$p/pids.current "
              "/sys/fs/cgroup/pids$p/pids.events")
    r = _root(["exec", "--pids-limit", "20", busybox_sif, "sh", "-c", script], timeout=60)
    assert r.returncode == 0, r.stderr
    limit, current, events = r.stdout.splitlines()
    assert limit == "20" and int(current) <= 20
    assert int(events.split()[1]) >= 1, "no fork was refused"
    # the 30 s sleeps left behind are killed with the cgroup (stderr read to EOF = reaper done)
    assert _ours() == []


def test_cpus_half_holds(busybox_sif):
    """--cpus 0.5: a busy loop gets at most about half a CPU over 2 s (CPU time / wall
    <= 0.55) under a CFS quota of 50 ms per 100 ms. (On a loaded host the loop may get less
    than its quota and never be throttled: cpu.stat is printed, not asserted.)"""
    script = ("while :; do :; done & pid=$!; s=$(cut -d' ' -f1 /proc/uptime); sleep 2; "
              "read -r line < /proc/$pid/stat; e=$(cut -d' ' -f1 /proc/uptime); kill $pid; "
              "p=$(sed -n 's/^[0-9]*:cpu://p' /proc/self/cgroup); echo $s $e $line; "
              "cat /sys/fs/cgroup/cpu$p/cpu.cfs_quota_us; grep nr_throttled "
              "/sys/fs/cgroup/cpu$p/cpu.stat")
    r = _root(["exec", "--cpus", "0.5", busybox_sif, "busybox", "sh", "-c", script],
              timeout=60)
    assert r.returncode == 0, r.stderr
    stat, quota, throttled = r.stdout.splitlines()
    fields = stat.split()
    ratio = (int(fields[15]) + int(fields[16])) / 100 / (float(fields[1]) - float(fields[0]))
    print(f"--cpus 0.5: CPU time / wall = {ratio:.3f}, {throttled}")
    assert 0.05 < ratio <= 0.55
    assert quota == "50000"
    assert _ours() == []


def test_apply_cgroups_toml(busybox_sif, tmp_path):
    """--apply-cgroups FILE.toml (Apptainer's format, OCI LinuxResources)."""
    toml = tmp_path / "limits.toml"
    toml.write_text("[memory]\nlimit = 67108864\n[pids]\nlimit = 30\n")
    script = ("m=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup); "
              "p=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup); "
              "cat /sys/fs/cgroup/memory$m/memory.limit_in_bytes /sys/fs/cgroup/pids$p/pids.max")
    r = _root(["exec", "--apply-cgroups", str(toml), busybox_sif, "sh", "-c", script],
              timeout=60)
    assert (r.returncode, r.stdout) == (0, "67108864\n30\n"), r.stderr
    toml.write_text("[memory\n")
    r = _root(["exec", "--apply-cgroups", str(toml), busybox_sif, "true"])
    assert r.returncode == 255 and r.stderr.startswith("FATAL:") and "TOML" in r.stderr


def test_nested_in_callers_cgroup(busybox_sif):
    """The container's cgroup is below the caller's own (as a Slurm step's would be)."""
    parent = "/sys/fs/cgroup/memory/satchel-test-parent"
    os.makedirs(parent, exist_ok=True)
    try:
        script = f"echo $$ > {parent}/cgroup.procs && exec {SATCHEL} " \
                 f"exec --memory 64M {busybox_sif} cat /proc/self/cgroup"
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        line = [l for l in r.stdout.splitlines() if ":memory:" in l][0]
        assert line.split(":", 2)[2].startswith("/satchel-test-parent/satchel-"), line
    finally:
        assert wait_until(lambda: not glob.glob(parent + "/satchel-*"), 10)
        assert wait_until(lambda: _rmdir(parent), 10)  # the reaper ran in it, until it exited


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def test_nothing_left_after_sigkill(busybox_sif):
    """SIGKILL of the container: the reaper kills what is left and removes the cgroups."""
    proc = subprocess.Popen([SATCHEL, "exec", "--memory", "64M",
                             "--pids-limit", "50", busybox_sif, "sh", "-c",
                             "sleep 60 & sleep 60"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(_ours()) == 2, 20), _ours()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert wait_until(lambda: _ours() == [], 10), _ours()


@pytest.mark.skipif(not V1, reason="this host has cgroup v2")
def test_rootless_on_v1_refused_in_one_line(test_user, busybox_sif):
    r = run_satchel(["exec", "--memory", "64M", busybox_sif, "true"], user=test_user)
    assert r.returncode == 255
    assert r.stderr.count("\n") == 1 and "need root or cgroup v2" in r.stderr
