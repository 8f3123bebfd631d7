"""Which files the dynamic loader opens to run an ELF program: its interpreter and libraries.

Pure functions over bytes, for the SquashFS read-ahead (sqfs_prefetch.py), which reads these
files before the container starts. Only what glibc's and musl's loaders do in the common case:
PT_INTERP, DT_NEEDED found through DT_RPATH/DT_RUNPATH ($ORIGIN), /etc/ld.so.cache and the
default directories. Anything unexpected yields fewer names, never an error: a file missed
here is simply read when the program asks for it.
"""

from __future__ import annotations

import struct

ELF64_LE = b"\x7fELF\x02\x01"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29
_PHDR = struct.Struct("<IIQQQQQQ")   # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz...
_DYN = struct.Struct("<qQ")          # Elf64_Dyn: tag, value
_MAX_TABLE = 64 * 1024               # bytes of .dynamic / .dynstr worth reading
CACHE_MAGIC = b"glibc-ld.so.cache1.1"
# ld.so.cache entry flags: FLAG_ELF_LIBC6 | the 64-bit library flag of the machine
CACHE_FLAGS = {"x86_64": 0x0303, "aarch64": 0x0A03, "ppc64le": 0x0503, "s390x": 0x0403}
DEFAULT_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")


class Program:
    """What the loader needs for one ELF file: interpreter, library names, search paths."""

    __slots__ = ("interpreter", "needed", "search")

    def __init__(self, interpreter: str | None, needed: list[str], search: list[str]):
        self.interpreter = interpreter
        self.needed = needed
        self.search = search  # DT_RPATH/DT_RUNPATH directories, $ORIGIN still unexpanded


def program(head: bytes, read_at) -> Program | None:
    """Parse a 64-bit little-endian ELF file whose first bytes are `head`.

    read_at(offset, size) -> bytes gives the rest of the file (its dynamic section and string
    table may lie beyond head). None if this is not such a file.
    """
    if len(head) < 64 or not head.startswith(ELF64_LE):
        return None
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if phentsize < _PHDR.size or phoff + phnum * phentsize > len(head):
        return None
    interpreter, dynamic, loads = None, None, []
    for i in range(min(phnum, 128)):
        kind, _, offset, vaddr, _, filesz, _, _ = _PHDR.unpack_from(head, phoff + i * phentsize)
        if kind == _PT_INTERP:
            text = _bytes(head, read_at, offset, min(filesz, 4096)).split(b"\0")[0]
            interpreter = text.decode("utf-8", "surrogateescape") if text[:1] == b"/" else None
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, min(filesz, _MAX_TABLE))
        elif kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
    if dynamic is None:
        return Program(interpreter, [], [])
    table = _bytes(head, read_at, *dynamic)
    needed, paths, strtab, strsz, runpath = [], [], None, _MAX_TABLE, False
    for at in range(0, len(table) - _DYN.size + 1, _DYN.size):
        tag, value = _DYN.unpack_from(table, at)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            needed.append(value)
        elif tag == _DT_STRTAB:
            strtab = _file_offset(loads, value)
        elif tag == _DT_STRSZ:
            strsz = min(value, _MAX_TABLE)
        elif tag in (_DT_RPATH, _DT_RUNPATH):
            paths.append((tag, value))
            runpath = runpath or tag == _DT_RUNPATH
    if strtab is None:
        return Program(interpreter, [], [])
    strings = _bytes(head, read_at, strtab, strsz)
    names = [n for n in (_string(strings, v) for v in needed) if n and "/" not in n]
    search = []
    for tag, value in paths:
        if tag == _DT_RPATH and runpath:  # DT_RUNPATH present: DT_RPATH is ignored
            continue
        search += [d for d in (_string(strings, value) or "").split(":") if d]
    return Program(interpreter, names, search)


def cache_entries(cache: bytes, machine: str) -> dict[str, str]:
    """soname -> path from an ld.so.cache (glibc's new format) for this machine's libraries."""
    start = cache.find(CACHE_MAGIC)
    if start < 0 or len(cache) < start + 48:
        return {}
    count, = struct.unpack_from("<I", cache, start + 20)
    wanted = CACHE_FLAGS.get(machine)
    found: dict[str, str] = {}
    for i in range(min(count, (len(cache) - start - 48) // 24)):
        flags, key, value = struct.unpack_from("<iII", cache, start + 48 + 24 * i)
        if (flags == wanted) if wanted is not None else (flags & 0xFF) == 3:
            name = _string(cache, start + key)
            if name and name not in found:
                found[name] = _string(cache, start + value) or ""
    return found


def expand_origin(directory: str, origin: str) -> str:
    return directory.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)


def _file_offset(loads, vaddr: int) -> int | None:
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    return None


def _bytes(head: bytes, read_at, offset: int, size: int) -> bytes:
    if offset + size <= len(head):
        return head[offset:offset + size]
    return read_at(offset, size)


def _string(table: bytes, offset: int) -> str | None:
    if offset >= len(table):
        return None
    end = table.find(b"\0", offset)
    raw = table[offset:end if end >= 0 else len(table)]
    return raw.decode("utf-8", "surrogateescape")
