"""Read glibc's linker cache (/etc/ld.so.cache) without running `ldconfig -p`.

Why parse it ourselves: --nv runs on the exec path, where a `ldconfig -p` subprocess costs a
fork+exec plus `import subprocess` (~8 ms, see shared/FACTS.md) on every launch; reading the
40 KB file with struct takes well under a millisecond.

The format (glibc >= 2.32 writes only this one; older glibc appends it after the libc5 table):

    header (48 bytes): magic "glibc-ld.so.cache" + version "1.1", uint32 nlibs,
                       uint32 len_strings, 20 bytes of flags/extension offset we do not need
    nlibs entries (24 bytes): int32 flags, uint32 key, uint32 value, uint32 osversion,
                              uint64 hwcap
    string table

`key` (the soname, e.g. libcuda.so.1) and `value` (the path ld.so opens) are byte offsets from
the start of the new-format header. The low byte of `flags` is the library type (3 = ELF for
glibc), the next byte the ABI (0x03 at the type plus 0x0300 = x86-64, 0 = i386, ...).
"""

from __future__ import annotations

import os
import struct

from satchel.errors import ConfigError

MAGIC_NEW = b"glibc-ld.so.cache1.1"
MAGIC_OLD = b"ld.so-1.7.0"
HEADER_SIZE = 48
ENTRY = struct.Struct("=iIIIQ")
FLAG_TYPE_MASK = 0x00FF
FLAG_ELF_LIBC6 = 0x0003
FLAG_ABI_MASK = 0xFF00

# the ABI byte glibc stores for each 64-bit architecture we may run on (sysdeps/generic/ldconfig.h)
_ABI_BY_MACHINE = {
    "x86_64": 0x0300,
    "ppc64le": 0x0500,
    "ppc64": 0x0500,
    "s390x": 0x0400,
    "aarch64": 0x0A00,
}


def native_abi() -> int | None:
    """The ABI flag of this machine's own libraries, or None if we don't know it (take all).

    Functions below take abi=-1 for "this machine's" and abi=None for "any ABI"."""
    return _ABI_BY_MACHINE.get(os.uname().machine)


class CacheEntry:
    """One library in the cache: its soname and the path the dynamic linker would open."""

    __slots__ = ("name", "path", "flags", "hwcap")

    def __init__(self, name: str, path: str, flags: int, hwcap: int):
        self.name = name
        self.path = path
        self.flags = flags
        self.hwcap = hwcap

    def __repr__(self) -> str:
        return f"CacheEntry({self.name!r}, {self.path!r}, flags={self.flags:#06x})"


def _cstring(data: bytes, base: int, offset: int, cache_path: str) -> bytes:
    start = base + offset
    end = data.find(b"\0", start)
    if offset <= 0 or start >= len(data) or end < 0:
        raise ConfigError(f"linker cache {cache_path}: string offset {offset} outside the file")
    return data[start:end]


def _table(data: bytes, cache_path: str) -> tuple[int, bytes]:
    """(offset of the new-format header, the raw entry table); ConfigError if malformed."""
    base = data.find(MAGIC_NEW)
    if base < 0:
        if data.startswith(MAGIC_OLD):
            raise ConfigError(f"linker cache {cache_path}: only the pre-2002 libc5 format is "
                              "present, which satchel does not read",
                              hint="regenerate it with a current ldconfig")
        raise ConfigError(f"linker cache {cache_path}: not a glibc ld.so.cache (bad magic)")
    if base and not data.startswith(MAGIC_OLD):
        raise ConfigError(f"linker cache {cache_path}: not a glibc ld.so.cache (bad magic)")
    if len(data) < base + HEADER_SIZE:
        raise ConfigError(f"linker cache {cache_path}: truncated header")
    nlibs = struct.unpack_from("=I", data, base + len(MAGIC_NEW))[0]
    table_end = base + HEADER_SIZE + nlibs * ENTRY.size
    if table_end > len(data):
        raise ConfigError(f"linker cache {cache_path}: {nlibs} entries do not fit in "
                          f"{len(data)} bytes (truncated file?)")
    return base, data[base + HEADER_SIZE:table_end]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # what os.fsdecode does, without the lookup


def parse(data: bytes, cache_path: str = "ld.so.cache") -> list[CacheEntry]:
    """All entries of a cache image, in file order (the order ld.so searches them)."""
    base, table = _table(data, cache_path)
    return [CacheEntry(_decode(_cstring(data, base, key, cache_path)),
                       _decode(_cstring(data, base, value, cache_path)), flags, hwcap)
            for flags, key, value, _osversion, hwcap in ENTRY.iter_unpack(table)]


def read_bytes(cache_path: str) -> bytes:
    try:
        with open(cache_path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise ConfigError(f"reading linker cache {cache_path}: {err.strerror or err}") from None


def read(cache_path: str) -> list[CacheEntry]:
    """Parse the cache file at cache_path; ConfigError when it is unreadable or malformed."""
    return parse(read_bytes(cache_path), cache_path)


def lookup(data: bytes, prefixes, cache_path: str = "ld.so.cache",
           abi: int | None = -1) -> list[tuple[str, str]]:
    """(soname, path) of each native-ABI library whose soname is a prefix + "." + anything, or
    a prefix itself ("libcuda.so" matches libcuda.so and libcuda.so.1, not libcuda.sox).

    The first entry of a soname wins, as in ld.so's own search; results keep cache order.
    This is the exec-path reader: it decodes only the names that match (~0.7 ms for the
    626-entry cache of a Debian host, against ~1 ms for a full parse()).
    """
    if abi == -1:
        abi = native_abi()
    wanted = {p.encode("utf-8", "surrogateescape") for p in prefixes}
    base, table = _table(data, cache_path)
    find = data.find
    seen: set[bytes] = set()
    found: list[tuple[str, str]] = []
    for flags, key, value, _osversion, hwcap in ENTRY.iter_unpack(table):
        if flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 or hwcap:
            continue
        if abi is not None and flags & FLAG_ABI_MASK != abi:
            continue
        name = _cstring(data, base, key, cache_path)
        # candidate prefixes end where a "." follows: libcuda.so.1 -> libcuda, libcuda.so, ...
        dot = name.find(b".")
        while dot >= 0:
            if name[:dot] in wanted:
                break
            dot = name.find(b".", dot + 1)
        else:
            if name not in wanted:
                continue
        if name in seen:
            continue
        seen.add(name)
        found.append((_decode(name), _decode(_cstring(data, base, value, cache_path))))
    return found


def native_entries(entries: list[CacheEntry], abi: int | None = -1) -> list[CacheEntry]:
    """The glibc ELF libraries of this machine's ABI (no i386/x32 twins, no hwcap variants).

    hwcap subdirectory entries (glibc-hwcaps/x86-64-v3/...) are skipped: the baseline library
    is always listed too, and binding one file per soname keeps the container's view simple.
    """
    if abi == -1:
        abi = native_abi()
    out = []
    for entry in entries:
        if entry.flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 or entry.hwcap:
            continue
        if abi is not None and entry.flags & FLAG_ABI_MASK != abi:
            continue
        out.append(entry)
    return out
