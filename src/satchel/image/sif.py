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

The writer (create, complete_in_place, add_object, delete_object, set_primary, NewObject)
lives in sif_write.py, loaded on first use of one of its names through this module
(__getattr__ below): a launch reads SIF files and never unmarshals the writer.
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


# the writer's names, forwarded to sif_write.py (imported on first use: not by a launch)
_WRITER_NAMES = frozenset(("NewObject", "create", "last_object_offset", "complete_in_place",
                           "add_object", "delete_object", "set_primary"))


def __getattr__(name: str):
    if name in _WRITER_NAMES:
        from satchel.image import sif_write
        return getattr(sif_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
