"""Writing OCI images: layer tarballs entry by entry, blobs, manifests, indexes and image
layouts. The tests and the benchmark make their images with it (including layers no honest
tool would write: `..` names, links out of the root, device nodes), and it is the seed of a
future `satchel push`/export.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

from satchel.oci import manifest as mt

# fixed so that layers made twice from the same entries have the same digest
EPOCH = 1700000000


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class Layer:
    """A layer tarball built in memory, entry by entry."""

    def __init__(self):
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, kind, mode, uid=0, gid=0, mtime=EPOCH):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = mtime
        return info

    def dir(self, name, mode=0o755, **kw) -> "Layer":
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name, data: bytes | str = b"", mode=0o644, **kw) -> "Layer":
        if isinstance(data, str):
            data = data.encode()
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def host_file(self, name, path, mode=None, **kw) -> "Layer":
        with open(path, "rb") as fh:
            data = fh.read()
        return self.file(name, data, mode if mode is not None else os.stat(path).st_mode & 0o7777,
                         **kw)

    def symlink(self, name, target, **kw) -> "Layer":
        info = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, name, target, **kw) -> "Layer":
        info = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def device(self, name, kind="c", major=1, minor=3, mode=0o666, **kw) -> "Layer":
        info = self._info(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, mode, **kw)
        info.devmajor, info.devminor = major, minor
        self._tar.addfile(info)
        return self

    def fifo(self, name, mode=0o644, **kw) -> "Layer":
        self._tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, **kw))
        return self

    def whiteout(self, path) -> "Layer":
        head, _, base = path.rstrip("/").rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, directory) -> "Layer":
        return self.file(directory.rstrip("/") + "/.wh..wh..opq")

    def tar_bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


class Blob:
    __slots__ = ("data", "media_type", "digest", "diff_id")

    def __init__(self, data: bytes, media_type: str, diff_id: str = ""):
        self.data = data
        self.media_type = media_type
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.diff_id = diff_id or self.digest

    def descriptor(self, **extra) -> dict:
        desc = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        desc.update(extra)
        return desc


def compress_layer(tar: bytes, compression: str = "gzip", docker: bool = False,
                   level: int = 6) -> Blob:
    """A layer blob from an uncompressed tar: gzip, zstd or '' (none)."""
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    if compression == "gzip":
        data = gzip.compress(tar, compresslevel=level, mtime=0)
        kind = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                else "application/vnd.oci.image.layer.v1.tar+gzip")
    elif compression == "zstd":
        from satchel.oci.stream import import_zstandard
        data = import_zstandard().ZstdCompressor(level=min(level, 19)).compress(tar)
        kind = ("application/vnd.docker.image.rootfs.diff.tar.zstd" if docker
                else "application/vnd.oci.image.layer.v1.tar+zstd")
    elif compression == "":
        data = tar
        kind = ("application/vnd.docker.image.rootfs.diff.tar" if docker
                else "application/vnd.oci.image.layer.v1.tar")
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return Blob(data, kind, diff_id)


class Image:
    """A single-platform image: config + layers -> manifest."""

    def __init__(self, layers: list[Blob], config: dict | None = None, arch: str = "amd64",
                 variant: str = "", docker: bool = False, os_name: str = "linux"):
        self.layers = layers
        self.docker = docker
        self.platform = {"architecture": arch, "os": os_name}
        if variant:
            self.platform["variant"] = variant
        doc = {"architecture": arch, "os": os_name, "created": "2023-11-14T22:13:20Z",
               "config": dict(config or {}),
               "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}
        if variant:
            doc["variant"] = variant
        self.config = Blob(_canonical(doc), mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)
        manifest = {"schemaVersion": 2,
                    "mediaType": mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
                    "config": self.config.descriptor(),
                    "layers": [l.descriptor() for l in layers]}
        self.manifest = Blob(_canonical(manifest), manifest["mediaType"])

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers, self.manifest]


class Index:
    """A multi-platform index (or Docker manifest list) over images."""

    def __init__(self, images: list[Image], docker: bool = False):
        self.images = images
        doc = {"schemaVersion": 2, "mediaType": mt.DOCKER_LIST if docker else mt.OCI_INDEX,
               "manifests": [im.manifest.descriptor(platform=im.platform) for im in images]}
        self.manifest = Blob(_canonical(doc), doc["mediaType"])

    def blobs(self) -> list[Blob]:
        out = []
        for image in self.images:
            out += image.blobs()
        return out + [self.manifest]


def write_layout(directory: str, tagged: dict[str, Image | Index]) -> None:
    """An OCI image layout at `directory` with each image under its tag (ref.name)."""
    blob_dir = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blob_dir, exist_ok=True)
    with open(os.path.join(directory, "oci-layout"), "w") as fh:
        fh.write('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for tag, item in tagged.items():
        for blob in item.blobs():
            path = os.path.join(blob_dir, blob.digest.split(":", 1)[1])
            if not os.path.exists(path):
                with open(path, "wb") as fh:
                    fh.write(blob.data)
        entries.append(item.manifest.descriptor(
            annotations={"org.opencontainers.image.ref.name": tag}))
    with open(os.path.join(directory, "index.json"), "wb") as fh:
        fh.write(_canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                             "manifests": entries}))
