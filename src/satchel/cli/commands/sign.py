"""satchel sign: add signature objects to a SIF image (Apptainer's `sign` grammar).

Wiring only: the signing lives in satchel.trust.sign. A PGP key comes from the local secret
keyring (--keyidx N, or the only one), a PEM private key with --key makes a DSSE signature.
A passphrase is read from the terminal, or as one line on standard input when it is not one.
"""

from __future__ import annotations

import sys

from satchel.cli import options as o
from satchel.errors import TrustError, UsageError

SPECS = {
    "sign": o.Spec(
        "sign", "sign [sign options...] <image path>",
        "Add digital signature(s) to an image",
        description="Sign the object groups of a SIF image (by default all of them): PGP with a "
                    "key of the local keyring, or DSSE with --key PRIVATE.pem.",
        options=(
            o.Opt("-g --group-id", "group_id", o.VALUE, metavar="uint32",
                  help="sign objects with the specified group ID"),
            o.Opt("--groupid", "group_id", o.VALUE, metavar="uint32", hidden=True),
            o.Opt("-i --sif-id", "sif_id", o.VALUE, metavar="uint32",
                  help="sign object with the specified ID"),
            o.Opt("--id", "sif_id", o.VALUE, metavar="uint32", hidden=True),
            o.Opt("-k --keyidx", "keyidx", o.VALUE, metavar="int",
                  help="private key to use (index from 'key list --secret')"),
            o.Opt("--key", "key", o.VALUE, help="path to the private key file (PEM)"),
            o.Opt("-a --all", "all", help="sign all objects (the default: every group)"),
        ),
        min_args=1, max_args=1,
        examples="  satchel sign --keyidx 0 container.sif\n"
                 "  satchel sign --key private.pem container.sif",
    ),
}


def read_passphrase(prompt: str) -> str:
    """From the terminal when there is one, else the first line of standard input."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _id(text: str | None, what: str) -> list[int]:
    if text is None:
        return []
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 1 << 32:
        raise UsageError(f"invalid {what} {text!r}: expected a positive integer")
    return [int(text)]


def _pgp_signer(keyidx: str | None):
    from satchel.trust import keyring, pgp
    from satchel.trust.sign import PGPSigner

    path = keyring.secret_path()
    keys = keyring.load(path)
    if not keys:
        raise TrustError(f"no private key in {path}",
                         hint="create one with 'satchel key newpair', or import one with "
                              "'satchel key import --secret'")
    if keyidx is None:
        if len(keys) > 1:
            raise TrustError(f"{len(keys)} private keys in {path}: choose one with --keyidx",
                             hint="'satchel key list --secret' shows their indexes")
        index = 0
    else:
        if not keyidx.isascii() or not keyidx.isdigit() or int(keyidx) >= len(keys):
            raise UsageError(f"invalid --keyidx {keyidx!r}: the secret keyring holds "
                             f"{len(keys)} key(s), indexes 0 to {len(keys) - 1}")
        index = int(keyidx)
    key = keys[index]
    passphrase = None
    if pgp.needs_passphrase(key):
        passphrase = read_passphrase(f"Enter key passphrase for {key.fingerprint}: ")
    return PGPSigner(key, passphrase)


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.trust import dsse
    from satchel.trust.sign import DSSESigner, sign_image

    image = parsed.args[0]
    groups, objects = _id(parsed.group_id, "group ID"), _id(parsed.sif_id, "object ID")
    if parsed.key:
        log.info(f"Signing image with key material from '{parsed.key}'")
        signer = DSSESigner(dsse.load_private(
            parsed.key, lambda: read_passphrase(f"Enter passphrase for {parsed.key}: ")))
    else:
        log.info("Signing image with PGP key material")
        signer = _pgp_signer(parsed.keyidx)
    sign_image(image, signer, groups, objects)
    log.info(f"Signature created and applied to image '{image}'")
    return 0
