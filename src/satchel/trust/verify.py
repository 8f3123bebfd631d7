"""Verifying the signatures of a SIF image, as the reference's integrity.Verifier does.

Tasks (which signatures to check, over which objects):
- default: every object group, each against the signatures linked to the group; every object
  of the group must be covered, exactly;
- --group-id N: that group; --sif-id N: the object's group, the object alone (a subset);
- with legacy (Singularity 3.x) signatures: the primary partition alone by default, each
  grouped object with --all, a group's objects hashed together with --group-id.

Unlike the reference, which stops at the first failure, every signature is checked and each
failure recorded, so the report says everything that is wrong; the verdict is the same.
"""

from __future__ import annotations

from satchel.errors import TrustError
from satchel.image import sif
from satchel.trust import dsse, metadata, pgp

LEGACY_PREFIX = b"SIFHASH:\n"


class KeyMaterial:
    """What signatures may be checked against: PGP keyring files (+ extra binary certificates)
    and PEM public keys for DSSE."""

    __slots__ = ("keyrings", "extra_pgp", "dsse_keys", "names")

    def __init__(self, keyrings=(), extra_pgp: bytes = b"", dsse_keys=(), names=None):
        self.keyrings = list(keyrings)
        self.extra_pgp = extra_pgp
        self.dsse_keys = list(dsse_keys)
        self.names = names or {}   # fingerprint -> (name, where: "LOCAL"|"GLOBAL"|"GIVEN")


class SignatureResult:
    """One signature object checked: who signed, what it covers, what failed."""

    __slots__ = ("sig_id", "kind", "signer", "name", "where", "verified", "error", "failed_object",
                 "target", "entity")

    def __init__(self, sig_id: int, kind: str, target: str = "", entity: str = ""):
        self.sig_id = sig_id
        self.target = target          # what the signature is checked for: "object group 1"
        self.entity = entity          # the fingerprint its descriptor claims (unverified)
        self.kind = kind              # "pgp" | "dsse" | "legacy"
        self.signer = ""              # PGP fingerprint, or DSSE key id
        self.name = ""
        self.where = ""
        self.verified: list[sif.Descriptor] = []
        self.error: str | None = None
        self.failed_object: sif.Descriptor | None = None


class Report:
    __slots__ = ("path", "results", "errors")

    def __init__(self, path: str):
        self.path = path
        self.results: list[SignatureResult] = []
        self.errors: list[str] = []   # failures not tied to one signature (e.g. none found)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.results) and \
            all(r.error is None for r in self.results)

    def first_error(self) -> str:
        for r in self.results:
            if r.error:
                return f"signature object {r.sig_id}: {r.error}" if r.sig_id else r.error
        return self.errors[0] if self.errors else "no signature verified"


def _is_legacy(data: bytes) -> bool:
    return pgp.is_clearsigned(data) and pgp.clearsigned_text(data).startswith(LEGACY_PREFIX)


def _group_ids(f: sif.SIFFile) -> list[int]:
    return sorted({d.group_id for d in f.descriptors if d.group_id})


def _group_objects(f: sif.SIFFile, group_id: int) -> list[sif.Descriptor]:
    found = [d for d in f.descriptors if d.group_id == group_id]
    if not found:
        raise TrustError(f"object group {group_id} not found in {f.path}")
    return found


def _signatures(f: sif.SIFFile, target: int, is_group: bool, legacy: bool | None):
    sigs = []
    for d in f.descriptors:
        if d.datatype != sif.DATA_SIGNATURE or d.link_id != target or \
                d.link_is_group != is_group:
            continue
        if legacy is not None and _is_legacy(f.read_data(d.id)) != legacy:
            continue
        sigs.append(d)
    return sigs


class _Task:
    """Signatures linked to a group (or, legacy, an object) and the objects they must cover."""

    __slots__ = ("group_id", "object_id", "objects", "subset", "legacy")

    def __init__(self, group_id, object_id, objects, subset, legacy):
        self.group_id = group_id
        self.object_id = object_id
        self.objects = objects
        self.subset = subset
        self.legacy = legacy

    def describe(self) -> str:
        return f"object {self.object_id}" if self.object_id else f"object group {self.group_id}"


def _tasks(f: sif.SIFFile, group_ids, object_ids, legacy: bool, all_: bool) -> list[_Task]:
    tasks = []
    if legacy:
        if all_:
            object_ids = sorted(d.id for d in f.descriptors
                                if d.datatype != sif.DATA_SIGNATURE and d.group_id)
        elif not group_ids and not object_ids:
            primary = f.primary_partition()
            if primary is None:
                raise TrustError(f"{f.path} has no primary system partition to verify")
            object_ids = [primary.id]
        for gid in group_ids:
            tasks.append(_Task(gid, 0, _group_objects(f, gid), False, True))
        for oid in object_ids:
            d = f.get(oid)
            tasks.append(_Task(d.group_id, oid, [d], False, True))
        return tasks
    if not group_ids and not object_ids:
        group_ids = _group_ids(f)
        if not group_ids:
            raise TrustError(f"{f.path} has no object groups: nothing is signed")
    for gid in group_ids:
        tasks.append(_Task(gid, 0, _group_objects(f, gid), False, False))
    for oid in object_ids:
        d = f.get(oid)
        if not d.group_id:
            raise TrustError(f"object {oid} is not in an object group: it cannot be signed")
        tasks.append(_Task(d.group_id, oid, [d], True, False))
    return tasks


def verify_image(path: str, keys: KeyMaterial, group_ids=(), object_ids=(),
                 legacy: bool = False, all_: bool = False) -> Report:
    report = Report(path)
    with sif.SIFFile.open(path) as f:
        if not legacy:
            loose = [d.id for d in f.descriptors
                     if d.datatype != sif.DATA_SIGNATURE and not d.group_id]
            if loose:
                report.errors.append(f"non-signature object {loose[0]} not associated with "
                                     f"object group")
                return report
        for task in _tasks(f, list(group_ids), list(object_ids), legacy, all_):
            if task.legacy and task.object_id:
                sigs = _signatures(f, task.object_id, False, None)
            else:
                sigs = _signatures(f, task.group_id, True, task.legacy)
            if not sigs:
                what = "object group" if not task.legacy or not task.object_id else "object"
                ident = task.group_id if what == "object group" else task.object_id
                hint = "" if legacy or not _signatures(f, task.group_id, True, True) else \
                    " (only legacy signatures: try --legacy-insecure)"
                report.errors.append(f"signature not found for {what} {ident}{hint}")
                continue
            for sig in sigs:
                report.results.append(_check(f, task, sig, keys))
    return report


def _check(f: sif.SIFFile, task: _Task, sig: sif.Descriptor, keys: KeyMaterial):
    data = f.read_data(sig.id)
    result = SignatureResult(sig.id, "legacy" if task.legacy else "pgp", task.describe(),
                             (sig.entity or b"").hex().upper())
    try:
        hash_name = metadata.SIF_HASHES.get(sig.hash_type)
        if hash_name is None:
            raise TrustError(f"unknown hash type {sig.hash_type} in its descriptor")
        if dsse.is_envelope(data):
            result.kind = "dsse"
            if not keys.dsse_keys:
                raise TrustError("key material not provided for DSSE envelope signature",
                                 hint="give the signer's public key with --key PUBLIC.pem")
            message, accepted = dsse.verify(data, keys.dsse_keys, hash_name)
            result.signer = dsse.key_id(accepted[0])
            result.name = "PEM key"
            result.where = "GIVEN"
        elif pgp.is_clearsigned(data):
            checked = pgp.verify_clearsigned(data, keys.keyrings, keys.extra_pgp)
            message = checked.text
            result.signer = checked.fingerprint
            result.name, result.where = keys.names.get(checked.fingerprint, ("unknown", ""))
            entity = sig.entity or b""
            if entity and entity.hex().upper() != checked.fingerprint:
                raise TrustError("fingerprint in descriptor does not correspond to signing "
                                 "entity")
        else:
            raise TrustError("signature format not recognized (garbled or truncated)")
        if task.legacy:
            _check_legacy(f, task, message, hash_name, result)
        else:
            signed = metadata.SignedMetadata(message, metadata.group_min_id(f, task.group_id))
            if not task.subset:
                ids = {d.id for d in task.objects}
                extra = sorted(set(signed.objects) - ids)
                missing = sorted(ids - set(signed.objects))
                if missing:
                    raise TrustError(f"object {missing[0]}: object not signed")
                if extra:
                    raise TrustError(f"object {extra[0]}: signed object not found")
            result.verified = signed.check(f, task.objects)
    except metadata.IntegrityError as err:
        result.error = err.message
        if err.object_id:
            result.failed_object = f.get(err.object_id)
    except TrustError as err:
        result.error = err.message
    return result


def _check_legacy(f, task, message: bytes, hash_name: str, result: SignatureResult) -> None:
    text = message[len(LEGACY_PREFIX):] if message.startswith(LEGACY_PREFIX) else None
    if text is None:
        raise TrustError("legacy signature holds no SIFHASH digest")
    try:
        want = bytes.fromhex(text.rstrip(b"\n").decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise TrustError("malformed legacy SIFHASH digest") from None
    h = metadata.new_hash(hash_name)
    for d in sorted(task.objects, key=lambda x: x.id):
        _stream(f, d, h)
    if h.digest() != want:
        ident = task.object_id
        raise metadata.IntegrityError(
            "data object integrity compromised" + (f": {ident}" if ident else ""), "object",
            ident)
    result.verified = list(task.objects)


def _stream(f: sif.SIFFile, d: sif.Descriptor, h) -> None:
    import os
    offset, left = d.offset, d.size
    while left > 0:
        chunk = os.pread(f.fd, min(left, metadata.CHUNK), offset)
        if not chunk:
            raise TrustError(f"object {d.id}: unexpected end of file")
        h.update(chunk)
        offset += len(chunk)
        left -= len(chunk)
