"""What the container is made of, seen from inside and from the host, as satchel-test and as
root: the image mounted read-only, nosuid, nodev (squashfuse served by the caller's own process
outside the container, or a loop device limited to the partition), the host's /etc files, every
mount nosuid, stdio passed through byte for byte, signals forwarded under --pid, and
supplementary groups.
"""

import hashlib
import os
import signal
import subprocess

import pytest

from support.fixtures_runtime import (assert_nothing_left, kill_tree, live_processes,
                                      satchel_loop_devices, wait_until)
from support.fixtures_users import SATCHEL

from satchel.image import sif


def _mountinfo(who, image, *options) -> list[tuple[str, set, str, str]]:
    """(mount point, per-mount options, file system type, source) of every mount inside."""
    r = who.run(["exec", *options, image, "cat", "/proc/self/mountinfo"])
    assert r.returncode == 0, r.stderr
    mounts = []
    for line in r.stdout.splitlines():
        left, _, right = line.partition(" - ")
        fields, super_fields = left.split(), right.split()
        mounts.append((fields[4], set(fields[5].split(",")), super_fields[0], super_fields[1]))
    return mounts


def test_image_is_mounted_read_only_nosuid_nodev(who, busybox_sif):
    mounts = _mountinfo(who, busybox_sif)
    root = [m for m in mounts if m[0] == "/"]
    assert len(root) == 1, mounts
    _, options, fstype, source = root[0]
    assert {"ro", "nosuid", "nodev"} <= options, root
    if who.rootless:
        assert (fstype, source) == ("fuse.squashfuse", busybox_sif)
    else:
        assert fstype == "squashfs" and source.startswith("/dev/loop")
    # nothing in the container honours setuid bits, whatever it is; /sys is read-only
    assert all("nosuid" in m[1] for m in mounts), [m for m in mounts if "nosuid" not in m[1]]
    assert "ro" in next(m[1] for m in mounts if m[0] == "/sys")


def test_sandbox_is_bound_read_only_nosuid(who, busybox_sandbox):
    mounts = _mountinfo(who, busybox_sandbox)
    options = next(m[1] for m in mounts if m[0] == "/")
    assert {"ro", "nosuid"} <= options, mounts


@pytest.fixture(scope="module")
def sandbox_with_device(busybox_sandbox, image_dir):
    """A copy of the busybox sandbox holding a world-writable character device (1,3: the null
    device), as root keeps them when it builds a sandbox from an image that has some."""
    path = os.path.join(image_dir, "sandbox-with-device")
    subprocess.run(["cp", "-a", busybox_sandbox, path], check=True)
    os.mknod(os.path.join(path, "evil-null"), 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(os.path.join(path, "evil-null"), 0o666)
    return path


def test_sandbox_device_nodes_grant_nothing(who, sandbox_with_device):
    r = who.run(["exec", sandbox_with_device, "sh", "-c",
                 "echo x > /evil-null && echo DEVICE-WORKS; echo done"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n"


def test_host_etc_files_are_the_hosts(who, busybox_sif):
    r = who.run(["exec", busybox_sif, "sh", "-c",
                 "cat /etc/resolv.conf; echo ===; cat /etc/hosts; echo ===; "
                 "sha256sum /etc/localtime"])
    assert r.returncode == 0, r.stderr
    resolv, hosts, localtime = r.stdout.split("===\n")
    with open("/etc/resolv.conf") as fh:
        assert resolv == fh.read()
    with open("/etc/hosts") as fh:
        assert hosts == fh.read()
    with open("/etc/localtime", "rb") as fh:
        assert localtime.split()[0] == hashlib.sha256(fh.read()).hexdigest()


def _partition(image):
    with sif.SIFFile.open(image) as f:
        part = f.primary_partition()
        return part.offset, part.size


def test_what_serves_the_image_while_it_runs(who, busybox_sif):
    """Rootless: one squashfuse server, the caller's own unprivileged process in the host's
    mount namespace (a server inside the container's would keep it alive), no fusermount.
    Root: one read-only, auto-clearing loop device limited to the SquashFS partition."""
    proc = who.popen(["exec", busybox_sif, "sh", "-c", "echo ready; sleep 100"],
                     stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        servers = live_processes("squashfuse_ll", busybox_sif)
        loops = satchel_loop_devices(busybox_sif)
        if who.rootless:
            assert len(servers) == 1 and loops == [], (servers, loops)
            with open(f"/proc/{servers[0]}/status") as fh:
                status = dict(line.split(":", 1) for line in fh.read().splitlines())
            assert status["Uid"].split() == [str(who.uid)] * 4
            assert status["Gid"].split() == [str(who.gid)] * 4
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
            assert os.readlink(f"/proc/{servers[0]}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
            assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
            assert live_processes("fusermount") == live_processes("fusermount3") == []
        else:
            assert servers == [] and len(loops) == 1, (servers, loops)
            offset, size = _partition(busybox_sif)

            def read(name):
                with open(f"/sys/block/{loops[0]}/{name}") as fh:
                    return fh.read().strip()
            assert read("loop/offset") == str(offset)
            assert read("loop/sizelimit") == str(size)
            assert read("ro") == "1" and read("loop/autoclear") == "1"
    finally:
        kill_tree(proc)
    assert_nothing_left(busybox_sif)


def test_stdio_passes_through_untouched(who, busybox_sif):
    data = bytes(range(256)) * 4096 + b"no newline at the end"
    proc = who.popen(["exec", busybox_sif, "sh", "-c", "cat; printf 'to stderr\\n' >&2"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(data, timeout=60)
    assert proc.returncode == 0, err
    assert out == data
    assert err == b"to stderr\n"


def test_no_mount_home(who, busybox_sif):
    marker = os.path.join(who.home, f".satchel-nomount-home-{os.getpid()}")
    open(marker, "w").close()
    try:
        script = f"test -e {marker} && echo VISIBLE; echo done"
        r = who.run(["exec", busybox_sif, "sh", "-c", script], cwd="/")
        assert r.stdout == "VISIBLE\ndone\n", r.stderr  # the check can see it...
        r = who.run(["exec", "--no-mount", "home", busybox_sif, "sh", "-c", script], cwd="/")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "done\n"  # ...and --no-mount home hides it
    finally:
        os.unlink(marker)


# signals a shell can trap; 35 is a real-time one (SIGRTMIN + 1)
FORWARDED = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGALRM, signal.SIGWINCH, signal.SIGCONT, 35]


def test_pid_namespace_forwards_every_catchable_signal(who, busybox_sif):
    out_dir = who.tmp()
    got = os.path.join(out_dir, "got")
    traps = "".join(f"trap 'echo {int(s)} >> {got}' {int(s)}; " for s in FORWARDED)
    script = (traps + f"trap 'echo {int(signal.SIGTERM)} >> {got}; exit 7' TERM; "
              "echo ready; while :; do sleep 0.05; done")
    proc = who.popen(["exec", "--pid", "-B", out_dir, busybox_sif, "sh", "-c", script],
                     stdout=subprocess.PIPE)

    def received():
        try:
            with open(got) as fh:
                return [int(x) for x in fh.read().split()]
        except FileNotFoundError:
            return []
    try:
        assert proc.stdout.readline() == b"ready\n"
        for number, sig in enumerate(FORWARDED, 1):
            os.kill(proc.pid, sig)
            assert wait_until(lambda: len(received()) == number, 10), (sig, received())
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 7
    finally:
        kill_tree(proc)
    assert received() == [int(s) for s in FORWARDED] + [int(signal.SIGTERM)]
    assert_nothing_left(busybox_sif)


# -- supplementary groups (the test user has none of its own: add one for these runs) ------

EXTRA_GID = 100  # Debian's "users" group: present on every install, the test user not in it


def _with_extra_group(test_user, args, **kw):
    argv = ["setpriv", f"--reuid={test_user.uid}", f"--regid={test_user.gid}",
            f"--groups={test_user.gid},{EXTRA_GID}", "--"] + args
    return subprocess.run(argv, env=test_user.env(), cwd=test_user.home, capture_output=True,
                          text=True, timeout=60, **kw)


def test_supplementary_group_grants_access_inside(test_user, busybox_sif, user_tmp):
    secret = os.path.join(user_tmp, "group-only")
    with open(secret, "w") as fh:
        fh.write("for the group\n")
    os.chown(secret, 0, EXTRA_GID)
    os.chmod(secret, 0o640)
    outside = _with_extra_group(test_user, ["cat", secret])
    assert outside.stdout == "for the group\n", outside.stderr
    inside = _with_extra_group(test_user, [SATCHEL, "exec", busybox_sif, "cat", secret])
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == "for the group\n"
    # and without the group, neither
    r = subprocess.run(test_user.argv([SATCHEL, "exec", busybox_sif, "cat", secret]),
                       env=test_user.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Permission denied" in r.stderr


@pytest.mark.xfail(strict=True, reason="GAP (audit): an unprivileged user namespace can map only "
                   "the caller's own gid, so supplementary groups show as 65534 inside")
def test_supplementary_groups_inside_equal_outside(test_user, busybox_sif):
    outside = _with_extra_group(test_user, ["/bin/busybox", "id", "-G"])
    inside = _with_extra_group(test_user, [SATCHEL, "exec", busybox_sif, "id", "-G"])
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == outside.stdout
