"""Keys and keyrings for the trust tests: the corpus key imported into a fresh Apptainer-layout
keyring, a passphrase-protected key made by GnuPG, PEM key pairs made by `cryptography`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.support.corpus import CORPUS

KEYS = os.path.join(CORPUS, "keys")
PRIVATE_ASC = os.path.join(KEYS, "private.asc")
CORPUS_FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
PASSPHRASE = "correct horse"


def write_keyring(directory: str, public: bytes = b"", secret: bytes = b"",
                  owner: tuple[int, int] | None = None) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, data in (("pgp-public", public), ("pgp-secret", secret)):
        if data:
            with open(os.path.join(directory, name), "wb") as fh:
                fh.write(data)
    if owner:
        for dirpath, _, files in os.walk(directory):
            os.chown(dirpath, *owner)
            for f in files:
                os.chown(os.path.join(dirpath, f), *owner)


def corpus_key():
    from satchel.trust import pgp
    return pgp.read_keys(PRIVATE_ASC)[0]


@pytest.fixture
def corpus_keyring(tmp_path):
    """APPTAINER_KEYSDIR holding the corpus key, public and secret; yields the env to use."""
    key = corpus_key()
    keys = str(tmp_path / "keys")
    write_keyring(keys, key.public_bytes(), key.binary())
    return {"APPTAINER_KEYSDIR": keys}


@pytest.fixture(scope="session")
def passphrase_key():
    """A secret key protected by PASSPHRASE (pysequoia cannot encrypt keys: GnuPG makes it)."""
    home = tempfile.mkdtemp(prefix="satchel-gpg-")
    try:
        base = ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback",
                "--passphrase", PASSPHRASE]
        subprocess.run(base + ["--quick-gen-key", "Pass Phrase <pass@example.org>", "ed25519",
                               "sign", "never"], check=True, capture_output=True)
        out = subprocess.run(base + ["--export-secret-keys"], check=True,
                             capture_output=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    assert out
    return out


def pem_pair(directory: str, kind: str) -> tuple[str, str]:
    """(private.pem, public.pem) of a new key: ecdsa, ed25519 or rsa."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    key = {"ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
           "ed25519": ed25519.Ed25519PrivateKey.generate,
           "rsa": lambda: rsa.generate_private_key(65537, 2048)}[kind]()
    private = os.path.join(directory, f"{kind}-private.pem")
    public = os.path.join(directory, f"{kind}-public.pem")
    with open(private, "wb") as fh:
        fh.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    with open(public, "wb") as fh:
        fh.write(key.public_key().public_bytes(s.Encoding.PEM,
                                               s.PublicFormat.SubjectPublicKeyInfo))
    return private, public
