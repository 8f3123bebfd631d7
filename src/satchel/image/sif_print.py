"""siftool-compatible printers: `satchel sif header|list|info` output, byte for byte.

Apptainer's `apptainer sif ...` embeds Sylabs' siftool, and people diff and grep its output, so
these printers reproduce it exactly, for any file rather than for the corpus we test with:

- `header` and `info` are aligned by Go's text/tabwriter (minimum width 0, padding 1 for header
  and 2 for info, space padding). `_tabwrite` below reimplements its algorithm, including what
  happens when a launch script or object name itself holds tabs, newlines or 0xFF bytes (cells,
  column blocks, escapes), because those fields are arbitrary bytes.
- `list` uses fixed printf widths.
- sizes print as "27 KiB" (rounded to the nearest unit), times as Go's time.Time String() in UTC.

Output is bytes: names and launch scripts are written back exactly as the file holds them.
"""

from __future__ import annotations

from satchel.errors import SIFError
from satchel.image import sif

DATATYPE_NAMES = {
    sif.DATA_DEFFILE: "Def.FILE",
    sif.DATA_ENVVAR: "Env.Vars",
    sif.DATA_LABELS: "JSON.Labels",
    sif.DATA_PARTITION: "FS",
    sif.DATA_SIGNATURE: "Signature",
    sif.DATA_GENERICJSON: "JSON.Generic",
    sif.DATA_GENERIC: "Generic/Raw",
    sif.DATA_CRYPTOMESSAGE: "Cryptographic Message",
    sif.DATA_SBOM: "SBOM",
    sif.DATA_OCIROOTINDEX: "OCI.RootIndex",
    sif.DATA_OCIBLOB: "OCI.Blob",
}
FS_NAMES = {
    sif.FS_SQUASH: "Squashfs",
    sif.FS_EXT3: "Ext3",
    sif.FS_IMMUTABLEOBJECTS: "Archive",
    sif.FS_RAW: "Raw",
    sif.FS_ENCRYPTEDSQUASHFS: "Encrypted squashfs",
}
PART_NAMES = {
    sif.PART_SYSTEM: "System",
    sif.PART_PRIMSYS: "*System",
    sif.PART_DATA: "Data",
    sif.PART_OVERLAY: "Overlay",
}
# Signature hash types print as Go's crypto.Hash names; other values are an error, as there.
HASH_NAMES = {
    sif.HASH_SHA256: "SHA-256",
    sif.HASH_SHA384: "SHA-384",
    sif.HASH_SHA512: "SHA-512",
    sif.HASH_BLAKE2S: "BLAKE2s-256",
    sif.HASH_BLAKE2B: "BLAKE2b-256",
}
FORMAT_NAMES = {sif.FORMAT_OPENPGP: "OpenPGP", sif.FORMAT_PEM: "PEM"}
MESSAGE_NAMES = {sif.MESSAGE_CLEARSIGNATURE: "Clear Signature", sif.MESSAGE_RSAOAEP: "RSA-OAEP"}
SBOM_NAMES = {
    sif.SBOM_CYCLONEDX_JSON: "cyclonedx-json",
    sif.SBOM_CYCLONEDX_XML: "cyclonedx-xml",
    sif.SBOM_GITHUB_JSON: "github-json",
    sif.SBOM_SPDX_JSON: "spdx-json",
    sif.SBOM_SPDX_RDF: "spdx-rdf",
    sif.SBOM_SPDX_TAGVALUE: "spdx-tag-value",
    sif.SBOM_SPDX_YAML: "spdx-yaml",
    sif.SBOM_SYFT_JSON: "syft-json",
}

_RULE = "-" * 78 + "\n"
_HEX = frozenset("0123456789abcdef")


def datatype_name(datatype: int) -> str:
    return DATATYPE_NAMES.get(datatype, "Unknown")


def _arch(name: str) -> str:
    return name or "unknown"


def readable_size(size: int) -> str:
    """"27 KiB": the size in the largest binary unit that keeps the count under 1024, rounded
    half away from zero; plain bytes below 1 KiB."""
    if -1024 < size < 1024:
        return f"{size} B"
    divisor, exponent = 1024, 0
    n = _go_div(size, 1024)
    while n <= -1024 or n >= 1024:
        divisor *= 1024
        exponent += 1
        n = _go_div(n, 1024)
    value = float(size) / float(divisor)
    rounded = int(abs(value) + 0.5)
    sign = "-" if value < 0 else ""
    return f"{sign}{rounded} {'KMGTPE'[exponent]}iB"


def _go_div(a: int, b: int) -> int:
    """Integer division truncating toward zero, as Go's."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# Go's time: Unix seconds -> the absolute clock that starts in year -292277022399. Times before
# that wrap around (uint64), and we reproduce the wrap for byte-exact output of absurd values.
_UNIX_TO_ABSOLUTE = 9223372028715321600


def go_time_string(seconds: int) -> str:
    """time.Unix(seconds, 0).UTC().String(), e.g. "2020-06-30 00:01:56 +0000 UTC"."""
    if seconds + _UNIX_TO_ABSOLUTE < 0:
        seconds += 1 << 64
    days, rest = divmod(seconds, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    year, month, day = _civil_from_days(days)
    year_text = f"-{-year:04d}" if year < 0 else f"{year:04d}"
    return f"{year_text}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d} +0000 UTC"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01."""
    z = days + 719468                 # days since 0000-03-01
    era = z // 146097                 # 400-year eras
    day_of_era = z - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524
                   - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153  # month counted from March
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def _is_go_zero_time(seconds: int) -> bool:
    return seconds == sif.ZERO_TIME


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _rune_count(raw: bytes) -> int:
    """utf8.RuneCount: each invalid byte counts as one rune, as surrogateescape decodes it."""
    return len(raw.decode("utf-8", "surrogateescape"))


class _Cell:
    __slots__ = ("text", "width")

    def __init__(self, text: bytes, width: int):
        self.text = text
        self.width = width


def _tabwrite(data: bytes, padding: int, minwidth: int = 0, padchar: bytes = b" ") -> bytes:
    """Format data as Go's tabwriter.NewWriter(w, minwidth, 0, padding, padchar, 0) + Flush.

    Text is cut into cells at tab/vtab; a line's last cell (text before the newline) is never
    aligned. Consecutive lines that have a cell in column k form a block that shares the
    width of column k (widest cell + padding). A 0xFF byte opens an escape that runs to the next
    0xFF: its text is one piece (tabs/newlines inside do not cut it), written as is, and the two
    0xFF bytes do not count toward the width. Form feeds end lines like newlines.
    """
    out = bytearray()
    lines: list[list[_Cell]] = [[]]
    cell = bytearray()     # text of the cell being read
    cell_width = 0         # its width so far (runes), counted up to `counted`
    counted = 0            # how much of `cell` is in cell_width
    in_escape = False

    def update_width() -> None:
        nonlocal cell_width, counted
        cell_width += _rune_count(bytes(cell[counted:]))
        counted = len(cell)

    def terminate_cell() -> int:
        nonlocal cell, cell_width, counted
        lines[-1].append(_Cell(bytes(cell), cell_width))
        cell, cell_width, counted = bytearray(), 0, 0
        return len(lines[-1])

    widths: list[int] = []

    def write_lines(line0: int, line1: int) -> None:
        for i in range(line0, line1):
            for j, c in enumerate(lines[i]):
                if c.text:
                    out.extend(c.text)
                if j < len(widths):
                    out.extend(padchar * (widths[j] - c.width))
            if i + 1 != len(lines):
                out.extend(b"\n")

    def format_block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, lines[this][column].width + padding)
                this += 1
            widths.append(width)
            format_block(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    def flush() -> None:
        nonlocal lines
        if cell:
            if in_escape:
                end_escape()
            terminate_cell()
        format_block(0, len(lines))
        lines = [[]]

    def end_escape() -> None:
        nonlocal in_escape, cell_width
        update_width()
        cell_width -= 2  # the two 0xFF bytes are written but take no room
        in_escape = False

    start = 0
    for i, ch in enumerate(data):
        if not in_escape:
            if ch in (9, 11, 10, 12):  # \t \v \n \f end a cell
                cell.extend(data[start:i])
                update_width()
                start = i + 1
                ncells = terminate_cell()
                if ch in (10, 12):
                    lines.append([])
                    if ch == 12 or ncells == 1:
                        flush()
            elif ch == 0xFF:
                cell.extend(data[start:i])
                update_width()
                start = i
                in_escape = True
        elif ch == 0xFF:
            cell.extend(data[start:i + 1])
            start = i + 1
            end_escape()
    cell.extend(data[start:])
    flush()
    return bytes(out)


# ------------------------------------------------------------------------------------------------

def header_text(f: sif.SIFFile) -> bytes:
    """What `siftool header` prints."""
    h = f.header
    rows = []
    if h.launch_script:
        script = _b(h.launch_script)
        rows.append(b"Launch Script:\t" + (script[:-1] if script.endswith(b"\n") else script))
    rows.append(b"Version:\t" + _b(h.version))
    if h.arch:
        rows.append(b"Primary Architecture:\t" + _b(h.arch))
    if h.uuid != sif.NIL_UUID:
        rows.append(b"ID:\t" + _b(h.uuid_string))
    if not _is_go_zero_time(h.created):
        rows.append(b"Created At:\t" + _b(go_time_string(h.created)))
    if not _is_go_zero_time(h.modified):
        rows.append(b"Modified At:\t" + _b(go_time_string(h.modified)))
    rows += [
        b"Descriptors Free:\t%d" % h.descriptors_free,
        b"Descriptors Total:\t%d" % h.descriptors_total,
        b"Descriptors Offset:\t%d" % h.descriptors_offset,
        b"Descriptors Size:\t" + _b(readable_size(h.descriptors_size)),
        b"Data Offset:\t%d" % h.data_offset,
        b"Data Size:\t" + _b(readable_size(h.data_size)),
    ]
    return _tabwrite(b"".join(row + b"\n" for row in rows), 1)


def list_text(f: sif.SIFFile) -> bytes:
    """What `siftool list` prints: one row per object, in descriptor table order."""
    out = [_RULE, f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE\n",
           _RULE]
    for d in sorted(f.descriptors, key=lambda d: d.slot):
        out.append(f"{d.id:<4d} ")
        out.append(f"|{'NONE':<7} " if d.group_id == 0 else f"|{d.group_id:<7d} ")
        if d.link_id == 0:
            out.append(f"|{'NONE':<7} ")
        elif d.link_is_group:
            out.append(f"|{d.link_id:<3d} (G) ")
        else:
            out.append(f"|{d.link_id:<7d} ")
        out.append(f"{f'|{d.offset}-{d.offset + d.size} ':<26} ")
        out.append(_list_type(d))
    return "".join(out).encode()


def _list_type(d: sif.Descriptor) -> str:
    name = datatype_name(d.datatype)
    if d.datatype == sif.DATA_PARTITION:
        return (f"|{name} ({FS_NAMES.get(d.fs_type, 'Unknown')}/"
                f"{PART_NAMES.get(d.part_type, 'Unknown')}/{_arch(d.arch)})\n")
    if d.datatype == sif.DATA_SIGNATURE:
        hash_name = HASH_NAMES.get(d.hash_type)
        # siftool prints nothing, not even the newline, for a hash type it does not know
        return "" if hash_name is None else f"|{name} ({hash_name})\n"
    if d.datatype == sif.DATA_CRYPTOMESSAGE:
        return (f"|{name} ({FORMAT_NAMES.get(d.format_type, 'Unknown')}/"
                f"{MESSAGE_NAMES.get(d.message_type, 'Unknown')})\n")
    if d.datatype == sif.DATA_SBOM:
        return f"|{name} ({SBOM_NAMES.get(d.sbom_format, 'unknown')})\n"
    return f"|{name}\n"


def info_text(d: sif.Descriptor) -> bytes:
    """What `siftool info ID` prints for descriptor d."""
    rows = [
        b"Data Type:\t" + _b(datatype_name(d.datatype)),
        b"ID:\t%d" % d.id,
        b"Group ID:\t" + (b"NONE" if d.group_id == 0 else b"%d" % d.group_id),
        b"Linked ID:\t" + (b"NONE" if d.link_id == 0 else
                           b"%d (G)" % d.link_id if d.link_is_group else b"%d" % d.link_id),
        b"Offset:\t%d" % d.offset,
        b"Size:\t%d" % d.size,
    ]
    if not _is_go_zero_time(d.created):
        rows.append(b"Created At:\t" + _b(go_time_string(d.created)))
    if not _is_go_zero_time(d.modified):
        rows.append(b"Modified At:\t" + _b(go_time_string(d.modified)))
    if d.name:
        rows.append(b"Name:\t" + _b(d.name))
    if d.datatype == sif.DATA_PARTITION:
        rows += [
            b"Filesystem Type:\t" + _b(FS_NAMES.get(d.fs_type, "Unknown")),
            b"Partition Type:\t" + _b(PART_NAMES.get(d.part_type, "Unknown")),
            b"Architecture:\t" + _b(_arch(d.arch)),
        ]
    elif d.datatype == sif.DATA_SIGNATURE:
        hash_name = HASH_NAMES.get(d.hash_type)
        if hash_name is None:
            raise SIFError(f"object {d.id}: unsupported signature hash type {d.hash_type}")
        rows.append(b"Hash Type:\t" + _b(hash_name))
        if d.entity:
            rows.append(b"Entity:\t" + _b(d.entity.hex().upper()))
    elif d.datatype == sif.DATA_CRYPTOMESSAGE:
        rows += [
            b"Format Type:\t" + _b(FORMAT_NAMES.get(d.format_type, "Unknown")),
            b"Message Type:\t" + _b(MESSAGE_NAMES.get(d.message_type, "Unknown")),
        ]
    elif d.datatype == sif.DATA_SBOM:
        rows.append(b"Format:\t" + _b(SBOM_NAMES.get(d.sbom_format, "unknown")))
    elif d.datatype in (sif.DATA_OCIROOTINDEX, sif.DATA_OCIBLOB):
        rows.append(b"Digest:\t" + _b(_valid_digest(d)))
    return _tabwrite(b"".join(b"\t" + row + b"\n" for row in rows), 2)


def _valid_digest(d: sif.Descriptor) -> str:
    """The OCI digest, which must be sha256:<64 lowercase hex> (the only form siftool takes)."""
    digest = d.oci_digest or ""
    algorithm, colon, hex_part = digest.partition(":")
    if not colon or ":" in hex_part or not set(hex_part) <= _HEX or algorithm != "sha256" \
            or len(hex_part) != 64:
        shown = digest.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise SIFError(f"object {d.id}: invalid OCI digest {shown!r}")
    return digest
