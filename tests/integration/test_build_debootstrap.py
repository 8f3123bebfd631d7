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


@pytest.mark.skipif(not os.environ.get("SATCHEL_TEST_FAKEROOT_DEBOOTSTRAP"),
                    reason="~100 s and the network: set SATCHEL_TEST_FAKEROOT_DEBOOTSTRAP=1")
def test_debootstrap_as_non_root_user(test_user, user_tmp):
    """debootstrap under --fakeroot: package files keep their owners (_apt is 42)."""
    deffile = os.path.join(user_tmp, "debian.def")
    with open(os.path.join(os.path.dirname(__file__), "..", "data", "debian.def")) as src, \
            open(deffile, "w") as dst:
        dst.write(src.read())
    target = os.path.join(user_tmp, "debian.sif")
    r = run_satchel(["build", "--fakeroot", target, deffile], user=test_user, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    with sif.SIFFile.open(target) as f:
        offset = f.primary_partition().offset
    listing = subprocess.run(["unsquashfs", "-lln", "-o", str(offset), target],
                             capture_output=True, text=True, check=True).stdout
    owners = {line.split()[5]: line.split()[1] for line in listing.splitlines()
              if len(line.split()) >= 6}
    assert owners["squashfs-root/var/cache/apt/archives/partial"] == "42/0"
    assert owners["squashfs-root/opt/owned"] == "1000/1000"
    assert owners["squashfs-root/usr/bin/su"] == "0/0"
