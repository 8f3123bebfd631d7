"""Builds by the real non-root user `satchel-test`: --fakeroot, the automatic fallback, ownership."""

import os
import signal
import stat
import subprocess
import time

import pytest

from support.fixtures_registry import sif_listing
from support.fixtures_runtime import wait_for_name_below
from support.fixtures_users import SATCHEL, run_satchel

from satchel.image import sif


def owners(image):
    """{path: (mode string, 'uid/gid')} of a SIF's file system."""
    return {path: tuple(entry.split(" ")) for path, entry in sif_listing(str(image)).items()}


def write_def(directory, text, user):
    path = os.path.join(directory, "image.def")
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, user.uid, user.gid)
    return path


OWNERSHIP_DEF = """Bootstrap: busybox
%post
    echo made-in-fakeroot > /etc/fakeroot-file
    mkdir -p /opt/owned && chown 1000:1001 /opt/owned
    echo "uid=$(id -u) gid=$(id -g)" > /ids
    mkdir -p /usr/local && cp /bin/busybox /usr/local/suid && chmod 4755 /usr/local/suid
%test
    test "$(id -u)" = 0
"""


def test_fakeroot_build_maps_root_to_0_and_subordinate_ids(test_user, user_tmp):
    deffile = write_def(user_tmp, OWNERSHIP_DEF, test_user)
    target = os.path.join(user_tmp, "fr.sif")
    r = run_satchel(["build", "--fakeroot", target, deffile], user=test_user)
    assert r.returncode == 0, r.stderr
    st = os.stat(target)
    assert st.st_uid == test_user.uid  # the image file belongs to the user on the host
    files = owners(target)
    assert files["/etc/fakeroot-file"][1] == "0/0"
    assert files["/bin/busybox"][1] == "0/0"
    assert files["/.singularity.d/labels.json"][1] == "0/0"
    assert files["/opt/owned"][1] == "1000/1001"  # through the subordinate id range
    assert files["/usr/local/suid"] == ("-rwsr-xr-x", "0/0")
    with sif.SIFFile.open(target) as f:
        offset = f.primary_partition().offset
    ids = subprocess.run(["unsquashfs", "-o", str(offset), "-cat", target, "ids"],
                         capture_output=True, text=True).stdout
    assert ids.strip() == "uid=0 gid=0"
    assert sorted(os.listdir(user_tmp)) == ["fr.sif", "image.def"]


def test_plain_user_build_falls_back_to_fakeroot(test_user, user_tmp):
    deffile = write_def(user_tmp, "Bootstrap: busybox\n%post\n    id -u > /uid\n", test_user)
    target = os.path.join(user_tmp, "plain.sif")
    r = run_satchel(["build", target, deffile], user=test_user)
    assert r.returncode == 0, r.stderr
    assert "INFO:    building as a non-root user: using --fakeroot" in r.stderr
    assert owners(target)["/uid"][1] == "0/0"


def test_busybox_sandbox_as_user(test_user, user_tmp):
    deffile = write_def(user_tmp, OWNERSHIP_DEF, test_user)
    target = os.path.join(user_tmp, "sb")
    r = run_satchel(["build", "--sandbox", target, deffile], user=test_user)
    assert r.returncode == 0, r.stderr
    # on the host the tree belongs to the user; the chown-ed dir to a subordinate id
    assert os.stat(os.path.join(target, "etc", "fakeroot-file")).st_uid == test_user.uid
    assert os.stat(os.path.join(target, "opt", "owned")).st_uid != test_user.uid


def test_root_mapped_namespace_without_subuid(test_user, user_tmp):
    deffile = write_def(user_tmp, "Bootstrap: busybox\n%post\n    touch /x\n    chown 1000 /x || echo chown-failed\n",
                        test_user)
    target = os.path.join(user_tmp, "rm.sif")
    r = run_satchel(["build", "--ignore-subuid", target, deffile], user=test_user)
    assert r.returncode == 0, r.stderr
    assert "root-mapped user namespace" in r.stderr
    assert "chown-failed" in r.stdout + r.stderr  # only one id is mapped
    assert owners(target)["/x"][1] == "0/0"


def test_fakeroot_failure_is_one_fatal_line_and_cleans_up(test_user, user_tmp):
    deffile = write_def(user_tmp, "Bootstrap: busybox\n%post\n    mkdir /d && chown 5:5 /d\n    exit 7\n",
                        test_user)
    r = run_satchel(["build", os.path.join(user_tmp, "f.sif"), deffile], user=test_user)
    assert r.returncode == 255
    fatal = [line for line in r.stderr.splitlines() if line.startswith("FATAL")]
    assert fatal == ["FATAL:   %post failed with exit status 7"]
    assert "Traceback" not in r.stderr
    # the work directory held files owned by subordinate ids: the namespace removed them
    assert sorted(os.listdir(user_tmp)) == ["image.def"]


def test_fakeroot_sigint_cleans_up(test_user, user_tmp):
    marker = f"satchel-frint-{os.getpid()}-{time.time_ns()}"
    deffile = write_def(user_tmp, "Bootstrap: busybox\n%post\n"
                        f"    (exec -a {marker} sleep 300) &\n"
                        "    mkdir /sub && chown 7:7 /sub && touch /started\n    sleep 300\n",
                        test_user)
    argv = test_user.argv([SATCHEL, "build", os.path.join(user_tmp, "i.sif"), deffile])
    proc = subprocess.Popen(argv, env=test_user.env(), cwd=user_tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if not wait_for_name_below(user_tmp, "started", 60):
        proc.kill()
        pytest.fail("%post never started")
    proc.send_signal(signal.SIGINT)  # setpriv execs satchel: this is satchel's pid
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert sorted(os.listdir(user_tmp)) == ["image.def"]
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


def test_user_cannot_write_target_in_root_directory(test_user, image_dir):
    directory = os.path.join(image_dir, "root-only")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    deffile = os.path.join(directory, "d.def")
    with open(deffile, "w") as fh:
        fh.write("Bootstrap: busybox\n")
    os.chmod(deffile, 0o644)
    r = run_satchel(["build", os.path.join(directory, "x.sif"), deffile], user=test_user)
    assert r.returncode == 255
    assert "cannot create a work directory" in r.stderr and "Permission denied" in r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(directory) == ["d.def"]
    hidden = os.path.join(image_dir, "private")
    os.makedirs(hidden, mode=0o700, exist_ok=True)
    r = run_satchel(["build", os.path.join(hidden, "sub", "x.sif"), deffile], user=test_user)
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_fakeroot_localimage_from_own_sandbox(test_user, user_tmp):
    """A user's own sandbox (files of subordinate ids included) as the base of a new image."""
    base_def = write_def(user_tmp, OWNERSHIP_DEF, test_user)
    base = os.path.join(user_tmp, "base")
    r = run_satchel(["build", "--sandbox", base, base_def], user=test_user)
    assert r.returncode == 0, r.stderr
    deffile = os.path.join(user_tmp, "l.def")
    with open(deffile, "w") as fh:
        fh.write(f"Bootstrap: localimage\nFrom: {base}\n%post\n    echo more >> /etc/fakeroot-file\n"
                 "    echo x > /opt/owned/new\n")
    os.chown(deffile, test_user.uid, test_user.gid)
    target = os.path.join(user_tmp, "l.sif")
    r = run_satchel(["build", target, deffile], user=test_user)
    assert r.returncode == 0, r.stderr
    files = owners(target)
    assert files["/opt/owned"][1] == "1000/1001"
    assert files["/etc/fakeroot-file"][1] == "0/0"
    assert open(os.path.join(base, "etc", "fakeroot-file")).read() == "made-in-fakeroot\n"
    assert not os.path.exists(os.path.join(base, "opt", "owned", "new"))


def test_files_never_write_outside_the_rootfs_as_user(test_user, user_tmp):
    """The non-root build (a user namespace, uid 0 inside) resolves %files destinations inside
    the image too: an image symlink to a host directory the user may write, or a `..`
    destination, lands in the image, never in that directory."""
    def own(path):
        os.chown(path, test_user.uid, test_user.gid)
        return path
    host_dir = os.path.join(user_tmp, "host-target")  # the user may write here
    os.mkdir(host_dir)
    own(host_dir)
    with open(os.path.join(user_tmp, "payload.txt"), "w") as fh:
        fh.write("payload")
    own(os.path.join(user_tmp, "payload.txt"))
    escape = "/.." * 20 + host_dir
    base_def = write_def(user_tmp, "Bootstrap: busybox\n%post\n"
                         f"    ln -s {escape} /opt\n"
                         "    mkdir -p /data && ln -s /../../../ /data/up\n", test_user)
    base = os.path.join(user_tmp, "base")
    r = run_satchel(["build", "--sandbox", base, base_def], user=test_user)
    assert r.returncode == 0, r.stderr
    name = os.path.basename(user_tmp)
    final_def = os.path.join(user_tmp, "final.def")
    with open(final_def, "w") as fh:
        fh.write(f"Bootstrap: localimage\nFrom: {base}\n%files\n"
                 "    payload.txt /opt/p1.txt\n"
                 f"    payload.txt /../../../../tmp/{name}/escaped-dotdot.txt\n"
                 f"    payload.txt /data/up{user_tmp}/escaped-up.txt\n")
    own(final_def)
    target = os.path.join(user_tmp, "final")
    r = run_satchel(["build", "--sandbox", target, final_def], user=test_user)
    assert r.returncode == 0, r.stderr
    assert os.listdir(host_dir) == []
    assert not os.path.exists(os.path.join(user_tmp, "escaped-dotdot.txt"))
    assert not os.path.exists(os.path.join(user_tmp, "escaped-up.txt"))
    inside = os.path.join(target, host_dir.lstrip("/"))
    with open(os.path.join(inside, "p1.txt")) as fh:
        assert fh.read() == "payload"
    with open(os.path.join(target, "tmp", name, "escaped-dotdot.txt")) as fh:
        assert fh.read() == "payload"
    with open(os.path.join(target, user_tmp.lstrip("/"), "escaped-up.txt")) as fh:
        assert fh.read() == "payload"


@pytest.fixture
def device_sif(user_tmp, tmp_path):
    """A SIF (built by root) whose file system holds a character device, a block device and a
    FIFO, like a SIF made by debootstrap (its /dev/null, /dev/console, ...)."""
    root = tmp_path / "with-devices"
    (root / "bin").mkdir(parents=True)
    (root / "dev").mkdir()
    subprocess.run(["cp", "/bin/busybox", str(root / "bin")], check=True)
    os.symlink("busybox", root / "bin" / "sh")
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev" / "loop-test", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.mkfifo(root / "fifo")
    path = os.path.join(user_tmp, "devices.sif")
    r = run_satchel(["build", path, str(root)])
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.parametrize("how", ["--fakeroot", "fallback", "--sandbox"])
def test_non_root_build_from_an_image_with_device_nodes(how, device_sif, test_user, user_tmp):
    """unsquashfs cannot mknod in a user namespace: the nodes are left out with one INFO line,
    everything else (the FIFO) is kept; a non-root build of such an image succeeds."""
    if how == "--sandbox":
        target = os.path.join(user_tmp, "sb")
        args = ["build", "--sandbox", target, device_sif]
    else:
        deffile = write_def(user_tmp, f"Bootstrap: localimage\nFrom: {device_sif}\n"
                            "%post\n    test -p /fifo && touch /post-ran\n", test_user)
        target = os.path.join(user_tmp, "derived.sif")
        args = ["build"] + (["--fakeroot"] if how == "--fakeroot" else []) + [target, deffile]
    r = run_satchel(args, user=test_user)
    assert r.returncode == 0, r.stderr
    info = [line for line in r.stderr.splitlines() if "device node" in line]
    assert len(info) == 1 and info[0].startswith("INFO:") and "left out 2 device nodes" in info[0]
    if how == "--sandbox":
        assert stat.S_ISFIFO(os.lstat(os.path.join(target, "fifo")).st_mode)
        assert not os.path.lexists(os.path.join(target, "dev", "null"))
    else:
        files = owners(target)
        assert "/post-ran" in files and files["/fifo"][0].startswith("p")
        assert "/dev/null" not in files
