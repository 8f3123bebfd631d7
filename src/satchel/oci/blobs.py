"""Downloading blobs into the cache: resumable, digest-verified, one writer per digest.

A download appends to tmp/<digest>.partial under the digest's lock. If a partial file is there
(an earlier pull was killed), its bytes are hashed again and the rest is requested with a Range
header; a registry that answers 200 instead of 206 sends the whole blob and we start over. The
file is renamed into blob/ only when its size and digest match the descriptor. A resumed
download whose final digest is wrong (the partial bytes were bad) is retried once from zero;
a connection that breaks mid-blob is resumed up to RETRIES times within the same pull.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import time

from satchel import log
from satchel.errors import OCIError, os_error
from satchel.oci.cache import Cache
from satchel.oci.manifest import Descriptor

CHUNK = 1 << 20
RETRIES = 3       # an interrupted transfer is resumed this many times before giving up
RETRY_WAIT_S = 1.0


class Interrupted(OCIError):
    """The connection broke mid-blob: what arrived is kept in the partial file."""


def ensure_blob(cache: Cache, desc: Descriptor, open_blob, progress=None,
                what: str = "blob") -> str:
    """Path of the verified blob in the cache, downloading it if needed.

    `open_blob(offset)` returns a streaming response (status 200, 206 or 416);
    `progress(nbytes)` is called as bytes arrive (also for bytes found in the cache)."""
    path = cache.has_blob(desc.digest, desc.size)
    if path is not None:
        if progress:
            progress(desc.size)
        return path
    cache.ensure()
    with cache.lock(f"blob-{desc.digest.hex}"):
        path = cache.has_blob(desc.digest, desc.size)
        if path is not None:  # another process finished it while we waited
            if progress:
                progress(desc.size)
            return path
        partial = cache.partial_path(desc.digest)
        for attempt in (0, 1):
            resumed = _download_with_retries(partial, desc, open_blob, progress, what)
            if _verify(partial, desc, resumed.hasher):
                final = cache.blob_path(desc.digest)
                try:
                    os.rename(partial, final)
                except OSError as err:
                    raise os_error(f"storing {what} {desc.digest}", err) from None
                return final
            with contextlib.suppress(OSError):
                os.unlink(partial)
            if resumed.offset and attempt == 0:
                log.warning(f"{what} {desc.digest.short()}: resumed download did not verify; "
                            "downloading it again from the start")
                continue
            raise OCIError(f"{what} {desc.digest}: digest mismatch: downloaded content has "
                           f"digest {resumed.algorithm}:{resumed.hasher.hexdigest()}",
                           hint="the registry served corrupt data; nothing was kept")
    raise AssertionError("unreachable")


def _download_with_retries(partial, desc, open_blob, progress, what) -> "_State":
    for retry in range(RETRIES + 1):
        try:
            return _download(partial, desc, open_blob, progress, what)
        except Interrupted as err:
            if retry == RETRIES:
                raise
            log.warning(f"{err.message}; resuming ({retry + 1}/{RETRIES})")
            time.sleep(RETRY_WAIT_S * (retry + 1))
    raise AssertionError("unreachable")


class _State:
    __slots__ = ("hasher", "offset", "algorithm")

    def __init__(self, hasher, offset, algorithm):
        self.hasher, self.offset, self.algorithm = hasher, offset, algorithm


def _download(partial: str, desc: Descriptor, open_blob, progress, what: str) -> _State:
    hasher = desc.digest.hasher()
    offset = _rehash_partial(partial, desc, hasher)
    if offset:
        log.verbose(f"{what} {desc.digest.short()}: resuming at byte {offset} of {desc.size}")
        if progress:
            progress(offset)
    resp = open_blob(offset)
    try:
        if offset and resp.status == 416:  # we already have every byte
            return _State(hasher, offset, desc.digest.algorithm)
        if offset and resp.status != 206:
            log.verbose(f"{what} {desc.digest.short()}: registry ignored the range; restarting")
            if progress:
                progress(-offset)
            hasher = desc.digest.hasher()
            offset = 0
        mode = "ab" if offset else "wb"
        try:
            out = open(partial, mode)
        except OSError as err:
            raise os_error(f"writing {partial}", err) from None
        with out:
            total = offset
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                total += n
                if total > desc.size:
                    raise OCIError(f"{what} {desc.digest}: registry sent more than the "
                                   f"{desc.size} bytes the manifest declares")
                chunk = view[:n]
                hasher.update(chunk)
                out.write(chunk)
                if progress:
                    progress(n)
    except OCIError:
        resp.close(reuse=False)
        raise
    except (OSError, http.client.HTTPException) as err:
        resp.close(reuse=False)
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise Interrupted(f"{what} {desc.digest.short()}: download interrupted: {reason}",
                          hint="run the pull again to resume it") from None
    resp.close()
    return _State(hasher, offset, desc.digest.algorithm)


def _rehash_partial(partial: str, desc: Descriptor, hasher) -> int:
    """Feed the bytes of an earlier partial download to `hasher`; returns how many."""
    try:
        fh = open(partial, "rb")
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise os_error(f"reading {partial}", err) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > desc.size:
            return 0  # garbage: "wb" will truncate it
        while True:
            data = fh.read(CHUNK)
            if not data:
                break
            hasher.update(data)
    return size


def _verify(partial: str, desc: Descriptor, hasher) -> bool:
    try:
        size = os.path.getsize(partial)
    except OSError:
        return False
    return size == desc.size and hasher.hexdigest() == desc.digest.hex
