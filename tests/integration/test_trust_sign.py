"""satchel sign: signatures the reference's format, verified by satchel verify, listed like the
corpus's signed images; failures leave the image byte-identical."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from tests.support.corpus import IMAGES
from tests.support.fixtures_trust import (CORPUS_FPR, PASSPHRASE, corpus_key, pem_pair,
                                          write_keyring)
from tests.support.fixtures_users import run_satchel


def _copy(name: str, directory, owner=None) -> str:
    path = os.path.join(str(directory), name)
    shutil.copyfile(os.path.join(IMAGES, name), path)
    if owner:
        os.chown(path, *owner)
    return path


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _shape(path: str) -> list[tuple]:
    """`sif list` without positions: ID, GROUP, LINK, TYPE."""
    proc = run_satchel(["sif", "list", path], check=True)
    rows = [l.split("|") for l in proc.stdout.splitlines() if l[:1].isdigit()]
    return [(r[0].strip(), r[1].strip(), r[2].strip(), r[4].strip()) for r in rows]


def _fatal(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("FATAL:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("base,signed", [("one-group.sif", "one-group-signed-pgp.sif"),
                                         ("two-groups.sif", "two-groups-signed-pgp.sif")])
def test_pgp_sign_lists_like_the_corpus_and_verifies(base, signed, corpus_keyring, tmp_path):
    image = _copy(base, tmp_path)
    proc = run_satchel(["sign", "--keyidx", "0", image], env=corpus_keyring)
    assert proc.returncode == 0, proc.stderr
    assert _shape(image) == _shape(os.path.join(IMAGES, signed))
    info = run_satchel(["sif", "info", _shape(image)[-1][0], image], check=True).stdout
    assert f"Entity:     {CORPUS_FPR}" in info and "SHA-256" in info
    proc = run_satchel(["verify", image], env=corpus_keyring)
    assert proc.returncode == 0, proc.stderr
    assert f"Fingerprint: {CORPUS_FPR}" in proc.stdout


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_dsse_sign_with_pem_key(kind, tmp_path):
    private, public = pem_pair(str(tmp_path), kind)
    (tmp_path / "other").mkdir()
    _, other = pem_pair(str(tmp_path / "other"), kind)  # same kind, another key
    image = _copy("two-groups.sif", tmp_path)
    proc = run_satchel(["sign", "--key", private, image])
    assert proc.returncode == 0, proc.stderr
    assert _shape(image) == _shape(os.path.join(IMAGES, "two-groups-signed-dsse.sif"))
    assert run_satchel(["verify", "--key", public, image]).returncode == 0
    assert "dsse: verify envelope failed" in _fatal(run_satchel(["verify", "--key", other,
                                                                 image]))


def test_sign_group_and_object_selection(corpus_keyring, tmp_path):
    image = _copy("two-groups.sif", tmp_path)
    assert run_satchel(["sign", "--group-id", "2", image], env=corpus_keyring).returncode == 0
    assert run_satchel(["verify", "--group-id", "2", image], env=corpus_keyring).returncode == 0
    line = _fatal(run_satchel(["verify", image], env=corpus_keyring))
    assert "signature not found for object group 1" in line
    assert run_satchel(["sign", "--sif-id", "2", image], env=corpus_keyring).returncode == 0
    assert run_satchel(["verify", "--sif-id", "2", image], env=corpus_keyring).returncode == 0
    # object 1 is in group 1, whose only signature covers object 2 alone
    assert _fatal(run_satchel(["verify", "--group-id", "1", image], env=corpus_keyring))


def test_wrong_passphrase_is_one_fatal_line_and_changes_nothing(passphrase_key, tmp_path):
    keys = str(tmp_path / "keys")
    write_keyring(keys, secret=passphrase_key)
    env = {"APPTAINER_KEYSDIR": keys}
    image = _copy("one-group.sif", tmp_path)
    before = _digest(image)
    line = _fatal(run_satchel(["sign", image], env=env, input=b"not the passphrase\n"))
    assert "wrong passphrase" in line
    assert _digest(image) == before
    proc = run_satchel(["sign", image], env=env, input=PASSPHRASE.encode() + b"\n")
    assert proc.returncode == 0, proc.stderr
    assert _digest(image) != before


def test_failed_sign_leaves_the_image_identical(corpus_keyring, tmp_path):
    image = _copy("one-group.sif", tmp_path)
    before = _digest(image)
    _fatal(run_satchel(["sign", "--group-id", "7", image], env=corpus_keyring))
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    assert "not a PEM private key" in _fatal(run_satchel(["sign", "--key", str(bogus), image]))
    empty = {"APPTAINER_KEYSDIR": str(tmp_path / "nokeys")}
    assert "no private key" in _fatal(run_satchel(["sign", image], env=empty))
    assert _digest(image) == before


def test_non_root_user_signs_with_own_keyring(test_user, user_tmp):
    key = corpus_key()
    keys = os.path.join(user_tmp, "keys")
    write_keyring(keys, key.public_bytes(), key.binary(), owner=(test_user.uid, test_user.gid))
    env = {"APPTAINER_KEYSDIR": keys}
    image = _copy("two-groups.sif", user_tmp, owner=(test_user.uid, test_user.gid))
    proc = run_satchel(["sign", image], user=test_user, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_satchel(["verify", image], user=test_user, env=env)
    assert proc.returncode == 0, proc.stderr
    os.chmod(image, 0o444)  # a write the user may not do: nothing changes
    before = _digest(image)
    _fatal(run_satchel(["sign", image], user=test_user, env=env))
    assert _digest(image) == before
