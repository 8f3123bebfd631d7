"""The blob cache: verified downloads, resume from partial files, one writer per digest across
processes, clean/list. The network side is a small in-memory blob server that speaks the same
statuses as a registry (200, 206 for Range, 416); the real registry is in the integration tests.
"""

import hashlib
import io
import multiprocessing
import os
import time

import pytest

from satchel.errors import CacheError, OCIError
from satchel.oci import blobs, digest as digests, manifest as mt
from satchel.oci.cache import Cache, default_root


class Served:
    """A response: status plus a body read with readinto, like transport.Response."""

    def __init__(self, status, body, fail_after=None):
        self.status = status
        self._body = io.BytesIO(body)
        self._fail_after = fail_after
        self.closed = False

    def readinto(self, buf):
        if self._fail_after is not None and self._body.tell() >= self._fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        limit = len(buf) if self._fail_after is None else min(
            len(buf), self._fail_after - self._body.tell())
        data = self._body.read(limit)
        buf[:len(data)] = data
        return len(data)

    def close(self, reuse=True):
        self.closed = True


class BlobServer:
    def __init__(self, data, honour_range=True, fail_after=None):
        self.data = data
        self.honour_range = honour_range
        self.fail_after = fail_after
        self.requests = []

    def __call__(self, offset):
        self.requests.append(offset)
        fail, self.fail_after = self.fail_after, None
        if offset and self.honour_range:
            if offset >= len(self.data):
                return Served(416, b"")
            return Served(206, self.data[offset:], fail)
        return Served(200, self.data, fail)


def descriptor(data, media_type="application/vnd.oci.image.layer.v1.tar"):
    return mt.Descriptor(media_type, digests.of_bytes(data), len(data))


@pytest.fixture
def cache(tmp_path):
    return Cache(str(tmp_path / "cache")).ensure()


def test_download_verifies_and_renames_into_place(cache):
    data = os.urandom(3 << 20)
    server = BlobServer(data)
    seen = []
    path = blobs.ensure_blob(cache, descriptor(data), server, seen.append)
    assert open(path, "rb").read() == data and sum(seen) == len(data)
    assert path == cache.blob_path(descriptor(data).digest)
    assert os.listdir(cache.tmp_dir) == []
    # the second time nothing is requested
    blobs.ensure_blob(cache, descriptor(data), server)
    assert server.requests == [0]


def test_digest_mismatch_keeps_nothing(cache):
    data = os.urandom(100000)
    wrong = bytearray(data)
    wrong[500] ^= 1
    with pytest.raises(OCIError, match="digest mismatch"):
        blobs.ensure_blob(cache, descriptor(data), BlobServer(bytes(wrong)))
    assert cache.has_blob(descriptor(data).digest) is None
    assert os.listdir(cache.tmp_dir) == []


def test_oversized_body_is_refused(cache):
    data = os.urandom(1000)
    with pytest.raises(OCIError, match="more than"):
        blobs.ensure_blob(cache, descriptor(data), BlobServer(data + b"extra"))
    assert cache.has_blob(descriptor(data).digest) is None


class FlakyServer(BlobServer):
    """Breaks the connection every `every` bytes, `times` times."""

    def __init__(self, data, every, times):
        super().__init__(data)
        self.every, self.times = every, times

    def __call__(self, offset):
        if self.times:
            self.times -= 1
            self.fail_after = self.every
        return super().__call__(offset)


def test_interrupted_download_resumes_with_range(cache, monkeypatch):
    monkeypatch.setattr(blobs, "RETRY_WAIT_S", 0)
    data = os.urandom(5 << 20)
    desc = descriptor(data)
    server = FlakyServer(data, every=1 << 20, times=2)
    path = blobs.ensure_blob(cache, desc, server)
    assert server.requests == [0, 1 << 20, 2 << 20]
    assert open(path, "rb").read() == data
    assert not os.path.exists(cache.partial_path(desc.digest))


def test_too_many_interruptions_keep_the_partial_for_later(cache, monkeypatch):
    monkeypatch.setattr(blobs, "RETRY_WAIT_S", 0)
    data = os.urandom(5 << 20)
    desc = descriptor(data)
    server = FlakyServer(data, every=1 << 19, times=blobs.RETRIES + 1)
    with pytest.raises(OCIError, match="download interrupted"):
        blobs.ensure_blob(cache, desc, server)
    partial = cache.partial_path(desc.digest)
    assert os.path.getsize(partial) == (blobs.RETRIES + 1) << 19
    assert cache.has_blob(desc.digest) is None
    path = blobs.ensure_blob(cache, desc, server)  # a later pull resumes it
    assert server.requests[-1] == (blobs.RETRIES + 1) << 19
    assert open(path, "rb").read() == data


def test_resume_when_registry_ignores_range(cache):
    data = os.urandom(1 << 20)
    desc = descriptor(data)
    with open(cache.partial_path(desc.digest), "wb") as fh:
        fh.write(data[:1000])
    server = BlobServer(data, honour_range=False)
    path = blobs.ensure_blob(cache, desc, server)
    assert server.requests == [1000] and open(path, "rb").read() == data


def test_complete_partial_answered_with_416(cache):
    data = os.urandom(5000)
    desc = descriptor(data)
    with open(cache.partial_path(desc.digest), "wb") as fh:
        fh.write(data)
    server = BlobServer(data)
    blobs.ensure_blob(cache, desc, server)
    assert server.requests == [5000]


def test_corrupt_partial_is_detected_and_downloaded_again(cache):
    data = os.urandom(1 << 20)
    desc = descriptor(data)
    with open(cache.partial_path(desc.digest), "wb") as fh:
        fh.write(b"\xff" * 4096)  # garbage a crash (or someone) left behind
    server = BlobServer(data)
    path = blobs.ensure_blob(cache, desc, server)
    assert server.requests == [4096, 0]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == desc.digest.hex


def test_wrong_size_cached_blob_is_not_trusted(cache):
    data = os.urandom(2000)
    desc = descriptor(data)
    path = cache.blob_path(desc.digest)
    with open(path, "wb") as fh:
        fh.write(data[:100])  # torn
    assert cache.has_blob(desc.digest, desc.size) is None and not os.path.exists(path)
    server = BlobServer(data)
    blobs.ensure_blob(cache, desc, server)
    assert server.requests == [0]


def _slow_download(root, data, counter_path, started, count):
    cache = Cache(root).ensure()
    open(os.path.join(started, str(os.getpid())), "w").close()

    def opener(offset):
        with open(counter_path, "a") as fh:
            fh.write("x")
        # the download lasts until every process has started (bounded): all of them ask
        # for the blob while one holds its lock
        deadline = time.monotonic() + 10
        while len(os.listdir(started)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return Served(200 if not offset else 206, data[offset:])
    blobs.ensure_blob(cache, descriptor(data), opener)


def test_concurrent_processes_download_once(tmp_path):
    data = os.urandom(1 << 20)
    root = str(tmp_path / "cache")
    counter = str(tmp_path / "requests")
    ctx = multiprocessing.get_context("fork")
    started = str(tmp_path / "started")
    os.mkdir(started)
    procs = [ctx.Process(target=_slow_download, args=(root, data, counter, started, 8))
             for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert open(counter).read() == "x"
    assert open(Cache(root).blob_path(descriptor(data).digest), "rb").read() == data


def test_put_blob_refuses_wrong_content_and_read_blob_reverifies(cache):
    dig = digests.of_bytes(b"manifest")
    with pytest.raises(CacheError, match="refusing to cache"):
        cache.put_blob(dig, b"other")
    cache.put_blob(dig, b"manifest")
    assert cache.read_blob(dig) == b"manifest"
    with open(cache.blob_path(dig), "wb") as fh:
        fh.write(b"tampered")
    assert cache.read_blob(dig) is None and cache.has_blob(dig) is None


def test_entries_and_clean(cache):
    for payload in (b"one", b"two"):
        cache.put_blob(digests.of_bytes(payload), payload)
    sif = cache.sif_path(digests.of_bytes(b"m"))
    with open(sif, "wb") as fh:
        fh.write(b"SIF")
    with open(cache.partial_path(digests.of_bytes(b"p")), "wb") as fh:
        fh.write(b"partial")
    kinds = sorted(e.kind for e in cache.entries())
    assert kinds == ["blob", "blob", "oci"]
    assert [e.kind for e in cache.clean(("oci",), dry_run=True)] == ["oci"]
    assert os.path.exists(sif)
    assert len(cache.clean(older_than_days=1)) == 0  # everything is new
    removed = cache.clean()
    assert sorted(e.kind for e in removed) == ["blob", "blob", "oci"]
    assert cache.entries() == [] and os.listdir(cache.tmp_dir) == []


def test_clean_skips_what_a_running_pull_holds(cache):
    dig = digests.of_bytes(b"busy")
    cache.put_blob(dig, b"busy")
    with cache.lock(f"blob-{dig.hex}"):
        assert cache.clean(("blob",)) == []
    assert len(cache.clean(("blob",))) == 1


def test_default_root():
    assert default_root({"APPTAINER_CACHEDIR": "/a", "SINGULARITY_CACHEDIR": "/b"}) == "/a"
    assert default_root({"SINGULARITY_CACHEDIR": "/b", "HOME": "/h"}) == "/b"
    assert default_root({"HOME": "/h"}) == "/h/.satchel/cache"
