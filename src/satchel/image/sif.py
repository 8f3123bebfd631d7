"""SIF v01 (Singularity Image Format): read, validate, create and modify.

A SIF file is a 128-byte global header, a table of fixed-size (585-byte) descriptors and a data
area holding the objects the descriptors point at (SquashFS partitions, definition file, labels,
signatures...). All integers are little-endian.

This module is on the exec path (`satchel exec` opens the SIF to find the SquashFS partition), so
it imports only `os` and `struct` at module level and reads the header and descriptor table with
one pread in the common layout (two when the table is unusually placed or large). Everything
read from a file is validated before it is trusted: a file cut short, a wrong magic or version,
objects outside the file or overlapping each other, absurd counts all raise `SIFError` with a
one-line message.

The writer follows the layout choices of the reference implementation (Sylabs' `sif`):
descriptor table at 4096, 48 descriptors, data from 32176, partitions aligned to 4096, object
IDs equal to their slot number + 1, "deterministic" images with a nil UUID and Go's zero time.
"""

from __future__ import annotations

import os
import struct

from satchel.errors import SIFError

# --- data object types ------------------------------------------------------------------------
DATA_DEFFILE = 0x4001        # definition file
DATA_ENVVAR = 0x4002         # environment variables
DATA_LABELS = 0x4003         # JSON labels
DATA_PARTITION = 0x4004      # file system partition
DATA_SIGNATURE = 0x4005      # signature / verification data
DATA_GENERICJSON = 0x4006    # generic JSON metadata
DATA_GENERIC = 0x4007        # generic raw data
DATA_CRYPTOMESSAGE = 0x4008  # cryptographic message
DATA_SBOM = 0x4009           # software bill of materials
DATA_OCIROOTINDEX = 0x400A   # OCI root index
DATA_OCIBLOB = 0x400B        # OCI blob
DATA_TYPES = tuple(range(DATA_DEFFILE, DATA_OCIBLOB + 1))

# --- partition file system types ---------------------------------------------------------------
FS_SQUASH = 1
FS_EXT3 = 2
FS_IMMUTABLEOBJECTS = 3      # printed "Archive"
FS_RAW = 4
FS_ENCRYPTEDSQUASHFS = 5

# --- partition types ---------------------------------------------------------------------------
PART_SYSTEM = 1
PART_PRIMSYS = 2             # the primary system partition: what `exec` runs
PART_DATA = 3
PART_OVERLAY = 4

# --- signature hash types ----------------------------------------------------------------------
HASH_SHA256 = 1
HASH_SHA384 = 2
HASH_SHA512 = 3
HASH_BLAKE2S = 4
HASH_BLAKE2B = 5

# --- crypto message formats and types ----------------------------------------------------------
FORMAT_OPENPGP = 1
FORMAT_PEM = 2
MESSAGE_CLEARSIGNATURE = 0x100
MESSAGE_RSAOAEP = 0x200

# --- SBOM formats ------------------------------------------------------------------------------
SBOM_CYCLONEDX_JSON = 1
SBOM_CYCLONEDX_XML = 2
SBOM_GITHUB_JSON = 3
SBOM_SPDX_JSON = 4
SBOM_SPDX_RDF = 5
SBOM_SPDX_TAGVALUE = 6
SBOM_SPDX_YAML = 7
SBOM_SYFT_JSON = 8

# --- layout ------------------------------------------------------------------------------------
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
HEADER_SIZE = 128
DESCRIPTOR_SIZE = 585
GROUP_MASK = 0xF0000000      # set in raw group IDs, and in linked IDs that name a group
DEFAULT_LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
DEFAULT_DESCRIPTORS = 48
DESCRIPTORS_OFFSET = 4096
PARTITION_ALIGNMENT = 4096
# More descriptors than this is treated as corruption: it bounds the memory a hostile file can
# make us allocate (65536 * 585 bytes = 37 MiB); the reference tools write 48.
MAX_DESCRIPTORS = 65536
# Go's zero time.Time as Unix seconds: what "deterministic" reference images store as times.
ZERO_TIME = -62135596800
NIL_UUID = bytes(16)

# launch script, magic, version, arch, uuid, created, modified, descriptors free/total/offset/size,
# data offset/size
_HEADER = struct.Struct("<32s10s3s3s16s8q")
# data type, used, id, group id, linked id, offset, size, size with padding, created, modified,
# uid, gid, name, extra
_DESCRIPTOR = struct.Struct("<iBIII7q128s384s")
_PARTITION_EXTRA = struct.Struct("<ii3s")
_SIGNATURE_EXTRA = struct.Struct("<i256s")
_INT32 = struct.Struct("<i")
_INT32_PAIR = struct.Struct("<ii")
_FIRST_READ = DESCRIPTORS_OFFSET + DEFAULT_DESCRIPTORS * DESCRIPTOR_SIZE  # 32176: header + table

# Go architecture names <-> the 3-byte codes in headers and partition descriptors.
_ARCH_CODES = {
    "386": b"01\0", "amd64": b"02\0", "arm": b"03\0", "arm64": b"04\0", "ppc64": b"05\0",
    "ppc64le": b"06\0", "mips": b"07\0", "mipsle": b"08\0", "mips64": b"09\0",
    "mips64le": b"10\0", "s390x": b"11\0", "riscv64": b"12\0", "loong64": b"13\0",
}
_ARCH_NAMES = {code: name for name, code in _ARCH_CODES.items()}
ARCH_UNKNOWN = b"00\0"

# os.uname().machine -> Go name
_MACHINES = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "386", "i486": "386", "i586": "386",
    "i686": "386", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "ppc64": "ppc64",
    "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loong64",
}


def host_arch() -> str:
    """The Go name ("amd64", "arm64", ...) of this machine's architecture."""
    machine = os.uname().machine
    name = _MACHINES.get(machine)
    if name is not None:
        return name
    if machine.startswith("arm"):
        return "arm"
    if machine.startswith("mips"):
        import sys
        base = "mips64" if "64" in machine else "mips"
        return base + ("le" if sys.byteorder == "little" else "")
    return machine


def arch_code(name: str) -> bytes:
    """The 3-byte SIF code of a Go architecture name ("amd64" -> b"02\\0")."""
    code = _ARCH_CODES.get(name)
    if code is None:
        raise SIFError(f"unknown architecture {name!r} (known: {', '.join(_ARCH_CODES)})")
    return code


def arch_name(code: bytes) -> str:
    """The Go architecture name of a 3-byte SIF code; "" for "00" and codes we do not know."""
    return _ARCH_NAMES.get(bytes(code), "")


def _text(raw: bytes) -> str:
    """A NUL-padded field as text. Undecodable bytes survive (surrogateescape), so printers can
    write back exactly the bytes the file holds."""
    return raw.rstrip(b"\0").decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Header:
    """The global header. `arch` is the primary partition's Go arch name, "" when none/unknown."""

    __slots__ = ("launch_script", "magic", "version", "arch", "arch_code", "uuid", "created",
                 "modified", "descriptors_free", "descriptors_total", "descriptors_offset",
                 "descriptors_size", "data_offset", "data_size")

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        (launch, magic, version, arch, uuid, created, modified, free, total, doff, dsize,
         data_off, data_size) = _HEADER.unpack_from(raw)
        h = cls.__new__(cls)
        h.launch_script = _text(launch)
        h.magic = magic
        h.version = version.rstrip(b"\0").decode("latin-1")
        h.arch_code = arch
        h.arch = arch_name(arch)
        h.uuid = uuid
        h.created = created
        h.modified = modified
        h.descriptors_free = free
        h.descriptors_total = total
        h.descriptors_offset = doff
        h.descriptors_size = dsize
        h.data_offset = data_off
        h.data_size = data_size
        return h

    def pack(self) -> bytes:
        return _HEADER.pack(
            _raw(self.launch_script), self.magic, self.version.encode("latin-1"), self.arch_code,
            self.uuid, self.created, self.modified, self.descriptors_free,
            self.descriptors_total, self.descriptors_offset, self.descriptors_size,
            self.data_offset, self.data_size)

    @property
    def uuid_string(self) -> str:
        h = self.uuid.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def __repr__(self) -> str:
        return (f"Header(arch={self.arch!r}, uuid={self.uuid_string}, "
                f"descriptors={self.descriptors_total - self.descriptors_free}/"
                f"{self.descriptors_total}, data_size={self.data_size})")


class Descriptor:
    """One used object descriptor. group_id/link_id have the group flag bit stripped; 0 = none."""

    __slots__ = ("datatype", "used", "id", "group_id", "link_id", "link_is_group", "offset",
                 "size", "size_with_padding", "created", "modified", "uid", "gid", "name",
                 "extra", "slot", "raw_group_id", "raw_link_id")

    @classmethod
    def unpack(cls, raw: bytes, offset: int = 0, slot: int = 0) -> "Descriptor":
        (datatype, used, ident, group, link, off, size, padded, created, modified, uid, gid,
         name, extra) = _DESCRIPTOR.unpack_from(raw, offset)
        d = cls.__new__(cls)
        d.datatype = datatype
        d.used = used != 0
        d.id = ident
        d.raw_group_id = group
        d.group_id = group & ~GROUP_MASK & 0xFFFFFFFF
        d.raw_link_id = link
        d.link_id = link & ~GROUP_MASK & 0xFFFFFFFF
        d.link_is_group = (link & GROUP_MASK) == GROUP_MASK
        d.offset = off
        d.size = size
        d.size_with_padding = padded
        d.created = created
        d.modified = modified
        d.uid = uid
        d.gid = gid
        d.name = _text(name)
        d.extra = extra
        d.slot = slot
        return d

    def pack(self) -> bytes:
        return _DESCRIPTOR.pack(
            self.datatype, 1 if self.used else 0, self.id, self.raw_group_id, self.raw_link_id,
            self.offset, self.size, self.size_with_padding, self.created, self.modified,
            self.uid, self.gid, _raw(self.name), self.extra)

    # Type-specific metadata, decoded from `extra` the way the reference does (fixed positions,
    # little-endian); None when the object is of another type.
    @property
    def fs_type(self) -> int | None:
        if self.datatype != DATA_PARTITION:
            return None
        return _PARTITION_EXTRA.unpack_from(self.extra)[0]

    @property
    def part_type(self) -> int | None:
        if self.datatype != DATA_PARTITION:
            return None
        return _PARTITION_EXTRA.unpack_from(self.extra)[1]

    @property
    def arch(self) -> str | None:
        """Go arch name of a partition ("" when the code is unknown)."""
        if self.datatype != DATA_PARTITION:
            return None
        return arch_name(_PARTITION_EXTRA.unpack_from(self.extra)[2])

    @property
    def hash_type(self) -> int | None:
        return _INT32.unpack_from(self.extra)[0] if self.datatype == DATA_SIGNATURE else None

    @property
    def entity(self) -> bytes | None:
        """The signing key fingerprint (20 bytes), b"" when absent (all zero)."""
        if self.datatype != DATA_SIGNATURE:
            return None
        fingerprint = self.extra[4:24]
        return b"" if fingerprint == bytes(20) else fingerprint

    @property
    def format_type(self) -> int | None:
        return _INT32.unpack_from(self.extra)[0] if self.datatype == DATA_CRYPTOMESSAGE else None

    @property
    def message_type(self) -> int | None:
        return _INT32.unpack_from(self.extra, 4)[0] if self.datatype == DATA_CRYPTOMESSAGE else None

    @property
    def sbom_format(self) -> int | None:
        return _INT32.unpack_from(self.extra)[0] if self.datatype == DATA_SBOM else None

    @property
    def oci_digest(self) -> str | None:
        """The "sha256:<hex>" digest text of an OCI blob/index object, unvalidated."""
        if self.datatype not in (DATA_OCIROOTINDEX, DATA_OCIBLOB):
            return None
        return self.extra.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return (f"Descriptor(id={self.id}, datatype={self.datatype:#x}, group={self.group_id}, "
                f"link={self.link_id}{'G' if self.link_is_group else ''}, "
                f"offset={self.offset}, size={self.size}, name={self.name!r})")


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _check_header(h: Header, file_size: int) -> None:
    total, free = h.descriptors_total, h.descriptors_free
    if total < 0 or total > MAX_DESCRIPTORS:
        raise SIFError(f"absurd descriptor count {total} (at most {MAX_DESCRIPTORS} supported)")
    if free < 0 or free > total:
        raise SIFError(f"free descriptor count {free} out of range (total {total})")
    doff, dsize = h.descriptors_offset, h.descriptors_size
    if doff < HEADER_SIZE:
        raise SIFError(f"descriptor table offset {doff} overlaps the global header")
    if dsize < total * DESCRIPTOR_SIZE:
        raise SIFError(f"descriptor table size {dsize} too small for {total} descriptors "
                       f"({total * DESCRIPTOR_SIZE} bytes)")
    needed = doff + total * DESCRIPTOR_SIZE
    if needed > file_size:
        raise SIFError(f"truncated descriptor table (ends at {needed}, file has {file_size} bytes)")
    if h.data_offset < 0 or h.data_size < 0:
        raise SIFError(f"invalid data section (offset {h.data_offset}, size {h.data_size})")
    if h.data_size > 0 and _overlaps_metadata(h.data_offset, h.data_size, doff, needed):
        raise SIFError(f"data section (offset {h.data_offset}, size {h.data_size}) overlaps "
                       f"the header or descriptor table")


def _overlaps_metadata(start: int, size: int, table_start: int, table_end: int) -> bool:
    """Whether [start, start+size) meets the global header or the descriptor table."""
    return start < HEADER_SIZE or (start < table_end and start + size > table_start)


def _check_objects(used: list[Descriptor], h: Header, file_size: int) -> None:
    table_end = h.descriptors_offset + h.descriptors_total * DESCRIPTOR_SIZE
    seen: set[int] = set()
    for d in used:
        if d.id == 0:
            raise SIFError(f"descriptor {d.slot + 1} is in use but has the invalid object id 0")
        if d.id in seen:
            raise SIFError(f"duplicate object id {d.id}")
        seen.add(d.id)
        where = f"object {d.id} (offset {d.offset}, size {d.size})"
        if d.offset < 0 or d.size < 0:
            raise SIFError(f"{where} has a negative offset or size")
        # an empty object may sit past the end: the reference aligns an empty partition there
        # without writing anything
        if d.size > 0 and d.offset + d.size > file_size:
            raise SIFError(f"{where} extends past end of file ({file_size} bytes)")
        if d.size > 0 and _overlaps_metadata(d.offset, d.size, h.descriptors_offset, table_end):
            raise SIFError(f"{where} overlaps the header or descriptor table")
    nonempty = sorted((d for d in used if d.size > 0), key=lambda d: (d.offset, d.id))
    for before, after in zip(nonempty, nonempty[1:]):
        if before.offset + before.size > after.offset:
            raise SIFError(f"objects {before.id} (offset {before.offset}, size {before.size}) "
                           f"and {after.id} (offset {after.offset}, size {after.size}) overlap")


class SIFFile:
    """An open, validated SIF file. Use as a context manager or call close()."""

    __slots__ = ("path", "fd", "writable", "file_size", "header", "descriptors", "_by_id",
                 "_used_slots")

    @classmethod
    def open(cls, path: str, writable: bool = False) -> "SIFFile":
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below);
        # it changes nothing for regular files
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except OSError as err:
            raise SIFError(f"could not open {path}: {(err.strerror or str(err)).lower()}") from None
        self = cls.__new__(cls)
        self.path = path
        self.fd = fd
        self.writable = writable
        try:
            self._load()
        except SIFError as err:
            os.close(fd)
            self.fd = -1
            raise err.context(f"while opening {path}") from None
        except OSError as err:
            os.close(fd)
            self.fd = -1
            raise SIFError(f"while reading {path}: {(err.strerror or str(err)).lower()}") from None
        return self

    def _load(self) -> None:
        st = os.fstat(self.fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise SIFError("not a SIF file: not a regular file")
        self.file_size = size = st.st_size
        head = os.pread(self.fd, min(size, _FIRST_READ), 0)
        if len(head) < HEADER_SIZE:
            got = head[32:42]
            if got and got != MAGIC[:len(got)]:
                raise SIFError("not a SIF file: bad magic")
            raise SIFError(f"not a SIF file: truncated global header "
                           f"({len(head)} of {HEADER_SIZE} bytes)")
        if head[32:42] != MAGIC:
            raise SIFError("not a SIF file: bad magic")
        if head[42:45] != VERSION:
            shown = head[42:45].rstrip(b"\0").decode("latin-1")
            raise SIFError(f"unsupported SIF version {shown!r} (only 01 is supported)")
        h = Header.unpack(head)
        _check_header(h, size)
        start = h.descriptors_offset
        length = h.descriptors_total * DESCRIPTOR_SIZE
        if start + length <= len(head):
            table, base = head, start
        else:
            table, base = _pread_exact(self.fd, length, start), 0
            if len(table) < length:  # the file shrank under us
                raise SIFError("truncated descriptor table")
        used = []
        unpack = Descriptor.unpack
        for slot in range(h.descriptors_total):
            pos = base + slot * DESCRIPTOR_SIZE
            if table[pos + 4] == 0:  # `used` flag: free slots are not looked at
                continue
            used.append(unpack(table, pos, slot))
        _check_objects(used, h, size)
        used.sort(key=lambda d: d.id)
        self.header = h
        self.descriptors = used
        self._by_id = {d.id: d for d in used}
        self._used_slots = {d.slot for d in used}

    # --- lookups ------------------------------------------------------------------------------
    def get(self, id: int) -> Descriptor:
        d = self._by_id.get(id)
        if d is None:
            raise SIFError(f"no object with id {id} in {self.path}")
        return d

    def find(self, datatype: int | None = None, name: str | None = None) -> list[Descriptor]:
        return [d for d in self.descriptors
                if (datatype is None or d.datatype == datatype)
                and (name is None or d.name == name)]

    def primary_partition(self) -> Descriptor | None:
        for d in self.descriptors:
            if d.datatype == DATA_PARTITION and d.part_type == PART_PRIMSYS:
                return d
        return None

    # --- data -----------------------------------------------------------------------------------
    def read_data(self, id: int) -> bytes:
        d = self.get(id)
        data = _pread_exact(self.fd, d.size, d.offset)
        if len(data) != d.size:
            raise SIFError(f"object {id} of {self.path}: unexpected end of file")
        return data

    def copy_data(self, id: int, out) -> None:
        """Stream object `id` into the binary file object `out` (sendfile when it has a fd)."""
        d = self.get(id)
        offset, left = d.offset, d.size
        try:
            out_fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            out_fd = None
        try:
            if out_fd is not None:
                out.flush()
                while left > 0:
                    try:
                        sent = os.sendfile(out_fd, self.fd, offset, min(left, 1 << 30))
                    except OSError as err:
                        import errno
                        if err.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and \
                                offset == d.offset:
                            break  # this kind of output does not take sendfile: plain copy
                        raise
                    if sent == 0:
                        raise SIFError(f"object {id} of {self.path}: unexpected end of file")
                    offset += sent
                    left -= sent
            while left > 0:
                chunk = os.pread(self.fd, min(left, 1 << 20), offset)
                if not chunk:
                    raise SIFError(f"object {id} of {self.path}: unexpected end of file")
                out.write(chunk)
                offset += len(chunk)
                left -= len(chunk)
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not an error of ours to report
        except OSError as err:
            raise SIFError(f"copying object {id} of {self.path}: "
                           f"{(err.strerror or str(err)).lower()}") from None

    # --- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "SIFFile":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SIFFile({self.path!r}, {len(self.descriptors)} objects)"


# ================================================================================================
# Writing
# ================================================================================================

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
