"""Pushing to a registry per the distribution spec: blobs first, then the manifest.

A blob goes up in four steps:
1. HEAD /blobs/DIGEST: a blob the registry has already is not sent again;
2. POST /blobs/uploads/: opens an upload session (its URL comes back in Location);
3. PATCH the bytes, with Content-Range so the registry refuses bytes that do not follow what
   it holds. By default one PATCH carries the whole blob (monolithic, streamed from the file
   with sendfile); with `chunk_size` one PATCH per chunk;
4. PUT ?digest=DIGEST: the registry checks the digest of what it received and stores the blob.

A PATCH or PUT that fails on the way (the connection broke, the registry answered 5xx, or 416
because we were out of step) is resumed: GET on the session says how many bytes the registry
holds and the rest is sent from there; a session the registry forgot starts over. After
RETRIES failed attempts the error is final. Nothing is written locally, so a failed push
leaves nothing behind but the registry's own unfinished session (it expires there).
"""

from __future__ import annotations

import time

from satchel import log
from satchel.errors import OCIError
from satchel.oci import auth, progress, transport
from satchel.oci.reference import DockerRef
from satchel.oci.registry import Registry

RETRIES = 3
RETRY_WAIT_S = 0.5


def open_registry(ref: DockerRef, fetch) -> Registry:
    """A registry client allowed to push (token scope pull,push), with the credentials
    pulls use (command line, environment, Docker config, --authfile)."""
    creds = auth.find_credentials(ref.auth_keys, fetch.username, fetch.password,
                                  authfile=fetch.authfile)
    return Registry(ref, creds, plain_http=fetch.plain_http, actions="pull,push")


class BlobSource:
    """A blob to push: `size` bytes of a file from `offset` (a SIF, a layer we wrote)."""

    __slots__ = ("path", "digest", "size", "offset", "what")

    def __init__(self, path: str, digest: str, size: int, offset: int = 0, what: str = "blob"):
        self.path, self.digest, self.size, self.offset, self.what = path, digest, size, offset, what


def push_blob(registry: Registry, blob: BlobSource, bar=None, chunk_size: int = 0) -> bool:
    """Upload `blob` unless the registry has it; True when bytes were sent."""
    bar = bar or progress.Null()
    if registry.blob_exists(blob.digest):
        log.verbose(f"{blob.what} {blob.digest}: already on the registry, not sent")
        bar.update(blob.size)
        return False
    try:
        fileobj = open(blob.path, "rb")
    except OSError as err:
        raise OCIError(f"reading {blob.path}: {err.strerror}") from None
    with fileobj:
        _Upload(registry, blob, fileobj, bar, chunk_size).run()
    return True


class _Upload:
    """One blob's upload session, resumable."""

    def __init__(self, registry: Registry, blob: BlobSource, fileobj, bar, chunk_size: int):
        self.registry = registry
        self.blob = blob
        self.fileobj = fileobj
        self.bar = bar
        self.chunk_size = chunk_size if chunk_size > 0 else blob.size
        self.counted = 0  # bytes of this blob the bar has counted
        self.location = ""  # the URL of the next request of the upload session

    def count(self, n: int) -> None:
        self.counted += n
        self.bar.update(n)

    def run(self) -> None:
        self.location = self.registry.start_upload()
        held = 0
        for attempt in range(RETRIES + 1):
            try:
                self.send(held)
                self.registry.finish_upload(self.location, self.blob.digest)
                self.count(self.blob.size - self.counted)
                return
            except transport.TransientError as err:
                if attempt == RETRIES:
                    raise OCIError(f"{err.message} (gave up after {RETRIES} retries)",
                                   err.hint, in_context=err.in_context) from None
                log.warning(f"{self.blob.what} {self.blob.digest[7:19]}: upload failed: "
                            f"{err.message}; resuming ({attempt + 1}/{RETRIES})")
                time.sleep(RETRY_WAIT_S * (attempt + 1))
                held = self.resume_point()

    def send(self, held: int) -> None:
        """PATCH bytes [held, size) in chunks. Each answer names the URL of the next request
        (distribution's carries the session's state), kept for a resumption too."""
        offset = held
        while offset < self.blob.size:
            count = min(self.chunk_size, self.blob.size - offset)
            body = transport.FileBody(self.fileobj, self.blob.offset + offset, count,
                                      self.count)
            self.location = self.registry.upload_chunk(self.location, body, offset)
            offset += count

    def resume_point(self) -> int:
        """Where to go on: what the session holds, or a new session from byte 0."""
        status = self.registry.upload_status(self.location)
        if status is None:
            log.verbose(f"{self.blob.what}: the registry forgot the upload; starting over")
            held, self.location = 0, self.registry.start_upload()
        else:
            held, self.location = status
            if held > self.blob.size:
                held, self.location = 0, self.registry.start_upload()
        log.verbose(f"{self.blob.what} {self.blob.digest[7:19]}: registry holds {held} of "
                    f"{self.blob.size} bytes")
        self.count(held - self.counted)
        return held


def push_manifest(registry: Registry, reference: str, data: bytes, media_type: str) -> str:
    """PUT the manifest under `reference` (a tag); its digest."""
    return registry.put_manifest(reference, data, media_type)


def push_bytes(registry: Registry, data: bytes, digest: str, what: str = "blob") -> bool:
    """A small blob (a config): HEAD, then POST and one PUT carrying the bytes."""
    if registry.blob_exists(digest):
        return False
    for attempt in range(RETRIES + 1):
        try:
            registry.finish_upload(registry.start_upload(), digest, data)
            return True
        except transport.TransientError as err:
            if attempt == RETRIES:
                raise OCIError(f"{err.message} (gave up after {RETRIES} retries)",
                               err.hint, in_context=err.in_context) from None
            log.warning(f"{what}: upload failed: {err.message}; retrying")
            time.sleep(RETRY_WAIT_S * (attempt + 1))
    raise AssertionError("unreachable")
