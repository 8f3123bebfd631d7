"""The cache under pressure: 20 simultaneous pulls of one image, 20 of different images, and a
pull killed with SIGKILL in the middle of a download (then resumed with a Range request)."""

import hashlib
import os
import pathlib
import signal
import subprocess
import time

import pytest

from support.fixtures_registry import (Proxy, busybox_layer, push_image, sha256_file,
                                       sif_extract)
from support.fixtures_users import SATCHEL
from satchel.oci import writer

pytestmark = pytest.mark.slow
N = 20


def check_cache(cache: str) -> None:
    """Every cached blob matches its name; no temporary file is left behind."""
    blob_dir = os.path.join(cache, "blob", "sha256")
    for name in os.listdir(blob_dir):
        assert sha256_file(os.path.join(blob_dir, name)) == name
    assert os.listdir(os.path.join(cache, "tmp")) == []


def start_pulls(uris_and_outputs, cache, user=None):
    env = dict(os.environ, APPTAINER_CACHEDIR=cache)
    wrap = list
    if user is not None:
        env = user.env({"APPTAINER_CACHEDIR": cache})
        wrap = user.argv
    return [subprocess.Popen(wrap([SATCHEL, "pull", "--nohttps", out, uri]), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=user.home if user else None)
            for uri, out in uris_and_outputs]


def wait_all(procs, timeout=600):
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        results.append((proc.returncode, err.decode(errors="replace")))
    return results


@pytest.mark.parametrize("who", ["root", "user"])
def test_twenty_pulls_of_the_same_image(oci_registry, registry_workdir, tmp_path, who,
                                        request):
    user = request.getfixturevalue("test_user") if who == "user" else None
    if user is not None:
        tmp_path = pathlib.Path(request.getfixturevalue("user_tmp"))
    repo = f"conc/same-{who}"
    image = writer.Image([writer.compress_layer(busybox_layer().tar_bytes(), "gzip"),
                          writer.compress_layer(writer.Layer().file("same", who).tar_bytes(),
                                                "zstd")])
    push_image(f"docker://{oci_registry.host}", f"{repo}:latest", image, registry_workdir)
    cache = str(tmp_path / "cache")
    before = oci_registry.log_size()
    jobs = [(oci_registry.uri(f"{repo}:latest"), str(tmp_path / f"same-{i}.sif"))
            for i in range(N)]
    results = wait_all(start_pulls(jobs, cache, user))
    for code, err in results:
        assert code == 0, err
    digests = {sha256_file(out) for _, out in jobs}
    assert len(digests) == 1  # all copies of the one conversion
    assert len(os.listdir(os.path.join(cache, "oci-tmp"))) == 1
    assert oci_registry.blob_gets(repo, before) == 3  # config + 2 layers, once
    converted = sum("Converting OCI blobs" in err for _, err in results)
    assert converted == 1
    check_cache(cache)
    root = sif_extract(jobs[7][1], str(tmp_path / "x"))
    assert open(os.path.join(root, "same")).read() == who


def test_twenty_pulls_of_different_images(oci_registry, registry_workdir, tmp_path):
    base = writer.compress_layer(busybox_layer().tar_bytes(), "gzip")
    for i in range(N):
        unique = writer.compress_layer(writer.Layer().file("marker", f"image {i}\n")
                                       .tar_bytes(), "gzip" if i % 2 else "zstd")
        push_image(f"docker://{oci_registry.host}", f"conc/diff{i}:latest",
                   writer.Image([base, unique], {"Env": [f"N={i}"]}), registry_workdir)
    cache = str(tmp_path / "cache")
    before = oci_registry.log_size()
    jobs = [(oci_registry.uri(f"conc/diff{i}:latest"), str(tmp_path / f"diff-{i}.sif"))
            for i in range(N)]
    for code, err in wait_all(start_pulls(jobs, cache)):
        assert code == 0, err
    for i, (_, out) in enumerate(jobs):
        root = sif_extract(out, str(tmp_path / f"x{i}"))
        assert open(os.path.join(root, "marker")).read() == f"image {i}\n"
    log = oci_registry.log_text()[before:]
    assert sum(1 for line in log.splitlines()
               if f'"GET /v2/conc/' in line and base.digest in line) == 1  # shared, once
    assert len(os.listdir(os.path.join(cache, "oci-tmp"))) == N
    check_cache(cache)


def test_sigkill_mid_download_then_resume(oci_registry, registry_workdir, tmp_path):
    payload = os.urandom(8 << 20)
    big = writer.compress_layer(writer.Layer().file("big.bin", payload).tar_bytes(), "gzip",
                                level=1)
    image = writer.Image([writer.compress_layer(busybox_layer().tar_bytes(), "gzip"), big])
    push_image(f"docker://{oci_registry.host}", "resume/big:latest", image, registry_workdir)
    cache = str(tmp_path / "cache")
    partial = os.path.join(cache, "tmp", f"sha256-{big.digest[7:]}.partial")
    proxy = Proxy(oci_registry.port, rate=1 << 20)  # 1 MiB/s: slow enough to be caught
    try:
        out = str(tmp_path / "killed.sif")
        proc = start_pulls([(f"docker://{proxy.host}/resume/big:latest", out)], cache)[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(partial) and os.path.getsize(partial) > (1 << 20):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the download never got going")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proxy.close()
    got = os.path.getsize(partial)
    assert 0 < got < len(big.data)
    # nothing is trusted: no blob, no SIF, no output
    assert not os.path.exists(os.path.join(cache, "blob", "sha256", big.digest[7:]))
    assert os.listdir(os.path.join(cache, "oci-tmp")) == []
    assert not os.path.exists(out)
    # the next pull resumes where the killed one stopped, and verifies the whole blob
    proxy2 = Proxy(oci_registry.port)
    try:
        env = dict(os.environ, APPTAINER_CACHEDIR=cache)
        result = subprocess.run([SATCHEL, "-v", "pull", "--nohttps", str(tmp_path / "ok.sif"),
                                 f"docker://{proxy2.host}/resume/big:latest"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        requests = proxy2.requests_text()
    finally:
        proxy2.close()
    assert "resuming at byte" in result.stderr
    assert f"GET /v2/resume/big/blobs/{big.digest}" in requests
    assert "Range: bytes=" in requests
    assert proxy2.bytes_to_clients < len(big.data)  # the first part was not sent again
    root = sif_extract(str(tmp_path / "ok.sif"), str(tmp_path / "x"))
    assert hashlib.sha256(open(os.path.join(root, "big.bin"), "rb").read()).digest() == \
        hashlib.sha256(payload).digest()
    # what the killed build left in tmp/ is not trusted and `cache clean` removes it
    clean = subprocess.run([SATCHEL, "cache", "clean", "--force"], env=env, capture_output=True,
                           text=True)
    assert clean.returncode == 0, clean.stderr
    assert os.listdir(os.path.join(cache, "tmp")) == []
