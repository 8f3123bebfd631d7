"""`satchel sif` through the installed entry point: goldens byte for byte, modifications, FATALs.

Output is compared as bytes (not decoded text) so that nothing, not even a trailing space or a
missing newline, can differ from what the reference siftool printed.
"""

import hashlib
import os
import re
import shutil
import subprocess

import pytest

from support.corpus import CORPUS, GOLDEN, IMAGES, golden_path, golden_source, goldens
from support.fixtures_users import SATCHEL, run_satchel

from satchel.image import sif

def satchel(args, stdout=subprocess.PIPE, user=None):
    """Run satchel, returning (rc, stdout bytes, stderr text)."""
    argv = [SATCHEL] + list(args)
    if user is not None:
        argv = user.argv(argv)
    proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=60,
                          env=user.env() if user is not None else None)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def golden_cases():
    cases = []
    for kind, name in goldens():
        image, ident = golden_source(kind, name)
        args = ["info", str(ident), image] if kind == "Info" else [kind.lower(), image]
        cases.append(pytest.param(args, golden_path(kind, name), id=f"{kind}/{name}"))
    return cases


@pytest.mark.parametrize("args,golden", golden_cases())
def test_golden(args, golden):
    rc, out, err = satchel(["sif"] + args)
    assert rc == 0, err
    assert err == ""
    with open(golden, "rb") as fh:
        assert out == fh.read()


def test_goldens_as_unprivileged_user(test_user):
    for args, golden in [(["list", os.path.join(IMAGES, "two-groups-signed-pgp.sif")],
                          "List/TwoGroupsSignedPGP.golden"),
                         (["header", os.path.join(IMAGES, "empty-id.sif")],
                          "Header/EmptyID.golden")]:
        rc, out, err = satchel(["sif"] + args, user=test_user)
        assert rc == 0, err
        assert out == open(os.path.join(GOLDEN, golden), "rb").read()


def test_dump_to_pipe_and_file(tmp_path):
    image = os.path.join(IMAGES, "two-groups-signed-pgp.sif")
    squashfs = open(os.path.join(CORPUS, "root.squashfs"), "rb").read()
    rc, out, err = satchel(["sif", "dump", "2", image])
    assert rc == 0, err
    assert out == squashfs
    target = tmp_path / "dumped"
    with open(target, "wb") as fh:  # stdout is a regular file: the sendfile path
        rc, _, err = satchel(["sif", "dump", "3", image], stdout=fh)
    assert rc == 0, err
    with sif.SIFFile.open(image) as f:
        assert target.read_bytes() == f.read_data(3)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == \
            hashlib.sha256(f.read_data(3)).hexdigest()


def test_build_an_image_like_siftool(tmp_path):
    """new + add with siftool's flags gives the same objects, at the same places, as the corpus."""
    image = str(tmp_path / "built.sif")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes([0xFA, 0xCE, 0xFE, 0xED]))
    squashfs = os.path.join(CORPUS, "root.squashfs")
    assert satchel(["sif", "new", image])[0] == 0
    rc, out, err = satchel(["sif", "header", image])
    assert rc == 0 and b"Launch Script" not in out and b"Created At:" in out
    assert re.search(rb"^ID: +[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-", out, re.M)
    for args in (["--datatype", "4", "--partfs", "4", "--parttype", "1", "--partarch", "1",
                  "--groupid", "1", image, str(raw)],
                 ["--datatype", "4", "--partfs", "1", "--parttype", "2", "--partarch", "1",
                  "--groupid", "1", image, squashfs]):
        rc, out, err = satchel(["sif", "add"] + args)
        assert (rc, out, err) == (0, b"", "")
    rc, out, _ = satchel(["sif", "list", image])
    assert out == open(os.path.join(GOLDEN, "List", "OneGroup.golden"), "rb").read()
    rc, out, _ = satchel(["sif", "dump", "2", image])
    assert out == open(squashfs, "rb").read()

    # objects without --groupid are in no group, as with siftool; --link, --filename
    deffile = tmp_path / "recipe.def"
    deffile.write_text("Bootstrap: scratch\n")
    assert satchel(["sif", "add", "--datatype", "1", "--link", "2", "--filename", "recipe.def",
                    image, str(deffile)])[0] == 0
    rc, out, _ = satchel(["sif", "info", "3", image])
    # a new image has times: "Modified At:" widens the column
    assert out.startswith(b"  Data Type:    Def.FILE\n  ID:           3\n  Group ID:     NONE\n"
                          b"  Linked ID:    2\n  Offset:       40960\n  Size:         19\n")
    assert b"  Name:         recipe.def\n" in out
    rc, out, _ = satchel(["sif", "list", image])
    assert out.decode().splitlines()[-1] == \
        "3    |NONE    |2       |40960-40979               |Def.FILE"

    signature = tmp_path / "sig.bin"
    signature.write_bytes(b"signature")
    assert satchel(["sif", "add", "--datatype", "5", "--signhash", "2", "--signentity",
                    "433FE984155206BD962725E20E8713472A879943", "--groupid", "1", image,
                    str(signature)])[0] == 0
    sbom = tmp_path / "sbom.json"
    sbom.write_text("{}")
    assert satchel(["sif", "add", "--datatype", "9", "--sbomformat", "spdx-json", image,
                    str(sbom)])[0] == 0
    assert satchel(["sif", "add", "--datatype", "11", image, str(sbom)])[0] == 0
    rc, out, _ = satchel(["sif", "list", image])
    assert out.decode().splitlines()[-3:] == [
        "4    |1       |NONE    |40979-40988               |Signature (SHA-384)",
        "5    |NONE    |NONE    |40988-40990               |SBOM (spdx-json)",
        "6    |NONE    |NONE    |40990-40992               |OCI.Blob",
    ]
    rc, out, _ = satchel(["sif", "info", "6", image])
    assert out.endswith(b"  Digest:       sha256:" + hashlib.sha256(b"{}").hexdigest().encode()
                        + b"\n")
    # the object may come from a pipe, as with siftool
    proc = subprocess.run([SATCHEL, "sif", "add", "--datatype", "3", image, "/dev/stdin"],
                          input=b'{"from": "stdin"}', capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert satchel(["sif", "dump", "7", image])[1] == b'{"from": "stdin"}'
    rc, out, _ = satchel(["sif", "info", "4", image])
    assert out.endswith(b"  Entity:       433FE984155206BD962725E20E8713472A879943\n")

    # del frees the descriptor; the next object takes its slot and id
    assert satchel(["sif", "del", "3", image])[0] == 0
    rc, out, _ = satchel(["sif", "list", image])
    assert b"Def.FILE" not in out
    rc, out, _ = satchel(["sif", "header", image])
    assert b"Descriptors Free:     42\n" in out


def test_setprim(tmp_path):
    image = str(tmp_path / "two.sif")
    shutil.copyfile(os.path.join(IMAGES, "two-groups.sif"), image)
    rc, out, err = satchel(["sif", "setprim", "3", image])
    assert (rc, out, err) == (0, b"", "")
    rc, out, _ = satchel(["sif", "list", image])
    assert out.decode().splitlines()[3:] == [
        "1    |1       |NONE    |32768-32772               |FS (Raw/System/386)",
        "2    |1       |NONE    |36864-40960               |FS (Squashfs/System/386)",
        "3    |2       |NONE    |40960-303104              |FS (Ext3/*System/amd64)",
    ]
    rc, out, _ = satchel(["sif", "header", image])
    assert b"Primary Architecture: amd64\n" in out


# --- bad input: one FATAL line, exit 255, nothing on stdout ---------------------------------------

def assert_fatal(result, pattern):
    rc, out, err = result
    assert rc == 255, (out, err)
    assert out == b""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) in (1, 2) and lines[0].startswith("FATAL:   "), err
    assert len(lines) == 1 or lines[1].lstrip().startswith("hint:"), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("args", [["header"], ["list"], ["info", "1"], ["dump", "1"],
                                  ["del", "1"], ["setprim", "1"]])
def test_missing_file(tmp_path, args):
    missing = str(tmp_path / "missing.sif")
    assert_fatal(satchel(["sif"] + args + [missing]),
                 rf"could not open {re.escape(missing)}: no such file or directory")


def test_missing_file_as_user(test_user, user_tmp):
    missing = os.path.join(user_tmp, "nope.sif")
    assert_fatal(satchel(["sif", "list", missing], user=test_user), "no such file or directory")


def test_unreadable_file_as_user(test_user, user_tmp):
    path = os.path.join(user_tmp, "secret.sif")
    shutil.copyfile(os.path.join(IMAGES, "one-group.sif"), path)
    os.chmod(path, 0o600)  # owned by root
    assert_fatal(satchel(["sif", "header", path], user=test_user), "permission denied")
    before = open(path, "rb").read()
    assert_fatal(satchel(["sif", "del", "1", path], user=test_user), "permission denied")
    assert open(path, "rb").read() == before


def test_bad_files(tmp_path):
    truncated = tmp_path / "truncated.sif"
    truncated.write_bytes(open(os.path.join(IMAGES, "one-group.sif"), "rb").read()[:5000])
    assert_fatal(satchel(["sif", "list", str(truncated)]), "truncated descriptor table")
    cut_header = tmp_path / "cut.sif"
    cut_header.write_bytes(open(os.path.join(IMAGES, "one-group.sif"), "rb").read()[:77])
    assert_fatal(satchel(["sif", "header", str(cut_header)]), "truncated global header")
    cut_object = tmp_path / "cut-object.sif"
    cut_object.write_bytes(open(os.path.join(IMAGES, "one-group.sif"), "rb").read()[:38000])
    assert_fatal(satchel(["sif", "dump", "1", str(cut_object)]),
                 r"object 2 \(offset 36864, size 4096\) extends past end of file \(38000 bytes\)")
    text = tmp_path / "text.sif"
    text.write_text("hello\n" * 100)
    assert_fatal(satchel(["sif", "header", str(text)]), "not a SIF file: bad magic")
    assert_fatal(satchel(["sif", "list", str(tmp_path)]), "not a regular file")
    overlapping = tmp_path / "overlap.sif"
    data = bytearray(open(os.path.join(IMAGES, "one-group.sif"), "rb").read())
    data[4096 + 585 + 17:4096 + 585 + 25] = (32768).to_bytes(8, "little")
    overlapping.write_bytes(bytes(data))
    assert_fatal(satchel(["sif", "info", "1", str(overlapping)]), "objects 1 .* and 2 .* overlap")
    absurd = tmp_path / "absurd.sif"
    data = bytearray(open(os.path.join(IMAGES, "one-group.sif"), "rb").read())
    data[88:96] = (2 ** 40).to_bytes(8, "little")
    absurd.write_bytes(bytes(data))
    assert_fatal(satchel(["sif", "list", str(absurd)]), "absurd descriptor count")


def test_bad_arguments(tmp_path):
    image = str(tmp_path / "x.sif")
    shutil.copyfile(os.path.join(IMAGES, "one-group.sif"), image)
    before = open(image, "rb").read()
    payload = tmp_path / "payload"
    payload.write_bytes(b"p")
    cases = [
        (["info", "abc", image], "while converting id"),
        (["info", "-1", image], "unknown shorthand flag|while converting id"),
        (["info", "4294967296", image], "while converting id"),
        (["info", "0", image], "no object with id 0"),
        (["info", "9", image], "no object with id 9"),
        (["dump", "9", image], "no object with id 9"),
        (["del", "9", image], "no object with id 9"),
        (["setprim", "9", image], "no object with id 9"),
        (["setprim", "2", image], None),  # already primary: nothing to do, succeeds
        (["header"], "requires 1 arg"),
        (["info", "1"], "requires 2 arg"),
        (["frobnicate", image], "unknown command 'frobnicate'"),
        (["add", image, str(payload)], "--datatype is required"),
        (["add", "--datatype", "12", image, str(payload)], "--datatype is required"),
        (["add", "--datatype", "x", image, str(payload)], "invalid argument 'x' for --datatype"),
        (["add", "--datatype", "4", image, str(payload)], "--partfs, --parttype and --partarch"),
        (["add", "--datatype", "4", "--partfs", "1", "--parttype", "1", "--partarch", "99",
          image, str(payload)], "unknown architecture"),
        (["add", "--datatype", "4", "--partfs", "1", "--parttype", "2", "--partarch", "2",
          image, str(payload)], "already contains a primary partition"),
        (["add", "--datatype", "5", "--signhash", "1", "--signentity", "xyz", image,
          str(payload)], "failed to decode signing entity"),
        (["add", "--datatype", "5", "--signhash", "1", "--signentity", "abcd", image,
          str(payload)], "fingerprint length: got 2, want 20"),
        (["add", "--datatype", "5", "--signhash", "9", "--signentity", "ab" * 20, image,
          str(payload)], "invalid hash type"),
        (["add", "--datatype", "9", image, str(payload)], "--sbomformat must be passed"),
        (["add", "--datatype", "9", "--sbomformat", "xml", image, str(payload)],
         "invalid SBOM format"),
        (["add", "--datatype", "1", "--link", "0", image, str(payload)], "invalid object id 0"),
        (["add", "--datatype", "1", "--filename", "n" * 129, image, str(payload)],
         "name too long"),
        (["add", "--datatype", "1", image, str(tmp_path / "missing")], "could not open"),
        (["add", "--datatype", "1", image, str(tmp_path)], "is a directory"),
        (["add", "--bogus", image, str(payload)], "unknown flag: --bogus"),
    ]
    for args, pattern in cases:
        result = satchel(["sif"] + args)
        if pattern is None:
            assert result[0] == 0, result
        else:
            assert_fatal(result, pattern)
        assert open(image, "rb").read() == before, f"{args} changed the image"


def test_help():
    rc, out, _ = satchel(["sif", "--help"])
    assert rc == 0
    for sub in ("header", "list", "info", "dump", "new", "add", "del", "setprim"):
        assert f"  {sub} ".encode() in out
    rc, out, _ = satchel(["sif", "add", "--help"])
    assert rc == 0 and b"--datatype" in out and b"--partarch" in out
    result = run_satchel(["help", "sif"])
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_dump_into_a_closed_pipe_is_quiet():
    """`satchel sif dump ... | head -c 10`: the reader leaving is not an error to report."""
    image = os.path.join(IMAGES, "two-groups.sif")
    proc = subprocess.run(f"'{SATCHEL}' sif dump 3 '{image}' | head -c 10 >/dev/null; "
                          "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, timeout=60)
    assert proc.stderr == b""
    assert proc.stdout.strip() in (b"141", b"0")
