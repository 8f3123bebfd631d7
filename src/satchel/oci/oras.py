"""SIF files as ORAS artifacts in OCI registries: `satchel push IMAGE.sif oras://REG/REPO:TAG`,
`satchel pull [OUT.sif] oras://REG/REPO:TAG` and `Bootstrap: oras`.

The artifact has Apptainer's shape (internal/pkg/client/oras in Apptainer 1.3), so either tool
pulls what the other pushed:

    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": {"mediaType": "application/vnd.sylabs.sif.config.v1+json",
                "digest": <sha256 of "{}">, "size": 2, "data": "e30="},
     "layers": [{"mediaType": "application/vnd.sylabs.sif.layer.v1.sif", "digest": ..., "size": ...,
                 "annotations": {"org.opencontainers.image.title": "NAME.sif"}}],
     "annotations": {"org.opencontainers.image.created": <the SIF's creation time, if set>}}

A pull accepts exactly one layer of the SIF media type (or the misspelt one of Singularity < 3.7)
and, like Apptainer, does not insist on the config's media type. The SIF goes through the cache
as a blob (blob/sha256/<layer hex>): downloaded to tmp/, verified against the manifest's digest,
checked to be a SIF, renamed in; a second pull of the same artifact transfers only the manifest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time

from satchel import log
from satchel.errors import OCIError, SatchelError
from satchel.oci import blobs, progress, push as pushing
from satchel.oci import digest as digests, manifest as mt
from satchel.oci.cache import Cache
from satchel.oci.reference import DockerRef, parse_docker

SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
SIF_LAYER_PROTO = "appliciation/vnd.sylabs.sif.layer.tar"  # sic: Singularity < 3.7
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
HASH_BLOCK = 1 << 20


class OrasRef(DockerRef):
    """A registry reference written oras://REGISTRY/REPO[:TAG|@DIGEST]."""

    __slots__ = ()
    transport = "oras"

    def __str__(self) -> str:
        return "oras://" + DockerRef.__str__(self)[len("docker://"):]


def parse(uri: str) -> OrasRef:
    if not uri.startswith("oras://"):
        raise OCIError(f"invalid ORAS reference {uri!r}: expected oras://REGISTRY/REPO[:TAG]")
    ref = parse_docker(uri[len("oras://"):], uri)
    return OrasRef(ref.registry, ref.repository, ref.tag, ref.digest, ref.scheme)


def is_oras(uri: str) -> bool:
    return uri.startswith("oras://")


# ---------------------------------------------------------------- push
def sif_created(path: str) -> int | None:
    """The SIF's creation time (Unix seconds), after checking that `path` is a SIF;
    None for deterministic images (Go's zero time)."""
    from satchel.image import sif
    try:
        with sif.SIFFile.open(path) as image:
            created = image.header.created
    except SatchelError as err:
        raise OCIError(f"cannot push {path} as a SIF: {err.message}") from None
    return None if created in (0, sif.ZERO_TIME) else created


def hash_file(path: str) -> tuple[str, int]:
    """("sha256:<hex>", size) of a file, read once."""
    import hashlib
    hasher = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(HASH_BLOCK)
            view = memoryview(buf)
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                hasher.update(view[:n])
                size += n
    except OSError as err:
        raise OCIError(f"reading {path}: {err.strerror}") from None
    return "sha256:" + hasher.hexdigest(), size


def artifact_manifest(layer_digest: str, size: int, title: str, created: int | None) -> bytes:
    """The manifest Apptainer writes for a SIF (field order as go-containerregistry's)."""
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "config": {"mediaType": SIF_CONFIG, "size": len(EMPTY_CONFIG),
                      "digest": str(digests.of_bytes(EMPTY_CONFIG)),
                      "data": base64.b64encode(EMPTY_CONFIG).decode()},
           "layers": [{"mediaType": SIF_LAYER, "size": size, "digest": layer_digest,
                       "annotations": {TITLE: title}}]}
    if created is not None:
        doc["annotations"] = {CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(created))}
    return json.dumps(doc, separators=(",", ":")).encode()


def push(path: str, uri: str, fetch, chunk_size: int = 0) -> str:
    """Push the SIF `path` to `uri` (oras://...); the manifest's digest."""
    ref = parse(uri)
    created = sif_created(path)
    digest, size = hash_file(path)
    manifest = artifact_manifest(digest, size, os.path.basename(path), created)
    registry = pushing.open_registry(ref, fetch)
    bar = progress.Bar("Uploading", size)
    try:
        pushing.push_blob(registry, pushing.BlobSource(path, digest, size, what="SIF"), bar,
                          chunk_size)
        pushing.push_bytes(registry, EMPTY_CONFIG, str(digests.of_bytes(EMPTY_CONFIG)),
                           "config")
        pushing.push_manifest(registry, ref.reference, manifest, mt.OCI_MANIFEST)
    except OCIError as err:
        raise err.in_context_of(f"while pushing {path} to {ref}") from None
    finally:
        bar.close()
    return str(digests.of_bytes(manifest))


# ---------------------------------------------------------------- pull
def sif_layer(doc, ref: OrasRef) -> mt.Descriptor:
    """The one SIF layer of an ORAS manifest; OCIError for anything else."""
    if not isinstance(doc, mt.Manifest):
        raise OCIError(f"{ref}: not a SIF artifact: the reference is an image index",
                       hint="container images are pulled with docker://", in_context=True)
    for layer in doc.layers:
        if layer.media_type not in (SIF_LAYER, SIF_LAYER_PROTO):
            raise OCIError(f"{ref}: not a SIF artifact: layer media type "
                           f"{layer.media_type!r}, expected {SIF_LAYER!r}",
                           hint="container images are pulled with docker://", in_context=True)
    if len(doc.layers) != 1:
        raise OCIError(f"{ref}: not a SIF artifact: {len(doc.layers)} layers, expected one",
                       in_context=True)
    return doc.layers[0]


def fetch(uri: str, fetch_opts, cache: Cache) -> str:
    """The pulled SIF, verified, in `cache` (downloaded unless it is there already)."""
    from satchel.oci import auth, source
    from satchel.oci.registry import Registry
    ref = parse(uri)
    cache.ensure()
    creds = auth.find_credentials(ref.auth_keys, fetch_opts.username, fetch_opts.password,
                                  authfile=fetch_opts.authfile)
    registry = Registry(ref, creds, plain_http=fetch_opts.plain_http)
    try:
        doc = source._fetch_manifest(registry, cache, ref.reference, str(ref))
        layer = sif_layer(doc, ref)
        if cache.has_blob(layer.digest, layer.size):
            log.info(f"Using cached SIF image for {layer.digest}")
        bar = progress.Bar("Downloading", layer.size)
        try:
            path = blobs.ensure_blob(cache, layer, lambda offset: registry.open_blob(
                str(layer.digest), offset), bar.update, what="SIF")
        finally:
            bar.close()
    except OCIError as err:
        raise err.in_context_of(f"while pulling {ref}") from None
    _check_sif(path, ref)
    return path


def _check_sif(path: str, ref: OrasRef) -> None:
    """A verified blob that is not a SIF leaves the cache: nothing may use it later."""
    from satchel.image import sif
    try:
        with sif.SIFFile.open(path):
            return
    except SatchelError as err:
        detail = err.message.rsplit(": ", 1)[-1]
    try:
        os.unlink(path)
    except OSError:
        pass
    raise OCIError(f"while pulling {ref}: the artifact is not a SIF file ({detail})")


def pull(uri: str, dest: str, force: bool, fetch_opts) -> str:
    """Pull the SIF at `uri` into the file `dest` through the cache; returns `dest`."""
    from satchel.oci import pull as pulling
    pulling.check_destination(dest, force)
    cache = fetch_opts.cache()
    temp_root = None
    if cache is None:  # --disable-cache: a private cache, removed afterwards
        temp_root = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.cache-",
                                     dir=os.path.dirname(dest))
        cache = Cache(temp_root)
    try:
        path = fetch(uri, fetch_opts, cache)
        pulling.install(path, dest, force)
    finally:
        if temp_root:
            shutil.rmtree(temp_root, ignore_errors=True)
    return dest
