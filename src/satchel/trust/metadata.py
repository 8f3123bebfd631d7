"""The image metadata a (non-legacy) signature covers, as the reference computes it.

A signature's message is the JSON

    {"version":1,"header":{"digest":"sha256:..."},
     "objects":[{"relativeId":0,"descriptorDigest":"sha256:...","objectDigest":"sha256:..."}]}

- the header digest covers the launch script, magic, version and UUID (not the arch, times or
  counts, which later additions change);
- a descriptor digest covers datatype, used flag, the ID relative to the group's lowest ID, the
  raw link, size, creation time, uid, gid, name and extra (not the offset, modification time or
  group, which signing other groups may change);
- an object digest covers the object's data.

Hashing streams the data in large chunks: a multi-GiB partition is never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from satchel.errors import TrustError
from satchel.image import sif

VERSION = 1
CHUNK = 8 << 20

# descriptor hash-type field -> hashlib name (the reference's hashType values)
SIF_HASHES = {1: "sha256", 2: "sha384", 3: "sha512", 4: "blake2s", 5: "blake2b"}
# digest name prefix in the JSON -> hashlib name
DIGEST_NAMES = {"sha224": "sha224", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512",
                "sha512_224": "sha512_224", "sha512_256": "sha512_256"}
_INTEGRITY = struct.Struct("<iBIIqqqq")


class IntegrityError(TrustError):
    """A digest in a signature does not match the image: header, descriptor or object data."""

    def __init__(self, message: str, what: str, object_id: int = 0):
        super().__init__(message)
        self.what = what            # "header" | "descriptor" | "object"
        self.object_id = object_id


def header_bytes(f: sif.SIFFile) -> bytes:
    """The integrity-protected header fields: launch script, magic, version, UUID."""
    raw = f.header.pack()
    return raw[0:45] + raw[48:64]


def group_min_id(f: sif.SIFFile, group_id: int) -> int:
    ids = [d.id for d in f.descriptors if d.group_id == group_id]
    if not ids:
        raise TrustError(f"object group {group_id} not found")
    return min(ids)


def descriptor_bytes(d: sif.Descriptor, relative_id: int) -> bytes:
    packed = d.pack()
    return _INTEGRITY.pack(d.datatype, 1 if d.used else 0, relative_id, d.raw_link_id, d.size,
                           d.created, d.uid, d.gid) + packed[-512:]


def new_hash(name: str):
    return hashlib.new(name) if not name.startswith("blake2") else getattr(hashlib, name)()


def hash_object(f: sif.SIFFile, d: sif.Descriptor, name: str = "sha256") -> bytes:
    """Digest of the object's data, read in large chunks."""
    h = new_hash(name)
    offset, left = d.offset, d.size
    try:
        while left > 0:
            chunk = os.pread(f.fd, min(left, CHUNK), offset)
            if not chunk:
                raise TrustError(f"object {d.id} of {f.path}: unexpected end of file")
            h.update(chunk)
            offset += len(chunk)
            left -= len(chunk)
    except OSError as err:
        raise TrustError(f"reading object {d.id} of {f.path}: {err.strerror or err}") from None
    return h.digest()


def _digest_text(name: str, value: bytes) -> str:
    return f"{name}:{value.hex()}"


def image_metadata(f: sif.SIFFile, group_id: int, objects: list[sif.Descriptor],
                   hash_name: str = "sha256") -> bytes:
    """The JSON message a signature over `objects` (all in group_id) signs, byte for byte as
    Go's encoding/json writes it."""
    min_id = group_min_id(f, group_id)
    entries = []
    for d in sorted(objects, key=lambda x: x.id):
        rel = d.id - min_id
        entries.append({
            "relativeId": rel,
            "descriptorDigest": _digest_text(hash_name, _h(hash_name, descriptor_bytes(d, rel))),
            "objectDigest": _digest_text(hash_name, hash_object(f, d, hash_name)),
        })
    doc = {"version": VERSION,
           "header": {"digest": _digest_text(hash_name, _h(hash_name, header_bytes(f)))},
           "objects": entries}
    return json.dumps(doc, separators=(",", ":")).encode()


def _h(name: str, data: bytes) -> bytes:
    h = new_hash(name)
    h.update(data)
    return h.digest()


def _parse_digest(text) -> tuple[str, bytes]:
    if not isinstance(text, str) or text.count(":") != 1:
        raise TrustError(f"malformed digest {text!r} in signed metadata")
    name, value = text.split(":")
    if name not in DIGEST_NAMES:
        raise TrustError(f"unsupported digest algorithm {name!r} in signed metadata")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise TrustError(f"malformed digest {text!r} in signed metadata") from None
    if len(raw) != hashlib.new(DIGEST_NAMES[name]).digest_size:
        raise TrustError(f"malformed digest {text!r} in signed metadata")
    return DIGEST_NAMES[name], raw


class SignedMetadata:
    """Parsed metadata from a verified signature: the header digest and, per absolute object ID,
    its descriptor and data digests."""

    __slots__ = ("header", "objects")

    def __init__(self, message: bytes, min_id: int):
        try:
            doc = json.loads(message)
            if doc.get("version") != VERSION:
                raise TrustError(f"unsupported signed metadata version {doc.get('version')!r}")
            self.header = _parse_digest(doc["header"]["digest"])
            self.objects = {}
            for entry in doc["objects"] or ():
                rel = entry["relativeId"]
                if not isinstance(rel, int) or rel < 0:
                    raise TrustError(f"malformed relative id {rel!r} in signed metadata")
                self.objects[min_id + rel] = (rel, _parse_digest(entry["descriptorDigest"]),
                                              _parse_digest(entry["objectDigest"]))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TrustError(f"signed metadata is not valid image metadata: {err}") from None

    def check(self, f: sif.SIFFile, objects: list[sif.Descriptor]) -> list[sif.Descriptor]:
        """Raise IntegrityError at the first mismatch (header, then each object's descriptor and
        data); return the objects checked."""
        name, value = self.header
        if _h(name, header_bytes(f)) != value:
            raise IntegrityError("header integrity compromised", "header")
        checked = []
        for d in sorted(objects, key=lambda x: x.id):
            entry = self.objects.get(d.id)
            if entry is None:
                raise TrustError(f"object {d.id}: object not signed")
            rel, (dname, dvalue), (oname, ovalue) = entry
            if _h(dname, descriptor_bytes(d, rel)) != dvalue:
                raise IntegrityError(f"data object descriptor integrity compromised: {d.id}",
                                     "descriptor", d.id)
            if hash_object(f, d, oname) != ovalue:
                raise IntegrityError(f"data object integrity compromised: {d.id}", "object", d.id)
            checked.append(d)
        return checked
