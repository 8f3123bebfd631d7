"""Adding signatures to a SIF image, as the reference's integrity.Signer does.

One signature object per object group (default), per given group, or per group of the given
objects. Each holds the signed image metadata (metadata.py): a PGP clear-signed message, or a
DSSE envelope for a PEM key. Its descriptor: type Signature, no group, linked to the group
(group flag set), hash type SHA-256, entity = the PGP key's fingerprint (zeros for DSSE).

All or nothing: every message is hashed and signed before the image is touched (a wrong
passphrase or a bad key changes nothing), and if appending fails half-way the header, the
descriptor table and the file size are put back as they were.
"""

from __future__ import annotations

import os

from satchel.errors import SIFError, TrustError
from satchel.image import sif
from satchel.trust import dsse, metadata, pgp


class PGPSigner:
    def __init__(self, key: pgp.Key, passphrase: str | None):
        self.key = key
        self.passphrase = passphrase
        self.entity = bytes.fromhex(key.fingerprint)
        self.hash_type = pgp.DESCRIPTOR_HASH

    def sign(self, message: bytes) -> bytes:
        return pgp.clearsign(self.key, message, self.passphrase)


class DSSESigner:
    def __init__(self, private_key):
        self.private_key = private_key
        self.entity = b""
        self.hash_type = dsse.DESCRIPTOR_HASH

    def sign(self, message: bytes) -> bytes:
        return dsse.sign(self.private_key, message)


def _plan(f: sif.SIFFile, group_ids: list[int], object_ids: list[int]):
    """[(group id, objects to cover)] as the reference chooses them."""
    plan = []
    for gid in group_ids:
        objects = [d for d in f.descriptors if d.group_id == gid]
        if not objects:
            raise TrustError(f"object group {gid} not found in {f.path}")
        plan.append((gid, objects))
    if object_ids:
        by_group: dict[int, list] = {}
        for oid in object_ids:
            d = f.get(oid)
            if not d.group_id:
                raise TrustError(f"object {oid} is not in an object group: it cannot be signed")
            by_group.setdefault(d.group_id, []).append(d)
        plan.extend(sorted(by_group.items()))
    if not plan:
        gids = sorted({d.group_id for d in f.descriptors if d.group_id})
        if not gids:
            raise TrustError(f"{f.path} has no object groups to sign")
        plan = [(gid, [d for d in f.descriptors if d.group_id == gid]) for gid in gids]
    return plan


def sign_image(path: str, signer, group_ids=(), object_ids=()) -> list[int]:
    """Sign and append; return the new signature objects' IDs."""
    with sif.SIFFile.open(path) as f:
        plan = _plan(f, list(group_ids), list(object_ids))
        objects = []
        for gid, covered in plan:
            message = metadata.image_metadata(f, gid, covered)
            objects.append(sif.NewObject(
                datatype=sif.DATA_SIGNATURE, data=signer.sign(message), group_id=0,
                link_id=gid, link_is_group=True, hash_type=signer.hash_type,
                entity=signer.entity))
    return _append_all(path, objects)


def _append_all(path: str, objects: list) -> list[int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        with sif.SIFFile.open(path) as f:
            h = f.header
            table_at, table_len = h.descriptors_offset, h.descriptors_total * sif.DESCRIPTOR_SIZE
            size = f.file_size
        saved_table = os.pread(fd, table_len, table_at)
        saved_header = os.pread(fd, sif.HEADER_SIZE, 0)
        ids = []
        try:
            for obj in objects:
                ids.append(sif.add_object(path, obj))
        except BaseException:
            os.pwrite(fd, saved_table, table_at)
            os.pwrite(fd, saved_header, 0)
            os.ftruncate(fd, size)
            raise
        return ids
    except SIFError as err:
        raise TrustError(f"adding signatures to {path}: {err}") from None
    except OSError as err:
        raise TrustError(f"adding signatures to {path}: {(err.strerror or str(err)).lower()}") \
            from None
    finally:
        os.close(fd)
