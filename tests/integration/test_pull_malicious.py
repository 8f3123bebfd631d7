"""Layers crafted to escape the root file system, pulled from a real registry as root and as the
unprivileged user: nothing may be written outside the target, ever."""

import io
import os
import shutil
import tarfile
import uuid

import pytest

from support.fixtures_registry import busybox_layer, push_image, sif_extract, sif_listing
from support.fixtures_users import run_satchel
from satchel.oci import writer

pytestmark = pytest.mark.slow

ESCAPE = f"/tmp/satchel-escape-{uuid.uuid4().hex[:12]}"  # a host directory anyone may write


def raw_layer(name: str, data: bytes = b"escaped\n", kind=tarfile.REGTYPE, linkname="") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def evil_images():
    base = writer.compress_layer(busybox_layer(
        extra=lambda l: l.file("etc/shadow", "image shadow\n", mode=0o640)).tar_bytes(), "gzip")
    dots = "../" * 12
    escaping = {
        "dotdot": raw_layer(dots + ESCAPE.lstrip("/") + "/dotdot"),
        "hardlink-out": raw_layer("stolen", kind=tarfile.LNKTYPE,
                                  linkname=dots + "etc/passwd"),
    }
    neutralised = {
        "symlinks": (writer.Layer().symlink("etc/evil", ESCAPE).file("etc/evil/pwned", "abs\n")
                     .symlink("etc/evil2", dots + ESCAPE.lstrip("/"))
                     .file("etc/evil2/pwned2", "rel\n")
                     .symlink("etc/hostpasswd", "/etc/passwd").file("etc/hostpasswd", "replaced\n")
                     .tar_bytes()),
        "hardlink-via-symlink": (writer.Layer().symlink("hostetc", "/etc")
                                 .hardlink("shadow-copy", "hostetc/shadow").tar_bytes()),
        "devices": (writer.Layer().dir("dev").device("dev/evil-mem", "c", 1, 1)
                    .device("dev/evil-sda", "b", 8, 0).tar_bytes()),
    }
    images = {}
    for name, tar in {**escaping, **neutralised}.items():
        images[name] = writer.Image([base, writer.compress_layer(tar, "gzip")])
    return images, set(escaping)


@pytest.fixture(scope="module")
def evil_registry(oci_registry, registry_workdir):
    images, escaping = evil_images()
    for name, image in images.items():
        push_image(f"docker://{oci_registry.host}", f"evil/{name}:latest", image,
                   registry_workdir)
    return oci_registry, escaping


@pytest.fixture(autouse=True)
def escape_dir():
    os.makedirs(ESCAPE, exist_ok=True)
    os.chmod(ESCAPE, 0o777)
    try:
        yield ESCAPE
        escaped = os.listdir(ESCAPE)
        assert escaped == [], f"something escaped into {ESCAPE}: {escaped}"
    finally:
        shutil.rmtree(ESCAPE, ignore_errors=True)  # even when the check fails


def host_untouched():
    assert os.listdir(ESCAPE) == []
    with open("/etc/passwd") as fh:
        assert "replaced" not in fh.read()


def do_pull(registry, name, directory, user=None):
    env = {"APPTAINER_CACHEDIR": os.path.join(directory, "cache")}
    sif = os.path.join(directory, f"{name}.sif")
    result = run_satchel(["pull", "--nohttps", sif, registry.uri(f"evil/{name}:latest")],
                         user=user, env=env, timeout=180)
    assert "Traceback" not in result.stderr and "bug in satchel" not in result.stderr
    return result, sif


def check_refused(result, sif, directory):
    assert result.returncode == 255, result.stderr
    fatal = [l for l in result.stderr.splitlines() if l.startswith("FATAL:")]
    assert len(fatal) == 1 and "points outside the root filesystem" in fatal[0], result.stderr
    assert not os.path.exists(sif)
    assert os.listdir(os.path.join(directory, "cache", "tmp")) == []
    host_untouched()


@pytest.mark.parametrize("name", ["dotdot", "hardlink-out"])
def test_escaping_entries_are_refused_as_root(evil_registry, name, tmp_path):
    registry, _ = evil_registry
    result, sif = do_pull(registry, name, str(tmp_path))
    check_refused(result, sif, str(tmp_path))


@pytest.mark.parametrize("name", ["dotdot", "hardlink-out"])
def test_escaping_entries_are_refused_as_user(evil_registry, name, test_user, user_tmp):
    registry, _ = evil_registry
    result, sif = do_pull(registry, name, user_tmp, user=test_user)
    check_refused(result, sif, user_tmp)


def check_symlinks(sif, tmp):
    host_untouched()
    root = sif_extract(sif, os.path.join(tmp, "x"))
    inside = os.path.join(root, ESCAPE.lstrip("/"))
    assert open(os.path.join(inside, "pwned")).read() == "abs\n"
    assert open(os.path.join(inside, "pwned2")).read() == "rel\n"
    hostpasswd = os.path.join(root, "etc/hostpasswd")
    assert not os.path.islink(hostpasswd) and open(hostpasswd).read() == "replaced\n"


def test_symlinks_are_resolved_inside_the_image_as_root(evil_registry, tmp_path):
    registry, _ = evil_registry
    result, sif = do_pull(registry, "symlinks", str(tmp_path))
    assert result.returncode == 0, result.stderr
    check_symlinks(sif, str(tmp_path))


def test_symlinks_are_resolved_inside_the_image_as_user(evil_registry, test_user, user_tmp):
    registry, _ = evil_registry
    result, sif = do_pull(registry, "symlinks", user_tmp, user=test_user)
    assert result.returncode == 0, result.stderr
    check_symlinks(sif, user_tmp)


def test_hardlink_through_symlink_links_the_image_file(evil_registry, tmp_path):
    registry, _ = evil_registry
    result, sif = do_pull(registry, "hardlink-via-symlink", str(tmp_path))
    assert result.returncode == 0, result.stderr
    root = sif_extract(sif, str(tmp_path / "x"))
    assert open(os.path.join(root, "shadow-copy")).read() == "image shadow\n"
    assert os.path.samefile(os.path.join(root, "shadow-copy"), os.path.join(root, "etc/shadow"))


def test_device_nodes_are_not_created_for_a_user(evil_registry, test_user, user_tmp):
    registry, _ = evil_registry
    result, sif = do_pull(registry, "devices", user_tmp, user=test_user)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 device node(s)" in result.stderr
    listing = sif_listing(sif)
    assert "/dev/evil-mem" not in listing and "/dev/evil-sda" not in listing
    run = run_satchel(["exec", sif, "ls", "/dev"], user=test_user)
    assert run.returncode == 0 and "evil" not in run.stdout, run.stderr


def test_device_nodes_kept_for_root_but_inert(evil_registry, tmp_path):
    """Root keeps them in the image (as Docker does); the runtime mounts images nodev and
    gives the container a /dev of its own, so they reach nothing."""
    registry, _ = evil_registry
    result, sif = do_pull(registry, "devices", str(tmp_path))
    assert result.returncode == 0, result.stderr
    listing = sif_listing(sif)
    assert listing["/dev/evil-mem"].startswith("c") and listing["/dev/evil-sda"].startswith("b")
    run = run_satchel(["exec", sif, "ls", "/dev"])
    assert run.returncode == 0, run.stderr
    assert "evil-mem" not in run.stdout
