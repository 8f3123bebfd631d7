"""Writable containers as the real non-root user: --overlay with ext3 images (fuse2fs outside
the container) and SIF overlay partitions, --writable, --fakeroot at run time, one writer at
a time, data safety after SIGKILL, ENOSPC, and one FATAL line for bad input.

The image is a SIF of mount points and merged-/usr links only; the host's /usr is bound over
its /usr (as bench/pfs_bench does), so python3 and pip are the host's."""

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from support.fixtures_runtime import live_processes, wait_until
from support.fixtures_users import SATCHEL, run_satchel

from satchel.runtime import imagelock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIP = ["python3", "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir",
       "--disable-pip-version-check", "--target", "/opt/site"]
IMPORT = "import sys; sys.path.insert(0, '/opt/site'); import tinypkg; print(tinypkg.VALUE)"


@pytest.fixture(scope="module")
def usr_sif(image_dir):
    """A SIF whose /usr is empty (bound from the host) and a wheel beside it."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import pfs_bench
    work = os.path.join(image_dir, "overlay-rt")
    os.makedirs(os.path.join(work, "empty"))
    path = os.path.join(work, "usr.sif")
    pfs_bench.build_sif(os.path.join(work, "empty"), os.path.join(work, "rootfs"), path)
    shutil.rmtree(os.path.join(work, "rootfs"))
    os.chmod(path, 0o644)
    os.chmod(_wheel(work), 0o644)
    os.chmod(work, 0o755)
    return path


def _wheel(directory: str) -> str:
    """tinypkg-1.0-py3-none-any.whl, written by hand (no network, no build backend)."""
    files = {"tinypkg/__init__.py": b"VALUE = 42\n",
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\n"
                                                b"Version: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                            b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    files["tinypkg-1.0.dist-info/RECORD"] = (record + "tinypkg-1.0.dist-info/RECORD,,\n").encode()
    path = os.path.join(directory, "tinypkg-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _wheel_of(usr_sif: str) -> str:
    return os.path.join(os.path.dirname(usr_sif), "tinypkg-1.0-py3-none-any.whl")


def _exec(user, *args, **kw):
    """satchel exec with the host's /usr bound (the SIF has none of its own)."""
    return run_satchel(["exec", "-B", "/usr", *args], user=user, **kw)


def _fsck(image: str, offset: int = 0) -> subprocess.CompletedProcess:
    name = image + (f"?offset={offset}" if offset else "")
    return subprocess.run(["/sbin/e2fsck", "-fn", name], capture_output=True, text=True)


def _released(image: str, timeout: float = 10) -> bool:
    """Whether the image's write lock is free (its fuse2fs finished) within timeout."""
    def free() -> bool:
        fd = os.open(image, os.O_RDWR)
        try:
            return imagelock.try_lock(fd, 0, 0, True)
        finally:
            os.close(fd)
    return wait_until(free, timeout)


def _fatal_only(r) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines and lines[0].startswith("FATAL:   "), r.stderr
    assert all(line.startswith("         hint:") for line in lines[1:]), r.stderr
    assert "Traceback" not in r.stderr


def _no_servers(user) -> bool:
    return not [pid for name in ("fuse2fs", "fuse-overlayfs")
                for pid in live_processes(name) if os.stat(f"/proc/{pid}").st_uid == user.uid]


def test_pip_install_into_overlay_image_then_import(test_user, user_tmp, usr_sif):
    """A non-root user creates an overlay, pip-installs a local wheel into it, imports it at
    the next run (read-only)."""
    image = os.path.join(user_tmp, "overlay.img")
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], user=test_user,
                check=True)
    r = _exec(test_user, "--overlay", image, usr_sif, *PIP, _wheel_of(usr_sif))
    assert r.returncode == 0, r.stderr
    r = _exec(test_user, "--overlay", image + ":ro", usr_sif, "python3", "-c", IMPORT)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
    assert _released(image) and _fsck(image).returncode == 0
    assert wait_until(lambda: _no_servers(test_user), 5)


def test_pip_install_into_sif_overlay_partition_with_writable(test_user, user_tmp, usr_sif):
    """The same into a SIF's own overlay partition with --writable; the next run (without
    --writable) sees it read-only."""
    image = os.path.join(user_tmp, "image.sif")
    shutil.copy(usr_sif, image)
    os.chown(image, test_user.uid, test_user.gid)
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], user=test_user,
                check=True)
    r = _exec(test_user, "--writable", image, *PIP, _wheel_of(usr_sif))
    assert r.returncode == 0, r.stderr
    r = _exec(test_user, image, "python3", "-c", IMPORT)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
    r = _exec(test_user, image, "touch", "/opt/site/x")
    assert r.returncode != 0  # without --writable the partition is read-only


@pytest.mark.parametrize("subuid", [True, False], ids=["subuid", "root-mapped"])
def test_fakeroot_writable_sandbox_owners_on_host(test_user, user_tmp, busybox_sandbox,
                                                  subuid):
    """--fakeroot --writable on the user's sandbox: files root made belong to the user on the
    host, a chown to 42 lands in the user's subordinate range; without a range (here
    --ignore-subuid) root alone is mapped, with one INFO line."""
    sandbox = os.path.join(user_tmp, "sandbox")
    shutil.copytree(busybox_sandbox, sandbox, symlinks=True)
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", sandbox], check=True)
    script = "id -u; touch /rootfile; mkdir -p /opt && touch /opt/f42 && chown 42:42 /opt/f42"
    extra = [] if subuid else ["--ignore-subuid"]
    r = _exec(test_user, "--fakeroot", "--writable", *extra, sandbox, "sh", "-c", script)
    assert r.stdout.splitlines()[:1] == ["0"], r.stderr
    assert os.stat(os.path.join(sandbox, "rootfile")).st_uid == test_user.uid
    if subuid:
        assert r.returncode == 0, r.stderr
        start = int(open("/etc/subuid").read().split(f"{test_user.name}:")[1].split(":")[0])
        assert os.stat(os.path.join(sandbox, "opt/f42")).st_uid == start + 41
    else:
        assert r.returncode != 0  # chown to an unmapped id fails in a root-mapped namespace
        assert r.stderr.count("INFO:") == 1 and "root-mapped" in r.stderr



NO_RANGE_USER = "satchel-nosub"
DPKG = ["env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "dpkg", "-i"]


@pytest.fixture(scope="module")
def no_range_user():
    """A real non-root user without an /etc/subuid or /etc/subgid range (a system account:
    useradd gives those none)."""
    from support.fixtures_users import User
    import pwd
    try:
        pwd.getpwnam(NO_RANGE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/sh",
                        NO_RANGE_USER], check=True)
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path) as fh:
            if any(line.startswith(NO_RANGE_USER + ":") for line in fh):
                pytest.skip(f"{NO_RANGE_USER} has a range in {path}")
    return User(NO_RANGE_USER)


def _deb(directory: str, name: str, daemon_file: bool) -> str:
    """NAME.deb, built by dpkg-deb: /usr/share/NAME/rootfile owned root:root (and, with
    daemon_file, /usr/share/NAME/daemonfile owned 1:1, Debian's daemon), and a postinst that
    writes /var/lib/NAME/postinst-ran (chowned to 1:1 with daemon_file)."""
    tree = os.path.join(directory, name)
    os.makedirs(os.path.join(tree, "DEBIAN"))
    os.makedirs(os.path.join(tree, "usr", "share", name))
    with open(os.path.join(tree, "DEBIAN", "control"), "w") as fh:
        fh.write(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                 "Maintainer: satchel tests <tests@example.org>\nDescription: test package\n")
    chown = f"chown 1:1 /var/lib/{name}/postinst-ran\n" if daemon_file else ""
    with open(os.path.join(tree, "DEBIAN", "postinst"), "w") as fh:
        fh.write(f"#!/bin/sh\nset -e\nmkdir -p /var/lib/{name}\n"
                 f"echo ran > /var/lib/{name}/postinst-ran\n{chown}")
    os.chmod(os.path.join(tree, "DEBIAN", "postinst"), 0o755)
    for f, owner in (("rootfile", 0), ("daemonfile", 1))[:2 if daemon_file else 1]:
        path = os.path.join(tree, "usr", "share", name, f)
        with open(path, "w") as fh:
            fh.write(f + "\n")
        os.chown(path, owner, owner)
    for root, dirs, _ in os.walk(tree):
        for d in dirs:
            os.chown(os.path.join(root, d), 0, 0)
    deb = os.path.join(directory, name + ".deb")
    subprocess.run(["dpkg-deb", "--build", tree, deb], check=True, capture_output=True)
    os.chmod(deb, 0o644)
    return deb


def _debian_sandbox(debian_sif: str, directory: str, user) -> str:
    """The debootstrap image as a sandbox owned by the user (as `build --sandbox` by the user
    leaves it): root of a --fakeroot container owns every file in it."""
    sandbox = os.path.join(directory, "debian")
    run_satchel(["build", "--sandbox", sandbox, debian_sif], check=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", sandbox], check=True)
    return sandbox


def test_fakeroot_writable_sandbox_dpkg_install_subuid(test_user, debian_sif):
    """--fakeroot --writable on the user's Debian sandbox, with a subuid range: `dpkg -i` of
    a local .deb works; on the host its root:root file belongs to the user (container root
    is the caller, as in Apptainer), its 1:1 file and what the postinst chowned to 1:1 to the
    first subordinate id, and dpkg's database has it at the next run."""
    import tempfile
    work = tempfile.mkdtemp(prefix="satchel-dpkg-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        sandbox = _debian_sandbox(debian_sif, work, test_user)
        deb = _deb(work, "tinydeb", daemon_file=True)
        r = run_satchel(["exec", "--fakeroot", "--writable", sandbox, *DPKG, deb],
                        user=test_user)
        assert r.returncode == 0, r.stderr
        first = int(open("/etc/subuid").read().split(f"{test_user.name}:")[1].split(":")[0])
        owners = {f: os.stat(os.path.join(sandbox, f)).st_uid for f in
                  ("usr/share/tinydeb/rootfile", "usr/share/tinydeb/daemonfile",
                   "var/lib/tinydeb/postinst-ran")}
        assert owners == {"usr/share/tinydeb/rootfile": test_user.uid,
                          "usr/share/tinydeb/daemonfile": first,
                          "var/lib/tinydeb/postinst-ran": first}, owners
        r = run_satchel(["exec", sandbox, "dpkg-query", "-W", "-f=${Status}", "tinydeb"],
                        user=test_user)
        assert r.stdout == "install ok installed", r.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_fakeroot_writable_sandbox_dpkg_install_without_subuid_range(no_range_user,
                                                                      debian_sif):
    """The same for a real user without a subuid range: root alone is mapped (one INFO
    line). dpkg installs a package whose files are all root's (they belong to the user on
    the host). It cannot install one holding a file of another owner: dpkg chowns each file
    to its owner in the archive, and chown to an id the namespace does not map fails
    (EINVAL, "error setting ownership"): one id is all such a namespace has."""
    import tempfile
    work = tempfile.mkdtemp(prefix="satchel-dpkg-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        sandbox = _debian_sandbox(debian_sif, work, no_range_user)
        r = run_satchel(["exec", "--fakeroot", "--writable", sandbox, *DPKG,
                         _deb(work, "tinyroot", daemon_file=False)], user=no_range_user)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("INFO:") == 1 and "root-mapped" in r.stderr, r.stderr
        for f in ("usr/share/tinyroot/rootfile", "var/lib/tinyroot/postinst-ran"):
            assert os.stat(os.path.join(sandbox, f)).st_uid == no_range_user.uid, f
        r = run_satchel(["exec", "--fakeroot", "--writable", sandbox, *DPKG,
                         _deb(work, "tinydeb", daemon_file=True)], user=no_range_user)
        assert r.returncode != 0 and "error setting ownership" in r.stderr, r.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)

def _start_writer(user, image, usr_sif, marker, script):
    return subprocess.Popen(
        user.argv([SATCHEL, "exec", "--overlay", image, "-B", "/usr", usr_sif, "python3", "-c",
                   script + f"\nopen({marker!r}, 'w').close()\nimport time\ntime.sleep(60)"]),
        env=user.env(), cwd=user.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


_WRITE = ("import os\n"
          "fd = os.open('/opt/site/kept', os.O_WRONLY | os.O_CREAT, 0o644)\n"
          "os.write(fd, b'fsynced'); os.fsync(fd); os.close(fd)\n"
          "os.makedirs('/opt/site/many')\n"
          "for i in range(300):\n"
          "    open(f'/opt/site/many/{i}', 'w').write(str(i) * 100)\n")


@pytest.mark.parametrize("victim", ["container", "fuse2fs", "fuse-overlayfs"])
def test_sigkill_leaves_a_clean_image_with_fsynced_data(test_user, user_tmp, usr_sif, victim):
    """SIGKILL of the container, of fuse2fs or of fuse-overlayfs: the image passes e2fsck -fn
    once its lock is free, and what was fsynced is there at the next run."""
    image = os.path.join(user_tmp, "overlay.img")
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], user=test_user,
                check=True)
    marker = os.path.join(user_tmp, "ready")
    proc = _start_writer(test_user, image, usr_sif, marker, _WRITE)
    try:
        assert wait_until(lambda: os.path.exists(marker), 30), proc.stderr.read1()
        if victim == "container":
            proc.kill()
        else:
            pids = [p for p in live_processes(victim) if os.stat(f"/proc/{p}").st_uid ==
                    test_user.uid]
            assert pids
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _released(image), "fuse2fs still holds the image"
    check = _fsck(image)
    assert check.returncode == 0, check.stdout
    r = _exec(test_user, "--overlay", image + ":ro", usr_sif, "cat", "/opt/site/kept")
    assert r.returncode == 0 and r.stdout == "fsynced", r.stderr


def test_one_writer_at_a_time_readers_share(test_user, user_tmp, usr_sif):
    """A second writable use of an image in use is refused in one line; :ro users share."""
    image = os.path.join(user_tmp, "overlay.img")
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], user=test_user,
                check=True)
    marker = os.path.join(user_tmp, "ready")
    proc = _start_writer(test_user, image, usr_sif, marker, "")
    try:
        assert wait_until(lambda: os.path.exists(marker), 30), proc.stderr.read1()
        r = _exec(test_user, "--overlay", image, usr_sif, "true")
        _fatal_only(r)
        assert "in use by another container" in r.stderr
    finally:
        proc.kill()
        proc.wait()
    assert _released(image)
    readers = [subprocess.Popen(test_user.argv([SATCHEL, "exec", "-B", "/usr", "--overlay",
                                                image + ":ro", usr_sif, "sh", "-c",
                                                f"touch {marker}{i}; sleep 3"]),
                                env=test_user.env(), cwd=test_user.home,
                                stderr=subprocess.PIPE) for i in range(2)]
    for reader in readers:
        assert reader.wait(30) == 0, reader.stderr.read()


def test_full_overlay_gives_enospc_inside(test_user, user_tmp, usr_sif):
    image = os.path.join(user_tmp, "small.img")
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], user=test_user,
                check=True)
    r = _exec(test_user, "--overlay", image, usr_sif, "sh", "-c",
              "dd if=/dev/zero of=/opt/site/big bs=1M count=100; echo rc=$?")
    assert "No space left on device" in r.stderr and "rc=1" in r.stdout, r.stderr
    assert _released(image) and _fsck(image).returncode == 0


def _leftovers(directory: str) -> list[str]:
    """What still uses the files under `directory`: a process holding one open (fuse2fs holds
    its image), a mount naming one in any mount namespace (/proc/*/mountinfo: overlayfs'
    lowerdir, a squashfuse or fuse2fs source), a loop device backed by one."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(directory + "/"):
                    found.append(f"pid {pid} holds {fd}")
            with open(f"/proc/{pid}/mountinfo") as fh:
                found += [f"pid {pid} mount: {line}" for line in fh if directory in line]
        except OSError:
            continue
    for loop in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{loop}/loop/backing_file") as fh:
                if fh.read().startswith(directory + "/"):
                    found.append(f"{loop} backed by a file of {directory}")
        except OSError:
            continue
    return found


def _bad_inputs(user, user_tmp, usr_sif, sandbox):
    """(args, expected message) for each bad input of issue 12, made in user_tmp."""
    text = os.path.join(user_tmp, "notes.txt")
    with open(text, "w") as fh:
        fh.write("x" * 4096)
    corrupt = os.path.join(user_tmp, "corrupt.sif")
    shutil.copy(usr_sif, corrupt)
    run_satchel(["overlay", "create", corrupt], check=True)
    from satchel.image import overlay, sif
    with sif.SIFFile.open(corrupt) as f:
        offset, _ = overlay.sif_overlay(f)
    with open(corrupt, "r+b") as fh:  # wipe the ext3 superblock
        fh.seek(offset + 1024)
        fh.write(bytes(1024))
    damaged = os.path.join(user_tmp, "damaged.img")  # a good superblock, bad group descriptors:
    run_satchel(["overlay", "create", damaged], check=True)  # passes the check, fails to mount
    with open(damaged, "r+b") as fh:
        fh.seek(2048)  # 1 KiB blocks: the descriptors follow the superblock (block 1)
        fh.write(b"\xff" * 1024)
    cases = [
        (["--overlay", text, usr_sif], "not an ext3 file system"),
        ([corrupt], "overlay partition of"),
        (["--overlay", corrupt + ":ro", usr_sif], "is corrupt"),
        (["--overlay", damaged, usr_sif], f"overlay image {damaged}"),  # named, not a mount
    ]
    if user is not None:
        theirs = os.path.join(user_tmp, "root.img")
        run_satchel(["overlay", "create", theirs], check=True)  # root's, mode 0600
        os.chmod(theirs, 0o644)
        cases += [(["--overlay", theirs, usr_sif], "not writable by you"),
                  (["--writable", sandbox], "is not writable by you")]
    for path in (text, corrupt, damaged):
        os.chmod(path, 0o644)
        if user is not None:
            os.chown(path, user.uid, user.gid)
    return cases


@pytest.mark.parametrize("who", ["satchel-test", "root"])
def test_bad_overlays_are_one_fatal_line_and_leave_nothing(test_user, user_tmp, usr_sif,
                                                           busybox_sandbox, who):
    """Not ext3; another user's image without :ro; --writable on a sandbox the caller cannot
    write; a SIF whose overlay partition is corrupt; an image whose superblock is sound but
    whose group descriptors are not (fuse2fs, or the kernel as root, refuses to mount it):
    one FATAL line, and after each nothing left: no server, no process holding the files,
    no mount naming them in any mount namespace, no loop device."""
    user = test_user if who == "satchel-test" else None
    for args, expected in _bad_inputs(user, user_tmp, usr_sif, busybox_sandbox):
        r = _exec(user, *args, "true") if user else \
            run_satchel(["exec", "-B", "/usr", *args, "true"])
        _fatal_only(r)
        assert expected in r.stderr, (args, r.stderr)
        assert wait_until(lambda: not _leftovers(user_tmp), 5), (args, _leftovers(user_tmp))
        if user is not None:
            assert wait_until(lambda: _no_servers(user), 5), args
    if user is not None:
        theirs = os.path.join(user_tmp, "root.img")
        r = _exec(user, "--overlay", theirs + ":ro", usr_sif, "ls", "/")
        assert r.returncode == 0, r.stderr  # read-only use of another's readable image is fine


def test_root_uses_a_loop_device_and_kernel_ext3(user_tmp, usr_sif):
    """As root: the image on a read-write loop device (kernel ext3, journaled), gone after."""
    image = os.path.join(user_tmp, "root.img")
    run_satchel(["overlay", "create", "--create-dir", "/opt/site", image], check=True)
    r = run_satchel(["exec", "-B", "/usr", "--overlay", image, usr_sif, "sh", "-c",
                     "echo root > /opt/site/f && grep ' / ' /proc/self/mountinfo"])
    assert r.returncode == 0 and " overlay " in r.stdout, r.stderr
    r = run_satchel(["exec", "-B", "/usr", "--overlay", image + ":ro", usr_sif, "cat",
                     "/opt/site/f"])
    assert r.stdout == "root\n", r.stderr
    assert wait_until(lambda: image not in subprocess.run(["losetup", "-a"], text=True,
                                                          capture_output=True).stdout, 5)
    assert _fsck(image).returncode == 0


def _layer_tree(directory: str, name: str, files) -> str:
    """A directory holding opt/o/F (content: name) for each F in files."""
    os.makedirs(os.path.join(directory, "opt", "o"))
    for f in files:
        with open(os.path.join(directory, "opt", "o", f), "w") as fh:
            fh.write(name)
    return directory


@pytest.mark.parametrize("who", ["satchel-test", "root"])
def test_several_overlays_stack_in_apptainers_order(test_user, user_tmp, usr_sif, who):
    """Three overlays holding the same paths, given as --overlay IMG1:ro --overlay W
    --overlay SQ:ro, over a SIF with an overlay partition of its own: the writable one (W, an
    ext3 image) is the upper layer wherever it was given; the read-only ones stack last given
    on top (Apptainer's engine prepends each to lowerdir in command-line order), so SQ
    (SquashFS) hides IMG1 (ext3 image, read-only), and the SIF's partition is the lowest.
    Rootless: fuse2fs + fuse-overlayfs; root: loop devices + kernel overlayfs."""
    user = test_user if who == "satchel-test" else None
    run = (lambda *a: _exec(user, *a)) if user else \
        (lambda *a: run_satchel(["exec", "-B", "/usr", *a]))
    image = os.path.join(user_tmp, "image.sif")
    shutil.copy(usr_sif, image)
    if user:
        os.chown(image, user.uid, user.gid)
    run_satchel(["overlay", "create", "--create-dir", "/opt/o", image], user=user, check=True)
    r = run("--writable", image, "sh", "-c",
            " && ".join(f"printf sif > /opt/o/{f}" for f in ("all", "two", "one", "three")))
    assert r.returncode == 0, r.stderr
    usr_sif = image
    images = {}
    for name, files in (("img1", ("all", "two", "one")), ("w", ("all",))):
        images[name] = os.path.join(user_tmp, name + ".img")
        run_satchel(["overlay", "create", "--create-dir", "/opt/o", images[name]], user=user,
                    check=True)
        script = " && ".join(f"printf {name} > /opt/o/{f}" for f in files)
        r = run("--overlay", images[name], usr_sif, "sh", "-c", script)
        assert r.returncode == 0, r.stderr
    squash = os.path.join(user_tmp, "sq.sqfs")
    subprocess.run(["mksquashfs", _layer_tree(os.path.join(user_tmp, "sq"), "sq", ("all", "two")),
                    squash, "-quiet", "-no-progress", "-all-root"], check=True)
    os.chmod(squash, 0o644)
    r = run("--overlay", images["img1"] + ":ro", "--overlay", images["w"], "--overlay",
            squash + ":ro", usr_sif, "sh", "-c",
            "cat /opt/o/all /opt/o/two /opt/o/one /opt/o/three && printf new > /opt/o/new")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "wsqimg1sif", r.stdout
    r = run("--overlay", images["w"] + ":ro", usr_sif, "cat", "/opt/o/new")
    assert r.stdout == "new", r.stderr  # the write went into the upper layer, W
    for image in images.values():
        assert _released(image) and _fsck(image).returncode == 0


def test_read_only_layers_squashfs_and_directory_stack_in_order(test_user, user_tmp, usr_sif):
    """A SquashFS file (always read-only) and a directory with :ro stack above the image, the
    last given on top; nothing can be written without a writable layer."""
    top, low = os.path.join(user_tmp, "top"), os.path.join(user_tmp, "low")
    for d, text in ((top, "top"), (low, "low")):
        os.makedirs(os.path.join(d, "opt"))
        for name in ("both", d.rsplit("/", 1)[1]):
            with open(os.path.join(d, "opt", name), "w") as fh:
                fh.write(text)
    squash = os.path.join(user_tmp, "low.sqfs")
    subprocess.run(["mksquashfs", low, squash, "-quiet", "-no-progress", "-all-root"],
                   check=True)
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", user_tmp], check=True)
    r = _exec(test_user, "--overlay", squash, "--overlay", top + ":ro", usr_sif, "sh", "-c",
              "cat /opt/both /opt/top /opt/low; touch /opt/new 2>/dev/null || echo ro")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "toptoplowro\n", r.stdout
