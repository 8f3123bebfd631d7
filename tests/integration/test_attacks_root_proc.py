"""Attacks through the kernel's files: each test names the attack and the promise it checks.

The payload is the attacker: as uid 0 in a root container, with every capability dropped, it
still owns /proc/sys/* by file mode and could change the host's kernel settings
(`echo '|/tmp/x' > /proc/sys/kernel/core_pattern` is the classic step to host root). The promise
(docs/SECURITY.md) is runc's and crun's: /proc/sys, /proc/sysrq-trigger, /proc/irq, /proc/bus,
/proc/fs are read-only and /proc/kcore, /proc/keys, /proc/timer_list, /sys/firmware... are
masked, in every mode: root and non-root (`who`), with and without --pid, in instances too.
No test changes a host setting: the one write writes back the value the setting already has.
"""

import os
import uuid

import pytest

from satchel.runtime.plan import MASKED_PATHS, READONLY_PATHS

PID_MODES = [pytest.param((), id="host-pid"), pytest.param(("--pid",), id="pid")]
SYSCTL = "/proc/sys/vm/swappiness"  # global, harmless, writable by uid 0 by file mode alone


def present(paths):
    return [path for path in paths if os.path.lexists(path)]


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def read_only_mounts(mountinfo: str) -> set:
    """Mount points whose per-mount options say ro (lines that are not mountinfo skipped)."""
    found = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " in line and "ro" in fields[5].split(","):
            found.add(fields[4])
    return found


@pytest.mark.parametrize("options", PID_MODES)
def test_payload_cannot_change_a_host_sysctl(who, busybox_sif, options):
    """Attack: the payload writes a host sysctl under /proc/sys (as root: by file mode alone).
    Promise: the write fails (read-only file system) and the host's value stays."""
    before = read(SYSCTL)
    script = (f"v=$(cat {SYSCTL}) && echo \"$v\" > {SYSCTL} && echo WROTE; "
              "cat /proc/self/mountinfo")
    r = who.run(["exec", *options, busybox_sif, "sh", "-c", script])
    assert read(SYSCTL) == before
    assert r.returncode == 0, r.stderr
    assert "WROTE" not in r.stdout
    assert "Read-only file system" in r.stderr, r.stderr
    assert "/proc/sys" in read_only_mounts(r.stdout)


def writable_sample(path: str) -> str | None:
    """path itself if a file, else the first file below it (two levels) with its owner's write
    bit: a file root may open for writing by mode alone."""
    if not os.path.isdir(path):
        return path
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                if os.stat(full).st_mode & 0o200:
                    return full
            except OSError:
                continue
        if dirpath.count("/") > path.count("/"):
            dirnames[:] = []
    return None


@pytest.mark.parametrize("options", PID_MODES)
def test_read_only_kernel_paths_are_not_writable(who, busybox_sif, options):
    """Attack: the payload opens /proc/sysrq-trigger, /proc/irq/N/smp_affinity, /proc/sys/...
    for writing. Promise: each of runc's read-only paths that the host has is a read-only
    mount, and opening a file below it for writing fails (opened for append only: nothing is
    ever written to these files here, not even on a runtime without the protection)."""
    paths = present(READONLY_PATHS)
    assert "/proc/sys" in paths
    samples = [s for s in map(writable_sample, paths) if s]
    checks = "".join(f"( exec 3>>{s} ) 2>/dev/null && echo WRITABLE {s};" for s in samples)
    r = who.run(["exec", *options, busybox_sif, "sh", "-c",
                 checks + " cat /proc/self/mountinfo"])
    assert r.returncode == 0, r.stderr
    assert "WRITABLE" not in r.stdout, samples
    assert set(paths) <= read_only_mounts(r.stdout)


@pytest.mark.parametrize("options", PID_MODES)
def test_masked_kernel_paths_show_nothing(who, busybox_sif, options):
    """Attack: the payload reads host state: /proc/timer_list, /proc/keys, /proc/kcore,
    /sys/firmware (ACPI tables)... Promise: files read empty, directories list empty."""
    paths = present(MASKED_PATHS)
    assert "/proc/timer_list" in paths  # this one the host shows to everyone: masking shows
    script = "".join(f"echo \"{p} $(ls -A {p} | wc -l)\";" if os.path.isdir(p)
                     else f"echo \"{p} $(cat {p} | wc -c)\";" for p in paths)
    r = who.run(["exec", *options, busybox_sif, "sh", "-c", script])
    assert r.returncode == 0, r.stderr
    sizes = dict(line.split() for line in r.stdout.splitlines())
    assert sizes == {path: "0" for path in paths}, r.stderr


@pytest.mark.parametrize("options", PID_MODES)
def test_instance_protects_kernel_paths(who, busybox_sif, options):
    """Attack: the same writes and reads from a command joined to an instance.
    Promise: the instance's mount namespace holds the same read-only and masked paths."""
    name = "proc" + uuid.uuid4().hex[:8]
    r = who.run(["instance", "start", *options, busybox_sif, name])
    assert r.returncode == 0, r.stderr
    try:
        r = who.run(["exec", f"instance://{name}", "sh", "-c",
                     f"( exec 3>>{SYSCTL} ) 2>/dev/null && echo WRITABLE; "
                     "cat /proc/timer_list 2>/dev/null | wc -c; cat /proc/self/mountinfo"])
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:1] == ["0"], (r.stdout, r.stderr)
        assert "WRITABLE" not in r.stdout
        assert {"/proc/sys", "/proc/timer_list"} <= read_only_mounts(r.stdout)
    finally:
        who.run(["instance", "stop", "-F", name])
