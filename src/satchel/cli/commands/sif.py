"""satchel sif: siftool's commands (header, list, info, dump, new, add, del, setprim).

Apptainer embeds Sylabs' siftool as `apptainer sif`; the names, arguments, flags and printed
output here follow it, so scripts written for one work with the other. Wiring only: the format
lives in satchel.image.sif, the printers in satchel.image.sif_print.
"""

from __future__ import annotations

import sys

from satchel.cli import options as o
from satchel.errors import SIFError, UsageError

_SUBCOMMANDS = """Available Commands:
  add         Add data object
  del         Delete data object
  dump        Dump data object
  header      Display global header
  info        Display data object info
  list        List data objects
  new         Create SIF image
  setprim     Set primary system partition
"""

SPECS = {
    "sif": o.Spec(
        "sif", "sif <command> [args...]",
        "Manipulate Singularity Image Format (SIF) images",
        description="Manipulate Singularity Image Format (SIF) images: display the global header "
                    "and data objects, dump, add and delete objects, set the primary partition.\n\n"
                    + _SUBCOMMANDS.rstrip(),
        examples="  satchel sif list image.sif\n  satchel sif info 1 image.sif",
        interspersed=False,
    ),
}

_DATATYPE_HELP = ("the type of data to add [NEEDED]: 1-Deffile, 2-EnvVar, 3-Labels, 4-Partition, "
                  "5-Signature, 6-GenericJSON, 7-Generic, 8-CryptoMessage, 9-SBOM, "
                  "10-OCI.RootIndex, 11-OCI.Blob")
_ADD_OPTIONS = (
    o.Opt("--datatype", "datatype", o.VALUE, metavar="int", help=_DATATYPE_HELP),
    o.Opt("--parttype", "parttype", o.VALUE, metavar="int32",
          help="the type of partition (with --datatype 4): 1-System, 2-PrimSys, 3-Data, 4-Overlay"),
    o.Opt("--partfs", "partfs", o.VALUE, metavar="int32",
          help="the filesystem used (with --datatype 4): 1-Squash, 2-Ext3, 3-ImmuObj, 4-Raw"),
    o.Opt("--partarch", "partarch", o.VALUE, metavar="int32",
          help="the main architecture used (with --datatype 4): 1-386, 2-amd64, 3-arm, 4-arm64, "
               "5-ppc64, 6-ppc64le, 7-mips, 8-mipsle, 9-mips64, 10-mips64le, 11-s390x, "
               "12-riscv64, 13-loong64"),
    o.Opt("--signhash", "signhash", o.VALUE, metavar="int32",
          help="the signature hash used (with --datatype 5): 1-SHA256, 2-SHA384, 3-SHA512, "
               "4-BLAKE2s_256, 5-BLAKE2b_256"),
    o.Opt("--signentity", "signentity", o.VALUE,
          help="the entity that signs (with --datatype 5), a 40-hex-digit key fingerprint"),
    o.Opt("--sbomformat", "sbomformat", o.VALUE,
          help="the SBOM format (with --datatype 9): cyclonedx-json, cyclonedx-xml, github-json, "
               "spdx-json, spdx-rdf, spdx-tag-value, spdx-yaml, syft-json"),
    o.Opt("--groupid", "groupid", o.VALUE, metavar="uint32", help="set groupid [default: 0]"),
    o.Opt("--link --linkid", "link", o.VALUE, metavar="uint32",
          help="set link pointer [default: 0]"),
    o.Opt("--alignment", "alignment", o.VALUE, metavar="int",
          help="set alignment [default: 4096 with --datatype 4-Partition, 0 otherwise]"),
    o.Opt("--filename", "filename", o.VALUE, help="set logical filename/handle [default: none]"),
)

# subcommand -> (usage, summary, positional names, options)
_SUBS = {
    "header": ("sif header <sif_path>", "Display global header", ("sif_path",), ()),
    "list": ("sif list <sif_path>", "List data objects", ("sif_path",), ()),
    "info": ("sif info <id> <sif_path>", "Display data object info", ("id", "sif_path"), ()),
    "dump": ("sif dump <id> <sif_path>", "Dump data object", ("id", "sif_path"), ()),
    "new": ("sif new <sif_path>", "Create SIF image", ("sif_path",), ()),
    "add": ("sif add [flags] <sif_path> <object_path>", "Add data object",
            ("sif_path", "object_path"), _ADD_OPTIONS),
    "del": ("sif del <id> <sif_path>", "Delete data object", ("id", "sif_path"), ()),
    "setprim": ("sif setprim <id> <sif_path>", "Set primary system partition",
                ("id", "sif_path"), ()),
}

_ADD_EXAMPLES = """  satchel sif add image.sif recipe.def --datatype 1
  satchel sif add image.sif rootfs.squashfs --datatype 4 --parttype 1 --partfs 1 --partarch 2
  satchel sif add image.sif signature.bin --datatype 5 --signhash 1 \\
      --signentity 433FE984155206BD962725E20E8713472A879943"""

_ARCHES = ("386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "mips", "mipsle", "mips64",
           "mips64le", "s390x", "riscv64", "loong64")
_SBOM_FORMATS = {"cyclonedx-json": 1, "cyclonedx-xml": 2, "github": 3, "github-json": 3,
                 "spdx-json": 4, "spdx-rdf": 5, "spdx-tag-value": 6, "spdx-yaml": 7,
                 "syft-json": 8}


def _sub_spec(sub: str) -> o.Spec:
    usage, summary, positionals, options = _SUBS[sub]
    example = "  satchel " + usage.replace("<id>", "1").replace("<sif_path>", "image.sif")
    return o.Spec("sif", usage, summary, options=options, min_args=len(positionals),
                  max_args=len(positionals),
                  examples=_ADD_EXAMPLES if sub == "add" else example)


def _uint(text: str, what: str, bits: int = 32) -> int:
    """strconv.ParseUint(text, 10, bits): decimal digits only."""
    if not text.isascii() or not text.isdigit() or int(text) >= 1 << bits:
        raise UsageError(f"while converting {what}: invalid value {text!r} "
                         f"(expected an unsigned {bits}-bit integer)")
    return int(text)


def _int(text: str, what: str, bits: int = 32) -> int:
    value = text[1:] if text[:1] in "+-" else text
    if not value.isascii() or not value.isdigit():
        raise UsageError(f"invalid argument {text!r} for --{what}: expected an integer")
    number = -int(value) if text.startswith("-") else int(value)
    if not -(1 << (bits - 1)) <= number < 1 << (bits - 1):
        raise UsageError(f"invalid argument {text!r} for --{what}: out of range")
    return number


def run(name: str, parsed) -> int:
    prog = getattr(parsed, "prog", "satchel")
    if not parsed.args:
        sys.stdout.write(o.format_help(SPECS["sif"], prog))
        return 0
    sub, rest = parsed.args[0], parsed.args[1:]
    if sub not in _SUBS:
        raise UsageError(f"unknown command {sub!r} for '{prog} sif'",
                         hint=f"run '{prog} sif --help' for the list of commands")
    spec = _sub_spec(sub)
    if any(arg in ("-h", "--help") for arg in rest if arg != "--"):
        sys.stdout.write(o.format_help(spec, prog))
        return 0
    args = o.parse(spec, rest, environ_defaults=False)
    return _HANDLERS[sub](args)


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _header(args) -> int:
    from satchel.image import sif, sif_print
    with sif.SIFFile.open(args.args[0]) as f:
        _write(sif_print.header_text(f))
    return 0


def _list(args) -> int:
    from satchel.image import sif, sif_print
    with sif.SIFFile.open(args.args[0]) as f:
        _write(sif_print.list_text(f))
    return 0


def _info(args) -> int:
    from satchel.image import sif, sif_print
    ident = _uint(args.args[0], "id")
    with sif.SIFFile.open(args.args[1]) as f:
        _write(sif_print.info_text(f.get(ident)))
    return 0


def _dump(args) -> int:
    from satchel.image import sif
    ident = _uint(args.args[0], "id")
    with sif.SIFFile.open(args.args[1]) as f:
        sys.stdout.flush()
        f.copy_data(ident, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


def _new(args) -> int:
    from satchel.image import sif
    # siftool's `new` writes an empty launch script, a random UUID and the current time
    sif.create(args.args[0], [], launch_script="")
    return 0


def _del(args) -> int:
    from satchel.image import sif
    sif.delete_object(args.args[1], _uint(args.args[0], "id"))
    return 0


def _setprim(args) -> int:
    from satchel.image import sif
    sif.set_primary(args.args[1], _uint(args.args[0], "id"))
    return 0


def _add(args) -> int:
    from satchel.image import sif
    sif_path, object_path = args.args
    datatype = _int(args.datatype, "datatype", 64) if args.datatype is not None else 0
    if not 1 <= datatype <= 11:
        raise UsageError("--datatype is required, with a value from 1 to 11",
                         hint="run 'satchel sif add --help' for the data types")
    datatype += sif.DATA_DEFFILE - 1
    fields: dict = {}
    group = _uint(args.groupid, "groupid") if args.groupid is not None else 0
    if group >= sif.GROUP_MASK:
        raise UsageError(f"--groupid {group} out of range")
    fields["group_id"] = group  # siftool: no --groupid means no group
    if args.link is not None:
        link = _uint(args.link, "link")
        if link == 0 or link >= sif.GROUP_MASK:
            raise UsageError(f"invalid object id {link} for --link")
        fields["link_id"] = link
    if args.alignment is not None:
        fields["alignment"] = _int(args.alignment, "alignment", 64)
    if args.filename is not None:
        fields["name"] = args.filename
    if datatype == sif.DATA_PARTITION:
        fs = _int(args.partfs or "0", "partfs")
        part = _int(args.parttype or "0", "parttype")
        arch = _int(args.partarch or "0", "partarch")
        if not (fs and part and arch):
            raise UsageError("with partition datatype, --partfs, --parttype and --partarch "
                             "must be passed")
        if not 1 <= arch <= len(_ARCHES):
            raise UsageError(f"unknown architecture number {arch} for --partarch")
        fields.update(fs_type=fs, part_type=part, arch=_ARCHES[arch - 1])
    elif datatype == sif.DATA_SIGNATURE:
        try:
            entity = bytes.fromhex(args.signentity or "")
        except ValueError:
            raise UsageError(f"failed to decode signing entity fingerprint "
                             f"{args.signentity!r}: not hexadecimal") from None
        hash_type = _int(args.signhash or "0", "signhash")
        if not 1 <= hash_type <= 5:
            raise UsageError(f"invalid hash type: {hash_type}")
        if len(entity) != 20:
            raise UsageError(f"invalid signing entity fingerprint length: got {len(entity)}, "
                             f"want 20")
        fields.update(hash_type=hash_type, entity=entity)
    elif datatype == sif.DATA_SBOM:
        if not args.sbomformat:
            raise UsageError("with SBOM datatype, --sbomformat must be passed")
        if args.sbomformat not in _SBOM_FORMATS:
            raise UsageError(f"invalid SBOM format: {args.sbomformat}")
        fields["sbom_format"] = _SBOM_FORMATS[args.sbomformat]
    elif datatype == sif.DATA_CRYPTOMESSAGE:
        fields.update(format_type=0, message_type=0)  # siftool has no flags for these
    import os
    if os.path.isdir(object_path):  # anything else that reads, as siftool: files, pipes
        raise SIFError(f"could not read {object_path}: is a directory")
    sif.add_object(sif_path, sif.NewObject(datatype=datatype, path=object_path, **fields))
    return 0


_HANDLERS = {"header": _header, "list": _list, "info": _info, "dump": _dump, "new": _new,
             "add": _add, "del": _del, "setprim": _setprim}
