"""Apptainer's action flags that satchel implements, end to end, as satchel-test and as root
(the table of all flags, with refusals, is tests/unit/test_apptainer_flags.py)."""

import os

from support.fixtures_runtime import assert_nothing_left, wait_until


def test_cwd_is_pwd(who, busybox_sif):
    """--cwd (Apptainer's current name) sets the working directory, as --pwd does."""
    r = who.run(["exec", "--cwd", "/etc", busybox_sif, "pwd"])
    assert (r.returncode, r.stdout) == (0, "/etc\n"), r.stderr


def test_scratch_is_empty_writable_and_private(who, busybox_sif):
    """-S DIR: an empty directory the caller can write, gone with the container."""
    script = "ls -A /scr | wc -l; echo x > /scr/f && cat /scr/f; stat -c %u /scr"
    r = who.run(["exec", "-S", "/scr", busybox_sif, "sh", "-c", script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "x", str(who.uid)]
    r = who.run(["exec", "--scratch", "/scr", busybox_sif, "ls", "-A", "/scr"])
    assert r.stdout == "", "a scratch directory kept data from the previous container"


def test_scratch_under_workdir(who, busybox_sif):
    """-S with -W: the scratch directory lives in WORKDIR/scratch/ on the host."""
    work = who.tmp()
    r = who.run(["exec", "-W", work, "-S", "/data/scr", busybox_sif, "sh", "-c",
                 "echo kept > /data/scr/out"])
    assert r.returncode == 0, r.stderr
    with open(os.path.join(work, "scratch", "data_scr", "out")) as fh:
        assert fh.read() == "kept\n"


def test_compat_means_containall_and_writable_tmpfs(who, busybox_sif):
    """--compat: a private PID namespace, clean environment, empty /tmp, writable root."""
    script = "echo $$; echo ${SECRET:-unset}; ls -A /tmp | wc -l; touch /new && echo writable"
    r = who.run(["exec", "--compat", busybox_sif, "sh", "-c", script], env={"SECRET": "x"})
    assert r.returncode == 0, r.stderr
    pid, *rest = r.stdout.split()
    assert int(pid) <= 2, "not in a new PID namespace (its init is 1, the payload 2)"
    assert rest == ["unset", "0", "writable"]


def test_no_pid_overrides_containall(who, busybox_sif):
    """--no-pid: no PID namespace even with --containall."""
    r = who.run(["exec", "-C", "--no-pid", busybox_sif, "sh", "-c", "echo $$"])
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 2


def test_dns_writes_resolv_conf(who, busybox_sif):
    """--dns A,B: the container's /etc/resolv.conf names those servers, read-only."""
    r = who.run(["exec", "--dns", "192.0.2.1,2001:db8::1", busybox_sif, "sh", "-c",
                 "cat /etc/resolv.conf; echo x >> /etc/resolv.conf 2>/dev/null || echo ro"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "nameserver 192.0.2.1\nnameserver 2001:db8::1\nro\n"
    r = who.run(["exec", "--dns", "1.1.1.1;rm", busybox_sif, "true"])
    assert r.returncode == 255 and "FATAL" in r.stderr and "--dns" in r.stderr


def test_drop_caps_accepted_all_dropped(who, busybox_sif):
    """--drop-caps LIST is accepted; every capability is dropped anyway."""
    r = who.run(["exec", "--drop-caps", "CAP_NET_RAW", busybox_sif, "grep", "CapEff",
                 "/proc/self/status"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == "0000000000000000"


def test_allow_setuid_refused_with_reason(who, busybox_sif):
    """--allow-setuid: one FATAL line, which says root only to a non-root user."""
    r = who.run(["exec", "--allow-setuid", busybox_sif, "true"])
    assert r.returncode == 255
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:") and "--allow-setuid" in lines[0]
    assert ("root only" in lines[0]) == who.rootless


def test_unsquash_runs_from_temporary_sandbox(who, busybox_sif):
    """--unsquash: the image runs from a sandbox under --tmpdir, removed when it exits."""
    tmpdir = who.tmp()
    r = who.run(["exec", "--unsquash", "--tmpdir", tmpdir, busybox_sif, "sh", "-c",
                 "cat /etc/satchel-release /proc/self/mountinfo"])
    assert r.returncode == 0, r.stderr
    first, *mounts = r.stdout.splitlines()
    assert first == "satchel test image"
    root = [line.split()[3] for line in mounts if line.split()[4] == "/"]
    assert root and root[0].startswith(f"{tmpdir}/satchel-unsquash-"), mounts
    # the reaper holds stderr until it is done, and the run's output has been read to EOF
    assert os.listdir(tmpdir) == []
    assert_nothing_left(busybox_sif)


def test_unsquash_cleans_up_after_sigkill(who, busybox_sif):
    """--unsquash: a SIGKILLed container's sandbox is removed as well."""
    import signal
    import subprocess

    tmpdir = who.tmp()
    proc = who.popen(["exec", "--unsquash", "--tmpdir", tmpdir, busybox_sif, "sleep", "60"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: any(os.scandir(tmpdir)), 20)
        assert wait_until(lambda: _runs_sleep(proc.pid), 20)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert wait_until(lambda: os.listdir(tmpdir) == [], 10), os.listdir(tmpdir)


def _runs_sleep(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().startswith(b"sleep")
    except OSError:
        return False


def test_security_refused_with_reason(who, busybox_sif):
    """--security: a seccomp profile that cannot be read is named (profiles that work:
    test_runtime_fusemount_seccomp.py); AppArmor/SELinux refused where the host has neither
    (this host), each in one FATAL line."""
    for item, needle in (("seccomp:/none.json", "/none.json"),
                         ("apparmor:unconfined", "no apparmor" if not os.path.exists(
                             "/sys/kernel/security/apparmor") else "not supported"),
                         ("selinux:x", "no selinux" if not os.path.exists("/sys/fs/selinux")
                          else "not supported")):
        r = who.run(["exec", "--security", item, busybox_sif, "true"])
        assert r.returncode == 255 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("FATAL:") and needle in r.stderr
