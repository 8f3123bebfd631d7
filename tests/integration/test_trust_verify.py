"""satchel verify against the reference corpus: images signed by sylabs/sif's pkg/integrity
with the keys in sif-testdata/keys. Each verifies with the right key and fails with a wrong one;
copies with one flipped byte fail and say what failed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.support.corpus import IMAGES
from tests.support.fixtures_trust import CORPUS_FPR, KEYS, write_keyring
from tests.support.fixtures_users import run_satchel

ED25519 = os.path.join(KEYS, "ed25519-public.pem")
RSA = os.path.join(KEYS, "rsa-public.pem")
ECDSA = os.path.join(KEYS, "ecdsa-public.pem")

# image -> the arguments that verify it (the oracle: how the reference signed it)
GOOD = {
    "one-group-signed-pgp.sif": [],
    "two-groups-signed-pgp.sif": [],
    "one-group-signed-dsse.sif": ["--key", ED25519],
    "two-groups-signed-dsse.sif": ["--key", RSA],
    "one-group-signed-legacy.sif": ["--legacy-insecure"],
    "two-groups-signed-legacy.sif": ["--legacy-insecure"],
    "one-group-signed-legacy-all.sif": ["--legacy-insecure", "--all"],
    "two-groups-signed-legacy-all.sif": ["--legacy-insecure", "--sif-id", "1"],
    "one-group-signed-legacy-group.sif": ["--legacy-insecure", "--group-id", "1"],
    "two-groups-signed-legacy-group.sif": ["--legacy-insecure", "--group-id", "1"],
}


def _verify(image, args, env):
    return run_satchel(["verify"] + list(args) + [image], env=env)


def _fatal(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("FATAL:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_corpus_image_verifies_with_the_right_key(name, corpus_keyring):
    proc = _verify(os.path.join(IMAGES, name), GOOD[name], corpus_keyring)
    assert proc.returncode == 0, proc.stderr
    assert "Objects verified:" in proc.stdout
    if "--key" not in GOOD[name]:
        assert f"Fingerprint: {CORPUS_FPR}" in proc.stdout


def test_every_signed_corpus_image_is_covered():
    signed = {f for f in os.listdir(IMAGES) if "-signed-" in f}
    assert signed == set(GOOD)


@pytest.mark.parametrize("name", sorted(n for n in GOOD if "pgp" in n or "legacy" in n))
def test_pgp_image_fails_with_another_key(name, tmp_path):
    from satchel.trust import pgp
    other = pgp.generate("Other <other@example.org>")
    keys = str(tmp_path / "keys")
    write_keyring(keys, other.public_bytes())
    line = _fatal(_verify(os.path.join(IMAGES, name), GOOD[name], {"APPTAINER_KEYSDIR": keys}))
    assert "unknown key" in line and CORPUS_FPR[-16:] in line  # legacy ones: key ID only


@pytest.mark.parametrize("name", ["one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"])
def test_dsse_image_fails_with_another_key(name, corpus_keyring):
    line = _fatal(_verify(os.path.join(IMAGES, name), ["--key", ECDSA], corpus_keyring))
    assert "dsse: verify envelope failed" in line


@pytest.mark.parametrize("name", ["one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"])
def test_dsse_image_needs_a_key(name, corpus_keyring):
    line = _fatal(_verify(os.path.join(IMAGES, name), [], corpus_keyring))
    assert "key material not provided for DSSE" in line


@pytest.mark.parametrize("name", sorted(n for n in GOOD if "legacy" in n))
def test_legacy_image_needs_legacy_insecure(name, corpus_keyring):
    args = [a for a in GOOD[name] if a != "--legacy-insecure"]
    line = _fatal(_verify(os.path.join(IMAGES, name), args, corpus_keyring))
    assert "signature not found" in line


def _flip(src: str, dst: str, offset: int) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def _layout(path):
    from satchel.image import sif
    with sif.SIFFile.open(path) as f:
        return f.header.descriptors_offset, {d.id: d for d in f.descriptors}


NAME_FIELD = 4 + 1 + 4 + 4 + 4 + 7 * 8  # offset of a descriptor's name field


@pytest.mark.parametrize("name,sig_id", [("one-group-signed-pgp.sif", 3),
                                         ("one-group-signed-dsse.sif", 3)])
@pytest.mark.parametrize("where", ["object", "descriptor", "header", "signature"])
def test_flipped_byte_fails_and_says_what(name, sig_id, where, corpus_keyring, tmp_path):
    src = os.path.join(IMAGES, name)
    table, objects = _layout(src)
    offset, expect = {
        "object": (objects[2].offset + 100, "data object integrity compromised: 2"),
        "descriptor": (table + objects[1].slot * 585 + NAME_FIELD,
                       "data object descriptor integrity compromised: 1"),
        "header": (3, "header integrity compromised"),
        "signature": (objects[sig_id].offset + (80 if "pgp" in name else 200),
                      "bad signature" if "pgp" in name else "dsse: verify envelope failed"),
    }[where]
    copy = str(tmp_path / name)
    _flip(src, copy, offset)
    line = _fatal(_verify(copy, GOOD[name], corpus_keyring))
    assert expect in line, line


def test_image_without_signatures_fails(corpus_keyring):
    line = _fatal(_verify(os.path.join(IMAGES, "one-group.sif"), [], corpus_keyring))
    assert "signature not found for object group 1" in line


def test_garbled_and_truncated_signature_objects_fail(corpus_keyring, tmp_path):
    src = os.path.join(IMAGES, "one-group-signed-pgp.sif")
    table, objects = _layout(src)
    sig = objects[3]
    garbled = str(tmp_path / "garbled.sif")
    shutil.copyfile(src, garbled)
    with open(garbled, "r+b") as fh:
        fh.seek(sig.offset)
        fh.write(b"\x00garbage" * (sig.size // 8))
    assert "signature format not recognized" in _fatal(_verify(garbled, [], corpus_keyring))
    truncated = str(tmp_path / "truncated.sif")
    shutil.copyfile(src, truncated)
    size_field = table + sig.slot * 585 + 4 + 1 + 4 + 4 + 4 + 8
    with open(truncated, "r+b") as fh:
        fh.seek(size_field)
        fh.write((sig.size // 2).to_bytes(8, "little"))
    line = _fatal(_verify(truncated, [], corpus_keyring))
    assert "signature object 3" in line and ("no OpenPGP signature" in line or
                                             "not valid" in line), line


def test_key_file_that_is_not_a_key(corpus_keyring, tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    line = _fatal(_verify(os.path.join(IMAGES, "one-group-signed-dsse.sif"),
                          ["--key", str(bogus)], corpus_keyring))
    assert "is not a PEM public key" in line
    text = tmp_path / "text.asc"
    text.write_text("hello, not a key\n")
    line = _fatal(_verify(os.path.join(IMAGES, "one-group-signed-pgp.sif"),
                          ["--key", str(text)], corpus_keyring))
    assert "is not an OpenPGP key" in line


def test_given_pgp_public_key_instead_of_keyring(tmp_path):
    from satchel.trust import pgp
    public = tmp_path / "public.asc"
    public.write_text(pgp.read_keys(os.path.join(KEYS, "private.asc"))[0].public().armored())
    empty = {"APPTAINER_KEYSDIR": str(tmp_path / "none")}
    proc = _verify(os.path.join(IMAGES, "two-groups-signed-pgp.sif"), ["--key", str(public)],
                   empty)
    assert proc.returncode == 0, proc.stderr


def test_json_output_lists_each_object(corpus_keyring):
    proc = _verify(os.path.join(IMAGES, "two-groups-signed-pgp.sif"), ["--json"],
                   corpus_keyring)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["Signatures"] == 2
    assert sorted(k["Signer"]["ObjectID"] for k in doc["SignerKeys"]) == [1, 2, 3]
    assert all(k["Signer"]["Fingerprint"] == CORPUS_FPR.lower() and k["Signer"]["DataCheck"]
               and k["Signer"]["KeyLocal"] for k in doc["SignerKeys"])


def test_json_output_on_altered_object(corpus_keyring, tmp_path):
    src = os.path.join(IMAGES, "one-group-signed-pgp.sif")
    _, objects = _layout(src)
    copy = str(tmp_path / "x.sif")
    _flip(src, copy, objects[1].offset)
    proc = _verify(copy, ["--json"], corpus_keyring)
    assert proc.returncode != 0
    doc = json.loads(proc.stdout)
    assert any(not k["Signer"]["DataCheck"] and k["Signer"]["ObjectID"] == 1
               for k in doc["SignerKeys"])


@pytest.mark.parametrize("args,ok", [(["--group-id", "2"], True), (["--sif-id", "3"], True),
                                     (["--group-id", "3"], False), (["--all"], True)])
def test_selection(args, ok, corpus_keyring):
    proc = _verify(os.path.join(IMAGES, "two-groups-signed-pgp.sif"), args, corpus_keyring)
    assert (proc.returncode == 0) == ok, proc.stderr


def test_local_and_no_keyserver(corpus_keyring):
    image = os.path.join(IMAGES, "one-group-signed-pgp.sif")
    assert _verify(image, ["--local"], corpus_keyring).returncode == 0
    line = _fatal(_verify(image, ["--url", "https://keys.example.org"], corpus_keyring))
    assert "no keyserver" in line
