"""Hostile SIF files: every one is a SIFError (one line), never another exception or a hang.

Exhaustive where it is cheap (a file cut at every byte), property-based elsewhere: random byte
mutations of real images, random header/descriptor field values biased toward the edges, random
files. Whatever opens must satisfy the invariants the rest of satchel relies on, and print.
"""

import os
import re
import shutil
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from support.corpus import IMAGES, read_image

from satchel.errors import SIFError
from satchel.image import sif, sif_print

SEEDS = ["one-group-signed-pgp.sif", "two-groups-signed-dsse.sif", "one-object-oci-blob.sif",
         "one-object-time.sif", "empty-launch-script.sif"]
SEED_BYTES = {name: read_image(name) for name in SEEDS if os.path.exists(os.path.join(IMAGES, name))}
TABLE_END = 4096 + 48 * 585  # 32176


def check_opened(path: str, f: sif.SIFFile) -> None:
    """The guarantees a successfully opened file gives its users."""
    size = os.path.getsize(path)
    h = f.header
    assert 0 <= h.descriptors_free <= h.descriptors_total <= sif.MAX_DESCRIPTORS
    assert h.descriptors_offset >= 128
    assert h.descriptors_offset + h.descriptors_total * 585 <= size
    spans = []
    ids = set()
    for d in f.descriptors:
        assert d.id > 0 and d.id not in ids
        ids.add(d.id)
        assert 0 <= d.offset and 0 <= d.size
        assert d.size == 0 or d.offset + d.size <= size
        assert len(f.read_data(d.id)) == d.size
        if d.size:
            spans.append((d.offset, d.offset + d.size))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    assert isinstance(sif_print.header_text(f), bytes)
    assert isinstance(sif_print.list_text(f), bytes)
    for d in f.descriptors:
        try:
            sif_print.info_text(d)
        except SIFError:
            pass  # a signature hash or OCI digest that siftool refuses too


def open_or_error(path: str) -> None:
    started = time.monotonic()
    try:
        with sif.SIFFile.open(path) as f:
            check_opened(path, f)
    except SIFError as err:
        assert "\n" not in err.message and err.message.startswith("while opening")
    assert time.monotonic() - started < 5, "opening must never hang"


# --- exhaustive truncation -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "one-object-time.sif"])
def test_cut_at_every_byte(tmp_path, name):
    """Every proper prefix of a SIF is refused: header, descriptor table or an object is cut."""
    path = str(tmp_path / name)
    shutil.copyfile(os.path.join(IMAGES, name), path)
    full = os.path.getsize(path)
    seen = set()
    fd = os.open(path, os.O_RDWR)
    try:
        for size in range(full - 1, -1, -1):
            os.ftruncate(fd, size)
            with pytest.raises(SIFError) as caught:
                sif.SIFFile.open(path)
            message = caught.value.message
            assert "\n" not in message
            seen.add(message.split(": ", 1)[1].split(" (")[0])
    finally:
        os.close(fd)
    assert "truncated descriptor table" in seen
    assert "not a SIF file: truncated global header" in seen
    assert any(m.startswith("object ") for m in seen)


# --- specific corruptions with their messages ----------------------------------------------------

HEADER_FIELDS = {"free": 80, "total": 88, "doff": 96, "dsize": 104, "data_off": 112,
                 "data_size": 120}
D_ID, D_OFFSET, D_SIZE = 5, 17, 25


def corrupt(tmp_path, changes, name="two-groups.sif"):
    path = str(tmp_path / "bad.sif")
    data = bytearray(SEED_BYTES.get(name) or open(os.path.join(IMAGES, name), "rb").read())
    for offset, raw in changes:
        data[offset:offset + len(raw)] = raw
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def q(value):
    return struct.pack("<q", value)


def descr(slot, field):
    return 4096 + slot * 585 + field


CORRUPTIONS = [
    ([(32, b"SIF_MAGIK\0")], "not a SIF file: bad magic"),
    ([(42, b"02\0")], "unsupported SIF version '02'"),
    ([(HEADER_FIELDS["total"], q(10 ** 12))], "absurd descriptor count 1000000000000"),
    ([(HEADER_FIELDS["total"], q(-1))], "absurd descriptor count -1"),
    ([(HEADER_FIELDS["free"], q(49))], "free descriptor count 49 out of range"),
    ([(HEADER_FIELDS["free"], q(-3))], "free descriptor count -3 out of range"),
    ([(HEADER_FIELDS["doff"], q(64))], "descriptor table offset 64 overlaps the global header"),
    ([(HEADER_FIELDS["doff"], q(2 ** 62))], "truncated descriptor table"),
    ([(HEADER_FIELDS["dsize"], q(100))], "descriptor table size 100 too small"),
    ([(HEADER_FIELDS["data_size"], q(-5))], "invalid data section"),
    ([(HEADER_FIELDS["data_off"], q(0))], "data section (offset 0, size 270928) overlaps"),
    ([(HEADER_FIELDS["data_off"], q(0)), (HEADER_FIELDS["data_size"], q(10))],
     "data section (offset 0, size 10) overlaps"),
    ([(descr(0, D_OFFSET), q(10 ** 9))],
     "object 1 (offset 1000000000, size 4) extends past end of file (303104 bytes)"),
    ([(descr(2, D_SIZE), q(2 ** 63 - 1))], "object 3 (offset 40960, size 9223372036854775807) "
                                           "extends past end of file"),
    ([(descr(0, D_OFFSET), q(-4))], "object 1 (offset -4, size 4) has a negative offset"),
    ([(descr(0, D_SIZE), q(-4))], "has a negative offset or size"),
    ([(descr(1, D_OFFSET), q(32768))], "objects 1 (offset 32768, size 4) and 2 (offset 32768, "
                                       "size 4096) overlap"),
    ([(descr(2, D_OFFSET), q(36000))], "objects 3 (offset 36000, size 262144) and 2 (offset "
                                       "36864, size 4096) overlap"),
    ([(descr(0, D_OFFSET), q(5000))], "object 1 (offset 5000, size 4) overlaps the header or "
                                      "descriptor table"),
    ([(descr(0, D_OFFSET), q(0))], "overlaps the header or descriptor table"),
    ([(descr(1, D_ID), struct.pack("<I", 1))], "duplicate object id 1"),
    ([(descr(1, D_ID), struct.pack("<I", 0))], "descriptor 2 is in use but has the invalid "
                                               "object id 0"),
]


@pytest.mark.parametrize("changes,message", CORRUPTIONS)
def test_corruption_is_one_line(tmp_path, changes, message):
    path = corrupt(tmp_path, changes)
    with pytest.raises(SIFError) as caught:
        sif.SIFFile.open(path)
    assert caught.value.message.startswith(f"while opening {path}: ")
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_unused_descriptors_are_not_looked_at(tmp_path):
    # garbage in a free slot (used flag 0) is what a deleted object leaves: ignore it
    path = corrupt(tmp_path, [(descr(10, D_OFFSET), q(-1)), (descr(10, D_ID), b"\xff" * 4)])
    with sif.SIFFile.open(path) as f:
        assert [d.id for d in f.descriptors] == [1, 2, 3]


def test_not_sif_files(tmp_path):
    cases = {
        "empty": (b"", "truncated global header (0 of 128 bytes)"),
        "text": (b"root:x:0:0:root:/root:/bin/bash\n" * 40, "bad magic"),
        "short-text": (b"#!/bin/sh\necho hi\n", "truncated global header"),
        "short-bad-magic": (b"#" * 32 + b"SQUASH", "bad magic"),
        "squashfs": (open(os.path.join(IMAGES, "..", "root.squashfs"), "rb").read(), "bad magic"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(SIFError, match=re.escape(message)):
            sif.SIFFile.open(str(path))
    with pytest.raises(SIFError, match="not a regular file"):
        sif.SIFFile.open(str(tmp_path))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(SIFError, match="not a regular file"):
        sif.SIFFile.open(fifo)  # and does not wait for a writer
    with pytest.raises(SIFError, match="not a regular file"):
        sif.SIFFile.open("/dev/zero")
    with pytest.raises(SIFError, match="could not open .*no such file or directory"):
        sif.SIFFile.open(str(tmp_path / "missing.sif"))


# --- property-based -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz") / "f.sif")


def write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)


FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(seed=st.sampled_from(SEEDS),
       mutations=st.lists(st.tuples(st.integers(0, TABLE_END + 1200), st.integers(0, 255)),
                          min_size=1, max_size=24),
       cut=st.one_of(st.none(), st.integers(0, 320000)))
def test_random_byte_mutations(scratch, seed, mutations, cut):
    data = bytearray(SEED_BYTES[seed])
    for position, value in mutations:
        if position < len(data):
            data[position] = value
    if cut is not None:
        del data[cut:]
    write(scratch, bytes(data))
    open_or_error(scratch)


EDGE_INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 48, 128, 585, 4096, 28080, 32176, 32768, 36864, 40960, 303104,
                     2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, -2 ** 63]),
    st.integers(-2 ** 63, 2 ** 63 - 1),
    st.integers(-100, 400000),
)
HEADER_INTS = dict(HEADER_FIELDS, created=64, modified=72)


@FUZZ
@given(header=st.fixed_dictionaries({k: EDGE_INT64 for k in HEADER_INTS}))
def test_random_header_fields(scratch, header):
    data = bytearray(SEED_BYTES["one-group-signed-pgp.sif"])
    for name, value in header.items():
        data[HEADER_INTS[name]:HEADER_INTS[name] + 8] = q(value)
    write(scratch, bytes(data))
    open_or_error(scratch)


DESCRIPTOR = st.fixed_dictionaries({
    "slot": st.integers(0, 5),
    "datatype": st.one_of(st.integers(0x4001, 0x400C), st.integers(-2 ** 31, 2 ** 31 - 1)),
    "used": st.sampled_from([0, 1, 2, 255]),
    "id": st.one_of(st.integers(0, 6), st.integers(0, 2 ** 32 - 1)),
    "group": st.one_of(st.sampled_from([0, 1, 0xF0000000, 0xF0000001]),
                       st.integers(0, 2 ** 32 - 1)),
    "link": st.one_of(st.sampled_from([0, 1, 0xF0000001]), st.integers(0, 2 ** 32 - 1)),
    "offset": EDGE_INT64, "size": EDGE_INT64,
    "name": st.binary(max_size=128),
    "extra": st.binary(max_size=384),
})


@FUZZ
@given(descriptors=st.lists(DESCRIPTOR, min_size=1, max_size=4),
       seed=st.sampled_from(["one-group-signed-pgp.sif", "two-groups-signed-dsse.sif"]))
def test_random_descriptors(scratch, descriptors, seed):
    data = bytearray(SEED_BYTES[seed])
    for d in descriptors:
        raw = struct.pack("<iBIII7q128s384s", d["datatype"], d["used"], d["id"], d["group"],
                          d["link"], d["offset"], d["size"], 0, 0, 0, 0, 0, d["name"], d["extra"])
        start = 4096 + d["slot"] * 585
        data[start:start + 585] = raw
    write(scratch, bytes(data))
    open_or_error(scratch)


@FUZZ
@given(content=st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=200).map(lambda b: b"\0" * 32 + b"SIF_MAGIC\0" + b"01\0" + b),
))
def test_random_files(scratch, content):
    write(scratch, content)
    open_or_error(scratch)
