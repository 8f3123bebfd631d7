"""SIF v01 writing: create an image, complete one in place, add, delete and re-mark objects.

Split from sif.py, the reader, because a launch only reads SIF files and the writer is half
the module's bytecode (~30 KB unmarshalled on every launch before). sif.py forwards these
names (sif.create, sif.NewObject, `from satchel.image.sif import add_object` all work), so
callers need not know the split.

The writer follows the layout choices of the reference implementation (Sylabs' `sif`):
descriptor table at 4096, 48 descriptors, data from 32176, partitions aligned to 4096, object
IDs equal to their slot number + 1, "deterministic" images with a nil UUID and Go's zero time.
"""

from __future__ import annotations

import os

from satchel.errors import SIFError
from satchel.image.sif import (_INT32, _INT32_PAIR, _PARTITION_EXTRA, _SIGNATURE_EXTRA,
                               ARCH_UNKNOWN, DATA_CRYPTOMESSAGE, DATA_OCIBLOB, DATA_OCIROOTINDEX,
                               DATA_PARTITION, DATA_SBOM, DATA_SIGNATURE, DATA_TYPES,
                               DEFAULT_DESCRIPTORS, DEFAULT_LAUNCH_SCRIPT, DESCRIPTOR_SIZE,
                               DESCRIPTORS_OFFSET, FORMAT_OPENPGP, FS_SQUASH, GROUP_MASK,
                               HASH_SHA256, MAGIC, MAX_DESCRIPTORS, MESSAGE_CLEARSIGNATURE,
                               NIL_UUID, PART_PRIMSYS, PART_SYSTEM, PARTITION_ALIGNMENT,
                               SBOM_CYCLONEDX_JSON, ZERO_TIME, _raw, arch_code, arch_name,
                               Descriptor, Header, host_arch, SIFFile)


class NewObject:
    """An object to write: content from `data` (bytes) or streamed from the file at `path`.

    Type-specific metadata: fs_type, part_type, arch for partitions (arch defaults to the host's);
    hash_type, entity (fingerprint bytes) for signatures; format_type, message_type for crypto
    messages; sbom_format for SBOMs. OCI blobs get their sha256 digest computed. `extra` (raw
    384 bytes or fewer) overrides all of that. group_id 0 = no group; link_is_group says link_id
    names a group. Alignment defaults to 4096 for partitions and 1 otherwise, as the reference.
    """

    __slots__ = ("datatype", "data", "path", "name", "group_id", "link_id", "link_is_group",
                 "fs_type", "part_type", "arch", "hash_type", "entity", "format_type",
                 "message_type", "sbom_format", "alignment", "extra")

    def __init__(self, *, datatype: int, data: bytes | None = None, path: str | None = None,
                 name: str = "", group_id: int = 1, link_id: int = 0, link_is_group: bool = False,
                 fs_type: int = FS_SQUASH, part_type: int = PART_PRIMSYS, arch: str | None = None,
                 hash_type: int = HASH_SHA256, entity: bytes = b"",
                 format_type: int = FORMAT_OPENPGP, message_type: int = MESSAGE_CLEARSIGNATURE,
                 sbom_format: int = SBOM_CYCLONEDX_JSON, alignment: int | None = None,
                 extra: bytes | None = None):
        self.datatype = datatype
        self.data = data
        self.path = path
        self.name = name
        self.group_id = group_id
        self.link_id = link_id
        self.link_is_group = link_is_group
        self.fs_type = fs_type
        self.part_type = part_type
        self.arch = arch
        self.hash_type = hash_type
        self.entity = entity
        self.format_type = format_type
        self.message_type = message_type
        self.sbom_format = sbom_format
        self.alignment = alignment
        self.extra = extra

    def effective_alignment(self) -> int:
        if self.alignment is not None:
            return max(1, self.alignment)
        return PARTITION_ALIGNMENT if self.datatype == DATA_PARTITION else 1

    def partition_arch(self) -> str:
        return self.arch if self.arch is not None else host_arch()

    def validate(self) -> None:
        if self.datatype not in DATA_TYPES:
            raise SIFError(f"unknown SIF data type {self.datatype:#x}")
        if (self.data is None) == (self.path is None):
            raise SIFError("a new SIF object needs exactly one of data or path")
        if len(_raw(self.name)) > 128:
            raise SIFError(f"object name too long ({len(_raw(self.name))} bytes, at most 128)")
        for what, value in (("group id", self.group_id), ("linked id", self.link_id)):
            if not 0 <= value < GROUP_MASK:
                raise SIFError(f"{what} {value} out of range")
        if self.link_is_group and self.link_id == 0:
            raise SIFError("a link to a group needs a group id")
        if self.extra is not None and len(self.extra) > 384:
            raise SIFError(f"descriptor extra data too long ({len(self.extra)} bytes, at most 384)")
        if self.datatype == DATA_PARTITION and self.extra is None:
            arch_code(self.partition_arch())
        if self.datatype == DATA_SIGNATURE and len(self.entity) > 256:
            raise SIFError(f"signing entity too long ({len(self.entity)} bytes, at most 256)")

    def is_primary(self) -> bool:
        return self.datatype == DATA_PARTITION and self.extra is None and \
            self.part_type == PART_PRIMSYS

    def metadata(self, digest: str | None) -> bytes:
        """The descriptor's `extra` field (unpadded)."""
        if self.extra is not None:
            return self.extra
        if self.datatype == DATA_PARTITION:
            return _PARTITION_EXTRA.pack(self.fs_type, self.part_type,
                                         arch_code(self.partition_arch()))
        if self.datatype == DATA_SIGNATURE:
            return _SIGNATURE_EXTRA.pack(self.hash_type, self.entity)
        if self.datatype == DATA_CRYPTOMESSAGE:
            return _INT32_PAIR.pack(self.format_type, self.message_type)
        if self.datatype == DATA_SBOM:
            return _INT32.pack(self.sbom_format)
        if digest is not None:
            return digest.encode()
        return b""


def _align(offset: int, alignment: int) -> int:
    return offset if alignment <= 1 or offset % alignment == 0 else \
        offset + alignment - offset % alignment


def _write_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _write_object(fd: int, obj: NewObject, offset: int) -> tuple[int, str | None]:
    """Write obj's content at offset; return (bytes written, OCI digest or None)."""
    hasher = None
    if obj.datatype in (DATA_OCIROOTINDEX, DATA_OCIBLOB) and obj.extra is None:
        import hashlib
        hasher = hashlib.sha256()
    if obj.data is not None:
        _write_all(fd, obj.data, offset)
        if hasher is not None:
            hasher.update(obj.data)
        written = len(obj.data)
    else:
        try:
            src = os.open(obj.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise SIFError(f"could not open {obj.path}: {(err.strerror or str(err)).lower()}") \
                from None
        try:
            st = os.fstat(src)
            # a regular file is copied as it is now: a file that grows while we copy (the SIF
            # itself given as the object!) must not make us copy forever
            limit = st.st_size if (st.st_mode & 0o170000) == 0o100000 else None
            written = _copy_file(src, fd, offset, hasher, limit)
        finally:
            os.close(src)
    return written, (f"sha256:{hasher.hexdigest()}" if hasher is not None else None)


def _copy_file(src: int, dst: int, offset: int, hasher, limit: int | None) -> int:
    """Copy src (its first `limit` bytes, or up to EOF) to dst at offset; in the kernel
    (copy_file_range) unless hashing."""
    written = 0

    def want() -> int:
        return 1 << 30 if limit is None else min(1 << 30, limit - written)

    if hasher is None:
        try:
            while want() > 0:
                n = os.copy_file_range(src, dst, want(), None if limit is None else written,
                                       offset + written)
                if n == 0:
                    return written
                written += n
            return written
        except OSError as err:
            import errno
            if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                 errno.EBADF, errno.ESPIPE) or written:
                raise
    while want() > 0:
        chunk = os.read(src, 1 << 20) if limit is None else \
            os.pread(src, min(1 << 20, want()), written)
        if not chunk:
            return written
        if hasher is not None:
            hasher.update(chunk)
        _write_all(dst, chunk, offset + written)
        written += len(chunk)
    return written


def _new_descriptor(obj: NewObject, ident: int, slot: int, unaligned: int, offset: int,
                    size: int, when: int, digest: str | None) -> Descriptor:
    d = Descriptor.__new__(Descriptor)
    d.datatype = obj.datatype
    d.used = True
    d.id = ident
    d.slot = slot
    d.group_id = obj.group_id
    d.raw_group_id = obj.group_id | GROUP_MASK  # the reference flags even "no group" (0)
    d.link_id = obj.link_id
    d.link_is_group = obj.link_is_group
    d.raw_link_id = obj.link_id | GROUP_MASK if obj.link_is_group else obj.link_id
    d.offset = offset
    d.size = size
    d.size_with_padding = offset - unaligned + size
    d.created = d.modified = when
    d.uid = d.gid = 0
    d.name = obj.name
    d.extra = obj.metadata(digest).ljust(384, b"\0")
    return d


def _now() -> int:
    import time
    return int(time.time())


def _random_uuid() -> bytes:
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(raw)


def _os_fail(what: str, err: OSError) -> SIFError:
    return SIFError(f"{what}: {(err.strerror or str(err)).lower()}")


def create(path: str, objects: list[NewObject], *,
           launch_script: str = DEFAULT_LAUNCH_SCRIPT, uuid: bytes | None = None,
           created: int | None = None, descriptors_total: int = DEFAULT_DESCRIPTORS) -> None:
    """Write a new SIF at path holding objects (IDs 1, 2, ... in order).

    The file is written under a temporary name next to path and renamed into place, so a failure
    never leaves a partial image. uuid defaults to a random v4 UUID, created to now; pass
    uuid=NIL_UUID, created=ZERO_TIME for the reference's deterministic images.
    """
    h, when = _new_header(objects, launch_script, uuid, created, descriptors_total)
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
    except OSError as err:
        raise _os_fail(f"could not create {path}", err) from None
    try:
        _write_image(fd, h, objects, when, prewritten_size=None)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise _os_fail(f"writing {path}", err) from None
        raise


def last_object_offset(objects: list[NewObject],
                       descriptors_total: int = DEFAULT_DESCRIPTORS) -> int:
    """Where create()/complete_in_place() put the last of `objects`; all the others must hold
    `data` (their sizes decide the offset)."""
    end = DESCRIPTORS_OFFSET + descriptors_total * DESCRIPTOR_SIZE
    for obj in objects[:-1]:
        if obj.data is None:
            raise SIFError("last_object_offset needs the content of every object but the last")
        end = _align(end, obj.effective_alignment()) + len(obj.data)
    return _align(end, objects[-1].effective_alignment())


def complete_in_place(path: str, objects: list[NewObject], *,
                      launch_script: str = DEFAULT_LAUNCH_SCRIPT, uuid: bytes | None = None,
                      created: int | None = None,
                      descriptors_total: int = DEFAULT_DESCRIPTORS) -> None:
    """Make the file at `path` a SIF holding `objects`, where the LAST object's content is
    already in the file at last_object_offset(objects) up to its end (mksquashfs `-o OFFSET`
    wrote it there): header, descriptor table and the other objects are written in front.

    Saves copying a partition of gigabytes into a new file. The caller owns `path` (a temporary
    name it renames on success); the last object's `path` is ignored.
    """
    h, when = _new_header(objects, launch_script, uuid, created, descriptors_total)
    offset = last_object_offset(objects, descriptors_total)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise _os_fail(f"could not open {path}", err) from None
    try:
        size = os.fstat(fd).st_size - offset
        if size <= 0:
            raise SIFError(f"{path} holds no data at offset {offset} for the last object")
        _write_image(fd, h, objects, when, prewritten_size=size)
    except OSError as err:
        raise _os_fail(f"writing {path}", err) from None
    finally:
        os.close(fd)


def _new_header(objects: list[NewObject], launch_script: str, uuid: bytes | None,
                created: int | None, descriptors_total: int) -> tuple[Header, int]:
    script = _raw(launch_script)
    if len(script) >= 32:
        raise SIFError(f"launch script too long ({len(script)} bytes, at most 31)")
    if not 0 < descriptors_total <= MAX_DESCRIPTORS:
        raise SIFError(f"descriptor count {descriptors_total} out of range "
                       f"(1..{MAX_DESCRIPTORS})")
    if len(objects) > descriptors_total:
        raise SIFError(f"{len(objects)} objects do not fit in {descriptors_total} descriptors")
    if uuid is not None and len(uuid) != 16:
        raise SIFError("a SIF image UUID has 16 bytes")
    primaries = [o for o in objects if o.is_primary()]
    if len(primaries) > 1:
        raise SIFError("image already contains a primary partition")
    for obj in objects:
        obj.validate()
    when = _now() if created is None else created

    h = Header.__new__(Header)
    h.launch_script = launch_script
    h.magic = MAGIC
    h.version = "01"
    h.arch_code = arch_code(primaries[0].partition_arch()) if primaries else ARCH_UNKNOWN
    h.arch = arch_name(h.arch_code)
    h.uuid = _random_uuid() if uuid is None else bytes(uuid)
    h.created = h.modified = when
    h.descriptors_total = descriptors_total
    h.descriptors_free = descriptors_total - len(objects)
    h.descriptors_offset = DESCRIPTORS_OFFSET
    h.descriptors_size = descriptors_total * DESCRIPTOR_SIZE
    h.data_offset = DESCRIPTORS_OFFSET + h.descriptors_size
    return h, when


def _write_image(fd: int, h: Header, objects: list[NewObject], when: int,
                 prewritten_size: int | None) -> None:
    """Objects, descriptor table and header into fd; with prewritten_size the last object's
    content is already in place (only its descriptor is written)."""
    table = bytearray(h.descriptors_size)
    end = h.data_offset
    for slot, obj in enumerate(objects):
        offset = _align(end, obj.effective_alignment())
        if prewritten_size is not None and slot == len(objects) - 1:
            size, digest = prewritten_size, None
        else:
            size, digest = _write_object(fd, obj, offset)
        d = _new_descriptor(obj, slot + 1, slot, end, offset, size, when, digest)
        table[slot * DESCRIPTOR_SIZE:(slot + 1) * DESCRIPTOR_SIZE] = d.pack()
        end = offset + size
    h.data_size = end - h.data_offset
    _write_all(fd, table, h.descriptors_offset)
    _write_all(fd, h.pack(), 0)
    os.ftruncate(fd, end)  # an empty last object past the data written still lies in the file


def _modification_time(h: Header) -> int:
    """Now, except for deterministic images (nil UUID, zero times), which stay deterministic."""
    if h.uuid == NIL_UUID and h.created == ZERO_TIME and h.modified == ZERO_TIME:
        return ZERO_TIME
    return _now()


def _write_descriptor(f: SIFFile, d: Descriptor) -> None:
    _write_all(f.fd, d.pack(), f.header.descriptors_offset + d.slot * DESCRIPTOR_SIZE)


def _clear_descriptor(f: SIFFile, slot: int) -> None:
    _write_all(f.fd, bytes(DESCRIPTOR_SIZE), f.header.descriptors_offset + slot * DESCRIPTOR_SIZE)


def add_object(path: str, obj: NewObject) -> int:
    """Append obj to an existing SIF, in its first free descriptor; return the new object's ID.

    Data goes after the last object (reusing space a deleted trailing object left, as the
    reference does), then the descriptor and header are rewritten.
    """
    obj.validate()
    with SIFFile.open(path, writable=True) as f:
        h = f.header
        slot = next((i for i in range(h.descriptors_total) if i not in f._used_slots), None)
        if slot is None:
            raise SIFError(f"no free descriptor in {path} (all {h.descriptors_total} in use)")
        if obj.is_primary() and f.primary_partition() is not None:
            raise SIFError(f"{path} already contains a primary partition")
        ident = slot + 1
        if ident in f._by_id:  # IDs not following slots: an unusual writer made this file
            ident = max(f._by_id) + 1
        when = _modification_time(h)
        end = max([h.data_offset] + [d.offset + d.size for d in f.descriptors])
        offset = _align(end, obj.effective_alignment())
        try:
            size, digest = _write_object(f.fd, obj, offset)
            d = _new_descriptor(obj, ident, slot, end, offset, size, when, digest)
            h.descriptors_free -= 1
            h.data_size = offset + size - h.data_offset
            h.modified = when
            if obj.is_primary():
                h.arch_code = arch_code(obj.partition_arch())
                h.arch = arch_name(h.arch_code)
            if offset + size > f.file_size:
                os.ftruncate(f.fd, offset + size)
            _write_descriptor(f, d)
            _write_all(f.fd, h.pack(), 0)
        except BaseException as err:
            # the descriptor is written last: until then the image is unchanged but for data
            # past its end, which goes
            try:
                if os.fstat(f.fd).st_size > f.file_size:
                    os.ftruncate(f.fd, f.file_size)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise _os_fail(f"adding an object to {path}", err) from None
            raise
        return ident


def delete_object(path: str, id: int) -> None:
    """Free the descriptor of object id; its data stays in place (as the reference's `del`)."""
    with SIFFile.open(path, writable=True) as f:
        d = f.get(id)
        h = f.header
        if d.datatype == DATA_PARTITION and d.part_type == PART_PRIMSYS:
            h.arch_code = ARCH_UNKNOWN
            h.arch = ""
        h.descriptors_free += 1
        h.modified = _modification_time(h)
        try:
            _clear_descriptor(f, d.slot)
            _write_all(f.fd, h.pack(), 0)
        except OSError as err:
            raise _os_fail(f"deleting object {id} from {path}", err) from None


def set_primary(path: str, id: int) -> None:
    """Make partition `id` the primary system partition; a previous one becomes a System one.

    Only System partitions can be promoted (as the reference). The header arch follows.
    """
    with SIFFile.open(path, writable=True) as f:
        d = f.get(id)
        if d.datatype != DATA_PARTITION:
            raise SIFError(f"object {id} of {path} is not a partition")
        if d.part_type == PART_PRIMSYS:
            return
        if d.part_type != PART_SYSTEM:
            raise SIFError(f"object {id} of {path} is not a system partition")
        h = f.header
        when = _modification_time(h)
        changed = []
        previous = f.primary_partition()
        if previous is not None:
            previous.extra = previous.extra[:4] + _INT32.pack(PART_SYSTEM) + previous.extra[8:]
            previous.modified = when
            changed.append(previous)
        d.extra = d.extra[:4] + _INT32.pack(PART_PRIMSYS) + d.extra[8:]
        d.modified = when
        changed.append(d)
        h.arch_code = _PARTITION_EXTRA.unpack_from(d.extra)[2]
        h.arch = arch_name(h.arch_code)
        h.modified = when
        try:
            for changed_descriptor in changed:
                _write_descriptor(f, changed_descriptor)
            _write_all(f.fd, h.pack(), 0)
        except OSError as err:
            raise _os_fail(f"setting the primary partition of {path}", err) from None
