"""runtime/elfdeps.py: the loader and libraries an ELF program needs, read from its bytes."""

import os
import shutil
import struct

import pytest

from satchel.runtime import elfdeps

PAGE = 0x1000


def _elf(interp: bytes | None, dynamic: list[tuple[int, int]], strings: bytes) -> bytes:
    """A minimal ELF64 LE file: one PT_LOAD mapping the whole file at vaddr 0x400000."""
    phnum = 1 + (interp is not None) + bool(dynamic)
    interp_at = 64 + 56 * phnum
    dyn_at = 0x200
    str_at = 0x400
    base = 0x400000
    header = (b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0,
              64, 0, 0, 64, 56, phnum, 64, 0, 0))
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, PAGE, PAGE, PAGE)  # PT_LOAD
    if interp is not None:
        phdrs += struct.pack("<IIQQQQQQ", 3, 4, interp_at, base + interp_at, 0, len(interp) + 1,
                             len(interp) + 1, 1)
    if dynamic:
        size = 16 * (len(dynamic) + 1)
        phdrs += struct.pack("<IIQQQQQQ", 2, 6, dyn_at, base + dyn_at, 0, size, size, 8)
    data = bytearray(PAGE)
    data[:64] = header
    data[64:64 + len(phdrs)] = phdrs
    if interp is not None:
        data[interp_at:interp_at + len(interp) + 1] = interp + b"\0"
    entries = b"".join(struct.pack("<qQ", tag, value) for tag, value in dynamic)
    data[dyn_at:dyn_at + len(entries) + 16] = entries + bytes(16)  # DT_NULL ends the table
    data[str_at:str_at + len(strings)] = strings
    return bytes(data)


STRINGS = b"\0libfoo.so.1\0libc.so.6\0$ORIGIN/../lib:/opt/x\0/rpath/ignored\0"


def _offset(name: bytes) -> int:
    return STRINGS.index(name + b"\0")


def _dynamic(*extra):
    return [(1, _offset(b"libfoo.so.1")), (1, _offset(b"libc.so.6")), (5, 0x400000 + 0x400),
            (10, len(STRINGS))] + list(extra)


def test_interpreter_libraries_and_runpath():
    data = _elf(b"/lib64/ld-linux-x86-64.so.2",
                _dynamic((29, _offset(b"$ORIGIN/../lib:/opt/x")), (15, _offset(b"/rpath/ignored"))),
                STRINGS)
    program = elfdeps.program(data, lambda offset, size: data[offset:offset + size])
    assert program.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert program.needed == ["libfoo.so.1", "libc.so.6"]
    # DT_RUNPATH present: the loader ignores DT_RPATH
    assert program.search == ["$ORIGIN/../lib", "/opt/x"]
    assert elfdeps.expand_origin(program.search[0], "/opt/app/bin") == "/opt/app/bin/../lib"


def test_rpath_counts_without_runpath():
    data = _elf(None, _dynamic((15, _offset(b"/rpath/ignored"))), STRINGS)
    program = elfdeps.program(data, lambda offset, size: data[offset:offset + size])
    assert program.interpreter is None and program.search == ["/rpath/ignored"]


def test_tables_beyond_the_first_bytes_are_read_through_read_at():
    data = _elf(b"/lib/ld-musl-x86_64.so.1", _dynamic(), STRINGS)
    asked = []

    def read_at(offset, size):
        asked.append(offset)
        return data[offset:offset + size]

    program = elfdeps.program(data[:0x1F0], read_at)  # program headers only
    assert program.needed == ["libfoo.so.1", "libc.so.6"]
    assert program.interpreter == "/lib/ld-musl-x86_64.so.1"
    assert 0x200 in asked and 0x400 in asked


def test_static_program_and_non_elf():
    static = _elf(None, [], b"")
    program = elfdeps.program(static, lambda offset, size: b"")
    assert (program.interpreter, program.needed, program.search) == (None, [], [])
    assert elfdeps.program(b"#!/bin/sh\necho hi\n", lambda o, s: b"") is None
    assert elfdeps.program(b"\x7fELF\x01\x01" + bytes(58), lambda o, s: b"") is None  # 32-bit
    # program headers said to lie past the bytes given: not understood, not an error
    truncated = _elf(b"/x", _dynamic(), STRINGS)[:100]
    assert elfdeps.program(truncated, lambda o, s: b"") is None


def test_garbage_dynamic_section_yields_no_names():
    data = bytearray(_elf(None, _dynamic(), STRINGS))
    data[0x200:0x400] = os.urandom(0x200)
    program = elfdeps.program(bytes(data), lambda offset, size: bytes(data[offset:offset + size]))
    assert program is not None
    assert all(isinstance(n, str) and "/" not in n for n in program.needed)


def _host_program(path):
    with open(path, "rb") as fh:
        data = fh.read()
    return elfdeps.program(data[:4096], lambda offset, size: data[offset:offset + size])


@pytest.mark.skipif(not os.path.exists("/etc/ld.so.cache"), reason="no glibc ld.so.cache")
def test_the_hosts_own_programs_and_cache():
    ls = shutil.which("ls")
    program = _host_program(os.path.realpath(ls))
    assert program.interpreter and os.path.exists(program.interpreter)
    assert "libc.so.6" in program.needed
    with open("/etc/ld.so.cache", "rb") as fh:
        entries = elfdeps.cache_entries(fh.read(), os.uname().machine)
    for name in program.needed:
        assert name in entries, name
        assert os.path.isfile(entries[name])


def test_cache_entries_of_other_machines_and_garbage():
    assert elfdeps.cache_entries(b"", "x86_64") == {}
    assert elfdeps.cache_entries(b"ld.so-1.7.0" + os.urandom(200), "x86_64") == {}
    strings = b"libz.so.1\0/lib/libz.so.1\0"
    header = elfdeps.CACHE_MAGIC + struct.pack("<IIB3xI12x", 2, len(strings), 2, 0)
    table_end = len(header) + 2 * 24
    entries = struct.pack("<iIIIQ", 0x0303, table_end, table_end + 10, 0, 0) + \
        struct.pack("<iIIIQ", 0x0A03, table_end, table_end + 10, 0, 0)
    cache = header + entries + strings
    assert elfdeps.cache_entries(cache, "x86_64") == {"libz.so.1": "/lib/libz.so.1"}
    assert elfdeps.cache_entries(cache, "aarch64") == {"libz.so.1": "/lib/libz.so.1"}
    assert elfdeps.cache_entries(cache, "s390x") == {}
    assert elfdeps.cache_entries(cache[:60], "x86_64") == {}  # cut inside the table
