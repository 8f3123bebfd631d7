"""Who the payload is: same ids inside as outside, no privilege, files owned by the caller.

Every test runs as the real non-root user satchel-test (user namespace + squashfuse) and as
root (loop device + kernel SquashFS): the `who` fixture.
"""

import os
import stat

from support.fixtures_runtime import assert_nothing_left


def _host_id(who) -> str:
    import subprocess
    # the same program inside and outside (coreutils and busybox print groups differently)
    argv = who.user.argv(["/bin/busybox", "id"]) if who.user else ["/bin/busybox", "id"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_id_inside_equals_id_outside(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "id"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _host_id(who)
    assert_nothing_left(busybox_sif)


def test_sandbox_id_inside_equals_id_outside(who, busybox_sandbox):
    r = who.run(["exec", busybox_sandbox, "id"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _host_id(who)


def test_file_written_in_home_belongs_to_caller(who, busybox_sif):
    name = f".satchel-rt-{os.getpid()}"
    path = os.path.join(who.home, name)
    try:
        r = who.run(["exec", busybox_sif, "sh", "-c", f'echo hi > "$HOME/{name}"'])
        assert r.returncode == 0, r.stderr
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (who.uid, who.gid)
        with open(path) as fh:
            assert fh.read() == "hi\n"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_setuid_root_program_grants_nothing(who, rt_images):
    suid = "/usr/local/suid/id"
    r = who.run(["exec", rt_images.suid, "sh", "-c", f"ls -l {suid}; {suid} -u; {suid} -g"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].startswith("-rwsr-xr-x"), r.stdout  # the bit is there...
    assert lines[1:3] == [str(who.uid), str(who.gid)]  # ...and grants nothing


def test_capabilities_all_zero_inside(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "grep", "^Cap", "/proc/self/status"])
    assert r.returncode == 0, r.stderr
    caps = dict(line.split(":\t") for line in r.stdout.strip().split("\n"))
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert all(int(v, 16) == 0 for v in caps.values()), caps
    r = who.run(["exec", busybox_sif, "grep", "NoNewPrivs", "/proc/self/status"])
    assert r.stdout.split() == ["NoNewPrivs:", "1"]


def test_root_only_host_file_stays_unreadable(who, busybox_sif, test_user):
    directory = who.tmp()
    secret = os.path.join(directory, "secret")
    with open(secret, "w") as fh:
        fh.write("top secret\n")
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o600)
    r = who.run(["exec", "-B", f"{secret}:/secret", busybox_sif, "cat", "/secret"])
    if who.rootless:
        assert r.returncode != 0
        assert "top secret" not in r.stdout
        assert "Permission denied" in r.stderr
    else:  # root reads it outside too: the bind must not change that
        assert r.stdout == "top secret\n"
    # read-only for root too when asked
    r = who.run(["exec", "-B", f"{secret}:/secret:ro", busybox_sif, "sh", "-c",
                 "echo x >> /secret"])
    assert r.returncode != 0
    with open(secret) as fh:
        assert fh.read() == "top secret\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_contain_hides_host_home_and_tmp(who, busybox_sif):
    marker_home = os.path.join(who.home, f".satchel-contain-{os.getpid()}")
    tmpdir = who.tmp()
    marker_tmp = os.path.join(tmpdir, "marker")
    open(marker_home, "w").close()
    open(marker_tmp, "w").close()
    try:
        script = f'ls -a "$HOME"; ls /tmp; test -e {marker_home} && echo HOME-LEAK; ' \
                 f'test -e {marker_tmp} && echo TMP-LEAK; echo done'
        r = who.run(["exec", busybox_sif, "sh", "-c", script])
        assert "HOME-LEAK" in r.stdout and "TMP-LEAK" in r.stdout  # visible without --contain
        r = who.run(["exec", "--contain", busybox_sif, "sh", "-c", script])
        assert r.returncode == 0, r.stderr
        assert "LEAK" not in r.stdout
        assert r.stdout.strip().endswith("done")
        # the contained home and /tmp are private and writable
        r = who.run(["exec", "-c", busybox_sif, "sh", "-c",
                     'touch "$HOME/x" /tmp/y && echo ok'])
        assert r.stdout.strip() == "ok", r.stderr
    finally:
        os.unlink(marker_home)
