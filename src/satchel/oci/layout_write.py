"""Writing an exported image (oci/export.py) as an OCI image layout: a directory (oci:DIR:TAG)
or a tar file of one (oci-archive:FILE:TAG), as skopeo and containerd read them.

The archive is written to a temporary name next to FILE and renamed: an interrupted export
leaves no partial file. Its entries are in a fixed order with fixed owners and times, so the
same SIF gives the same archive, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile

from satchel.errors import OCIError
from satchel.oci import manifest as mt

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def _index(image, tag: str, existing: dict | None = None) -> bytes:
    entries = [m for m in (existing or {}).get("manifests", [])
               if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) != tag]
    entries.append({"mediaType": mt.OCI_MANIFEST, "digest": image.manifest_digest,
                    "size": len(image.manifest), "annotations": {REF_NAME: tag}})
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries},
                      separators=(",", ":")).encode()


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def to_directory(image, directory: str, tag: str) -> None:
    """Add the image to the layout at `directory` (created if absent) under `tag`."""
    blobs = os.path.join(directory, "blobs", "sha256")
    try:
        os.makedirs(blobs, exist_ok=True)
        existing = None
        index_path = os.path.join(directory, "index.json")
        if os.path.exists(index_path):
            with open(index_path, "rb") as fh:
                existing = mt.load_json(fh.read(), index_path)
        for digest, data in ((image.config_digest, image.config),
                             (image.manifest_digest, image.manifest)):
            _write(os.path.join(blobs, _hex(digest)), data)
        layer_path = os.path.join(blobs, _hex(image.layer.digest))
        if not os.path.exists(layer_path):
            temp = layer_path + ".tmp"
            shutil.copyfile(image.layer.path, temp)
            os.rename(temp, layer_path)
        _write(os.path.join(directory, "oci-layout"), LAYOUT)
        _write(index_path, _index(image, tag, existing), replace=True)
    except OSError as err:
        raise OCIError(f"writing OCI layout {directory}: {err.strerror}") from None


def _write(path: str, data: bytes, replace: bool = False) -> None:
    if os.path.exists(path) and not replace:
        return
    temp = path + ".tmp"
    with open(temp, "wb") as fh:
        fh.write(data)
    os.rename(temp, path)


def to_archive(image, path: str, tag: str) -> None:
    """An OCI layout as a tar file at `path` (replaced if it exists)."""
    temp = os.path.join(os.path.dirname(os.path.abspath(path)),
                        f".{os.path.basename(path)}.export-{os.getpid()}")
    try:
        with open(temp, "wb") as out:
            _member(out, "oci-layout", LAYOUT)
            _member(out, "index.json", _index(image, tag))
            _member(out, "blobs/", None)
            _member(out, "blobs/sha256/", None)
            for digest, data in sorted(((image.config_digest, image.config),
                                        (image.manifest_digest, image.manifest))):
                _member(out, f"blobs/sha256/{_hex(digest)}", data)
            _member_file(out, f"blobs/sha256/{_hex(image.layer.digest)}", image.layer.path,
                         image.layer.size)
            out.write(b"\0" * 1024)
        os.rename(temp, path)
    except OSError as err:
        raise OCIError(f"writing {path}: {err.strerror}") from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def _header(name: str, size: int, directory: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = 0
    return info.tobuf(tarfile.USTAR_FORMAT)


def _member(out, name: str, data: bytes | None) -> None:
    out.write(_header(name, len(data or b""), data is None))
    if data:
        out.write(data)
        out.write(b"\0" * (-len(data) % 512))


def _member_file(out, name: str, source: str, size: int) -> None:
    out.write(_header(name, size, False))
    out.flush()
    with open(source, "rb") as src:
        left, offset = size, 0
        while left:
            n = os.sendfile(out.fileno(), src.fileno(), offset, left)
            if not n:
                raise OSError(5, "layer file ended early")
            offset += n
            left -= n
    out.write(b"\0" * (-size % 512))
