"""A real debootstrap build (Debian bookworm minbase from deb.debian.org), cached across runs."""

import json
import os
import subprocess

import pytest

from support.fixtures_users import run_satchel

from satchel.image import sif

pytestmark = pytest.mark.slow


def cat(image, path):
    with sif.SIFFile.open(image) as f:
        offset = f.primary_partition().offset
    r = subprocess.run(["unsquashfs", "-o", str(offset), "-cat", image, path.lstrip("/")],
                       capture_output=True)
    return r.stdout.decode() if r.returncode == 0 else None


def test_debian_image(debian_sif):
    assert 'VERSION_CODENAME=bookworm' in cat(debian_sif, "/usr/lib/os-release")
    assert cat(debian_sif, "/etc/debian_version").startswith("12")
    with sif.SIFFile.open(debian_sif) as f:
        part = f.primary_partition()
        assert part.size > 30_000_000
        labels = json.loads(f.read_data(f.find(datatype=sif.DATA_LABELS)[0].id))
    assert labels["org.label-schema.usage.singularity.deffile.osversion"] == "bookworm"
    assert labels["org.label-schema.usage.singularity.deffile.mirrorurl"] == "http://deb.debian.org/debian"
    assert labels["org.satchel.test"] == "debian"
    with sif.SIFFile.open(debian_sif) as f:
        offset = f.primary_partition().offset
    listing = subprocess.run(["unsquashfs", "-lln", "-o", str(offset), debian_sif, "opt", "usr/bin/apt"],
                             capture_output=True, text=True, check=True).stdout
    owned = [line for line in listing.splitlines() if line.endswith("squashfs-root/opt/owned")]
    assert owned and owned[0].split()[1] == "1000/1000"
    assert any(line.endswith("squashfs-root/usr/bin/apt") and line.split()[1] == "0/0"
               for line in listing.splitlines())


def test_debian_inspect(debian_sif, test_user):
    r = run_satchel(["inspect", "--runscript", debian_sif], user=test_user)
    assert r.returncode == 0 and "cat /etc/os-release" in r.stdout


def test_debootstrap_honours_osversion_and_mirror(tmp_path):
    """A wrong suite on a wrong mirror fails quickly and names both in the error."""
    deffile = tmp_path / "bad.def"
    deffile.write_text("Bootstrap: debootstrap\nOSVersion: no-such-suite\n"
                       "MirrorURL: http://127.0.0.1:9/debian\n")
    r = run_satchel(["build", str(tmp_path / "x.sif"), str(deffile)], timeout=300)
    assert r.returncode == 255
    assert "INFO:    debootstrap no-such-suite from http://127.0.0.1:9/debian" in r.stderr
    assert "FATAL:   while running debootstrap: debootstrap failed" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.def"]


@pytest.fixture(scope="module")
def fakeroot_debian_sif(test_user):
    """tests/data/debian.def built by satchel-test with --fakeroot, cached like `debian_sif`
    (key: the definition's content): a fresh CI machine always builds it (~45 s, network),
    a development machine once per change of the definition."""
    import fcntl
    import hashlib
    import shutil
    import tempfile
    from support.fixtures_images import DEBIAN_DEF, cache_dir
    with open(DEBIAN_DEF, "rb") as fh:
        key = hashlib.sha256(fh.read()).hexdigest()[:16]
    directory = cache_dir()
    path = os.path.join(directory, f"debian-fakeroot-{key}.sif")
    with open(os.path.join(directory, ".debian-fakeroot.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            for stale in os.listdir(directory):
                if stale.startswith("debian-fakeroot-") and stale.endswith(".sif"):
                    os.unlink(os.path.join(directory, stale))
            work = tempfile.mkdtemp(prefix="satchel-frdeb-", dir="/var/tmp")
            try:
                os.chown(work, test_user.uid, test_user.gid)
                deffile = os.path.join(work, "debian.def")
                shutil.copyfile(DEBIAN_DEF, deffile)
                target = os.path.join(work, "debian.sif")
                r = run_satchel(["build", "--fakeroot", target, deffile], user=test_user,
                                timeout=1200)
                assert r.returncode == 0, r.stderr[-3000:]
                assert os.stat(target).st_uid == test_user.uid
                assert sorted(os.listdir(work)) == ["debian.def", "debian.sif"]
                shutil.move(target, path)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        os.chmod(path, 0o755)
    return path


def test_debootstrap_as_non_root_user(fakeroot_debian_sif, test_user):
    """debootstrap under --fakeroot: package files keep their owners (_apt is 42), setuid
    programs stay setuid root, the image runs for its builder."""
    target = fakeroot_debian_sif
    with sif.SIFFile.open(target) as f:
        offset = f.primary_partition().offset
    listing = subprocess.run(["unsquashfs", "-lln", "-o", str(offset), target],
                             capture_output=True, text=True, check=True).stdout
    entries = {line.split()[5]: line.split()[:2] for line in listing.splitlines()
               if len(line.split()) >= 6}
    assert entries["squashfs-root/var/cache/apt/archives/partial"][1] == "42/0"
    assert entries["squashfs-root/opt/owned"][1] == "1000/1000"
    assert entries["squashfs-root/usr/bin/su"] == ["-rwsr-xr-x", "0/0"]
    r = run_satchel(["exec", target, "sh", "-c", "id -u; cat /etc/debian_version"],
                    user=test_user)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == str(test_user.uid) and r.stdout.split()[1].startswith("12")
