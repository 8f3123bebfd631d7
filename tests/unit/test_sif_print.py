"""siftool-compatible printers: goldens, and the general rules behind them on made-up files."""

import datetime
import re
import struct

import pytest
from hypothesis import given, settings, strategies as st

from support.corpus import golden_path, golden_source, goldens

from satchel.errors import SIFError
from satchel.image import sif, sif_print
from satchel.image.sif_print import _tabwrite, go_time_string, readable_size



@pytest.mark.parametrize("kind,name", goldens())
def test_printer_matches_golden(kind, name):
    path, ident = golden_source(kind, name)
    with open(golden_path(kind, name), "rb") as fh:
        want = fh.read()
    with sif.SIFFile.open(path) as f:
        got = {"Header": lambda: sif_print.header_text(f),
               "List": lambda: sif_print.list_text(f),
               "Info": lambda: sif_print.info_text(f.get(ident))}[kind]()
    assert got == want


def test_all_goldens_are_covered():
    assert len(goldens()) >= 18


# --- the rules ----------------------------------------------------------------------------------

def test_readable_size():
    assert readable_size(0) == "0 B"
    assert readable_size(1023) == "1023 B"
    assert readable_size(1024) == "1 KiB"
    assert readable_size(1535) == "1 KiB"
    assert readable_size(1536) == "2 KiB"  # half rounds away from zero
    assert readable_size(48 * 585) == "27 KiB"
    assert readable_size(271152) == "265 KiB"
    assert readable_size(1024 ** 2 - 1) == "1024 KiB"  # the unit is chosen before rounding
    assert readable_size(5 * 1024 ** 3) == "5 GiB"
    assert readable_size(2 ** 63 - 1) == "8 EiB"
    assert readable_size(-1023) == "-1023 B"
    assert readable_size(-1536) == "-2 KiB"


def test_go_time_string():
    assert go_time_string(1593475316) == "2020-06-30 00:01:56 +0000 UTC"
    assert go_time_string(0) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time_string(-1) == "1969-12-31 23:59:59 +0000 UTC"
    assert go_time_string(253402300800) == "10000-01-01 00:00:00 +0000 UTC"
    assert go_time_string(sif.ZERO_TIME) == "0001-01-01 00:00:00 +0000 UTC"
    year0 = sif.ZERO_TIME - 366 * 86400  # year 0 is a leap year
    assert go_time_string(year0) == "0000-01-01 00:00:00 +0000 UTC"
    assert go_time_string(year0 - 365 * 86400) == "-0001-01-01 00:00:00 +0000 UTC"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=sif.ZERO_TIME, max_value=253402300799))
def test_go_time_string_agrees_with_the_calendar(seconds):
    dt = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    assert go_time_string(seconds) == (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} "
                                       f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} +0000 UTC")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1))
def test_go_time_string_any_int64(seconds):
    text = go_time_string(seconds)
    assert re.fullmatch(r"-?\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", text)


def test_tabwriter_aligns_columns_per_block():
    assert _tabwrite(b"a:\t1\nlonger:\t2\n", 1) == b"a:      1\nlonger: 2\n"
    assert _tabwrite(b"\tx:\t1\n\tyy:\t2\n", 2) == b"  x:   1\n  yy:  2\n"
    # a line without a tab ends the block: the next lines align on their own
    assert _tabwrite(b"a:\t1\nplain\nlonger:\t2\n", 1) == b"a: 1\nplain\nlonger: 2\n"
    # wide characters count as one column each
    assert _tabwrite("é:\t1\nab:\t2\n".encode(), 1) == "é:  1\nab: 2\n".encode()


def test_tabwriter_cells_inside_values():
    # a tab inside a value makes a cell of its own, in a column only that line has
    assert _tabwrite(b"\tName:\tx\ty\n\tID:\t1\n", 2) == b"  Name:  x  y\n  ID:    1\n"
    # a newline inside a value starts a line that has no cells and ends the block
    assert _tabwrite(b"\tName:\tx\nz\n\tID:\t1\n", 2) == b"  Name:  x\nz\n  ID:  1\n"
    # a form feed ends the line, is written as a newline, and flushes
    assert _tabwrite(b"a:\tb\fc\nlong:\td\n", 1) == b"a: b\nc\nlong: d\n"


def test_tabwriter_escapes():
    # 0xFF ... 0xFF is one piece of text: tabs inside do not split it, the 0xFF bytes stay in
    # the output but take no width
    assert _tabwrite(b"\xffa\tb\xff:\tX\nc:\tY\n", 1) == b"\xffa\tb\xff: X\nc:   Y\n"
    # an escape left open runs to the end
    assert _tabwrite(b"k:\t\xffv\tw\nk2:\tz\n", 1) == b"k: \xffv\tw\nk2:\tz\n"


# --- printers on made-up files -------------------------------------------------------------------

NAME_AT, EXTRA_AT = 73, 201


def patch(path, slot, field_offset, raw):
    """Overwrite bytes of descriptor `slot` directly: make what `create` refuses to write."""
    with open(path, "r+b") as fh:
        fh.seek(4096 + slot * 585 + field_offset)
        fh.write(raw)


def made(tmp_path, objects, **kwargs):
    path = str(tmp_path / "m.sif")
    kwargs.setdefault("uuid", sif.NIL_UUID)
    kwargs.setdefault("created", sif.ZERO_TIME)
    kwargs.setdefault("launch_script", "")
    sif.create(path, objects, **kwargs)
    return path


def test_header_with_everything(tmp_path):
    path = made(tmp_path, [sif.NewObject(datatype=sif.DATA_PARTITION, data=b"x" * 5000,
                                         arch="arm64")],
                launch_script="#!/bin/sh\n", uuid=bytes.fromhex("00112233445566778899aabbccddeeff"),
                created=1700000000)
    with sif.SIFFile.open(path) as f:
        text = sif_print.header_text(f)
    assert text == (b"Launch Script:        #!/bin/sh\n"
                    b"Version:              01\n"
                    b"Primary Architecture: arm64\n"
                    b"ID:                   00112233-4455-6677-8899-aabbccddeeff\n"
                    b"Created At:           2023-11-14 22:13:20 +0000 UTC\n"
                    b"Modified At:          2023-11-14 22:13:20 +0000 UTC\n"
                    b"Descriptors Free:     47\n"
                    b"Descriptors Total:    48\n"
                    b"Descriptors Offset:   4096\n"
                    b"Descriptors Size:     27 KiB\n"
                    b"Data Offset:          32176\n"
                    b"Data Size:            5 KiB\n")


def test_header_launch_script_with_newline_inside(tmp_path):
    path = made(tmp_path, [], launch_script="#!/bin/sh\nexit 0\n")
    with sif.SIFFile.open(path) as f:
        text = sif_print.header_text(f)
    # the second script line holds no tab: it ends the first column block
    assert text.startswith(b"Launch Script: #!/bin/sh\nexit 0\nVersion:            01\n")


def test_info_and_list_of_every_type(tmp_path):
    fp = bytes.fromhex("12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84")
    objects = [
        sif.NewObject(datatype=sif.DATA_DEFFILE, data=b"d", name="def"),
        sif.NewObject(datatype=sif.DATA_ENVVAR, data=b"e"),
        sif.NewObject(datatype=sif.DATA_LABELS, data=b"{}"),
        sif.NewObject(datatype=sif.DATA_PARTITION, data=b"p", fs_type=sif.FS_IMMUTABLEOBJECTS,
                      part_type=sif.PART_OVERLAY, arch="riscv64"),
        sif.NewObject(datatype=sif.DATA_SIGNATURE, data=b"s", group_id=0, link_id=4,
                      hash_type=sif.HASH_BLAKE2B, entity=fp),
        sif.NewObject(datatype=sif.DATA_GENERIC, data=b"g", group_id=12345678),
        sif.NewObject(datatype=sif.DATA_CRYPTOMESSAGE, data=b"c", format_type=sif.FORMAT_PEM,
                      message_type=sif.MESSAGE_RSAOAEP),
        sif.NewObject(datatype=sif.DATA_SBOM, data=b"b", sbom_format=sif.SBOM_SYFT_JSON),
        sif.NewObject(datatype=sif.DATA_OCIROOTINDEX, data=b"{}", link_id=1234,
                      link_is_group=True),
        sif.NewObject(datatype=sif.DATA_SIGNATURE, data=b"", hash_type=sif.HASH_SHA384),
    ]
    path = made(tmp_path, objects)
    with sif.SIFFile.open(path) as f:
        listing = sif_print.list_text(f).decode().splitlines()
        infos = {d.id: sif_print.info_text(d).decode() for d in f.descriptors}
    assert listing[3:] == [
        "1    |1       |NONE    |32176-32177               |Def.FILE",
        "2    |1       |NONE    |32177-32178               |Env.Vars",
        "3    |1       |NONE    |32178-32180               |JSON.Labels",
        "4    |1       |NONE    |32768-32769               |FS (Archive/Overlay/riscv64)",
        "5    |NONE    |4       |32769-32770               |Signature (BLAKE2b-256)",
        "6    |12345678 |NONE    |32770-32771               |Generic/Raw",
        "7    |1       |NONE    |32771-32772               |Cryptographic Message (PEM/RSA-OAEP)",
        "8    |1       |NONE    |32772-32773               |SBOM (syft-json)",
        "9    |1       |1234 (G) |32773-32775               |OCI.RootIndex",
        "10   |1       |NONE    |32775-32775               |Signature (SHA-384)",
    ]
    assert infos[1] == ("  Data Type:  Def.FILE\n  ID:         1\n  Group ID:   1\n"
                        "  Linked ID:  NONE\n  Offset:     32176\n  Size:       1\n"
                        "  Name:       def\n")
    assert infos[4].endswith("  Filesystem Type:  Archive\n  Partition Type:   Overlay\n"
                             "  Architecture:     riscv64\n")
    assert infos[5].endswith("  Hash Type:  BLAKE2b-256\n"
                             "  Entity:     12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84\n")
    assert "  Group ID:   NONE\n  Linked ID:  4\n" in infos[5]
    assert infos[7].endswith("  Format Type:   PEM\n  Message Type:  RSA-OAEP\n")
    assert infos[8].endswith("  Format:     syft-json\n")
    assert "  Linked ID:  1234 (G)\n" in infos[9]
    assert infos[9].endswith("  Digest:     sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e"
                             "8310c060f61caaff8a\n")
    assert infos[10].endswith("  Hash Type:  SHA-384\n")  # no fingerprint: no Entity line


def test_unknown_values_print_as_unknown(tmp_path):
    path = made(tmp_path, [sif.NewObject(datatype=sif.DATA_PARTITION, data=b"p", arch="amd64"),
                           sif.NewObject(datatype=sif.DATA_GENERIC, data=b"g"),
                           sif.NewObject(datatype=sif.DATA_SBOM, data=b"s")])
    patch(path, 0, EXTRA_AT, struct.pack("<ii3s", 9, 7, b"77\0"))
    patch(path, 1, 0, struct.pack("<i", 0x4100))
    patch(path, 2, EXTRA_AT, struct.pack("<i", 99))
    with sif.SIFFile.open(path) as f:
        rows = sif_print.list_text(f).decode().splitlines()[3:]
        info = sif_print.info_text(f.get(1)).decode()
        assert sif_print.info_text(f.get(2)).decode().startswith("  Data Type:  Unknown\n")
        assert sif_print.info_text(f.get(3)).decode().endswith("  Format:     unknown\n")
    assert rows[0].endswith("|FS (Unknown/Unknown/unknown)")
    assert rows[1].endswith("|Unknown") and rows[2].endswith("|SBOM (unknown)")
    assert info.endswith("  Filesystem Type:  Unknown\n  Partition Type:   Unknown\n"
                         "  Architecture:     unknown\n")


def test_signature_with_unknown_hash(tmp_path):
    path = made(tmp_path, [sif.NewObject(datatype=sif.DATA_SIGNATURE, data=b"s"),
                           sif.NewObject(datatype=sif.DATA_GENERIC, data=b"g")])
    patch(path, 0, EXTRA_AT, struct.pack("<i", 42))
    with sif.SIFFile.open(path) as f:
        listing = sif_print.list_text(f).decode()
        with pytest.raises(SIFError, match="unsupported signature hash type 42"):
            sif_print.info_text(f.get(1))
    # siftool writes nothing for the type, not even the newline: the next row follows on
    assert listing.splitlines()[3] == ("1    |1       |NONE    |32176-32177               "
                                       "2    |1       |NONE    |32177-32178               "
                                       "|Generic/Raw")


@pytest.mark.parametrize("digest", [b"", b"sha256", b"md5:abcd", b"sha256:" + b"A" * 64,
                                    b"sha256:" + b"a" * 63, b"sha256:a:b",
                                    b"sha512:" + b"a" * 128])
def test_oci_digest_must_be_valid(tmp_path, digest):
    path = made(tmp_path, [sif.NewObject(datatype=sif.DATA_OCIBLOB, data=b"{}")])
    patch(path, 0, EXTRA_AT, digest.ljust(384, b"\0"))
    with sif.SIFFile.open(path) as f:
        assert sif_print.list_text(f).decode().splitlines()[3].endswith("|OCI.Blob")
        with pytest.raises(SIFError, match="invalid OCI digest"):
            sif_print.info_text(f.get(1))


def test_names_are_written_back_byte_for_byte(tmp_path):
    path = made(tmp_path, [sif.NewObject(datatype=sif.DATA_GENERIC, data=b"g")])
    patch(path, 0, NAME_AT, b"caf\xc3\xa9\xfe\tend\0\0")
    with sif.SIFFile.open(path) as f:
        assert f.get(1).name == "café\udcfe\tend"
        text = sif_print.info_text(f.get(1))
    # "café\xfe" is 5 runes wide; the tab opens a column only this line has
    assert b"  Name:       caf\xc3\xa9\xfe  end\n" in text
