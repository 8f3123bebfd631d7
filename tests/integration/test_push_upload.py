"""Blob uploads of `satchel push` against Debian's docker-registry (through a proxy that can
break requests): a failed PATCH resumes where the registry's upload session says, a blob the
registry has is not sent again (HEAD first), and progress bars show on a terminal only."""

import os
import shutil

import pytest

from support.fixtures_push import FaultProxy, oras_sdk
from support.fixtures_registry import sha256_file
from support.fixtures_users import SATCHEL, run_satchel

pytestmark = pytest.mark.slow

KIB = 1024


@pytest.fixture
def sif(busybox_sif, tmp_path):
    """A SIF of its own (busybox.sif plus padding: a digest no other test pushes)."""
    path = tmp_path / "upload.sif"
    shutil.copy(busybox_sif, path)
    with open(path, "ab") as fh:
        fh.write(os.urandom(300 * KIB))
    return str(path)


def test_failed_chunk_resumes_from_the_registrys_offset(oci_registry, sif, tmp_path):
    """The 3rd PATCH (of 256 KiB chunks) fails with 500: the next PATCH starts at the byte
    the upload session reports (512 KiB), not at 0; the SDK pulls an intact SIF."""
    proxy = FaultProxy(oci_registry.port, lambda m, p, n: 500 if m == "PATCH" and n == 3 else None)
    try:
        result = run_satchel(["push", "--nohttps", "--chunk-size", "256K", sif,
                              f"oras://{proxy.host}/upload/chunked:1"])
        assert result.returncode == 0, result.stderr
    finally:
        proxy.close()
    assert "resuming (1/3)" in result.stderr
    chunk = 256 * KIB
    assert proxy.ranges[:4] == [f"0-{chunk - 1}", f"{chunk}-{2 * chunk - 1}",
                                f"{2 * chunk}-{3 * chunk - 1}", f"{2 * chunk}-{3 * chunk - 1}"]
    statuses = [(m, s) for m, p, s in proxy.log if "/blobs/uploads/" in p]
    assert ("GET", 204) in statuses  # the upload's status was asked for
    out = tmp_path / "sdk"
    out.mkdir()
    oras_sdk("pull", f"{oci_registry.host}/upload/chunked:1", str(out))
    assert sha256_file(str(out / "upload.sif")) == sha256_file(sif)


def test_broken_monolithic_upload_is_sent_again(oci_registry, sif, tmp_path):
    proxy = FaultProxy(oci_registry.port, lambda m, p, n: 503 if m == "PATCH" and n == 1 else None)
    try:
        result = run_satchel(["push", "--nohttps", sif, f"oras://{proxy.host}/upload/mono:1"])
        assert result.returncode == 0, result.stderr
    finally:
        proxy.close()
    size = os.path.getsize(sif)
    assert proxy.ranges == [f"0-{size - 1}", f"0-{size - 1}"]
    pulled = tmp_path / "back.sif"
    ok = run_satchel(["pull", "--nohttps", str(pulled), f"oras://{oci_registry.host}/upload/mono:1"],
                     env={"APPTAINER_CACHEDIR": str(tmp_path / "cache")})
    assert ok.returncode == 0, ok.stderr
    assert sha256_file(str(pulled)) == sha256_file(sif)


def test_blob_on_the_registry_is_not_sent_again(oci_registry, sif):
    proxy = FaultProxy(oci_registry.port, lambda m, p, n: None)
    try:
        for tag in ("1", "2"):
            result = run_satchel(["push", "--nohttps", sif, f"oras://{proxy.host}/upload/again:{tag}"])
            assert result.returncode == 0, result.stderr
    finally:
        proxy.close()
    digest = "sha256:" + sha256_file(sif)
    heads = [s for m, p, s in proxy.log if m == "HEAD" and p.endswith(digest)]
    assert heads == [404, 200]
    assert proxy.methods().count("PATCH") == 1  # the first push only
    assert [m for m, p, s in proxy.log if m == "PUT" and "/manifests/" in p] == ["PUT", "PUT"]


def test_progress_bar_on_a_terminal_only(oci_registry, sif, tmp_path):
    from test_pull_registry import _run_on_pty
    env = dict(os.environ)
    rc, out = _run_on_pty([SATCHEL, "push", "--nohttps", sif,
                           f"oras://{oci_registry.host}/upload/bar:1"], env, str(tmp_path))
    assert rc == 0, out
    assert "Uploading [" in out and "MiB" in out
    piped = run_satchel(["push", "--nohttps", sif, f"oras://{oci_registry.host}/upload/bar:2"])
    assert piped.returncode == 0 and "Uploading [" not in piped.stderr and "\r" not in piped.stderr
    rc, out = _run_on_pty([SATCHEL, "push", "--oci", "--nohttps", sif,
                           f"docker://{oci_registry.host}/upload/oci:1"], env, str(tmp_path))
    assert rc == 0, out
    assert "Exporting [" in out and "Uploading [" in out
