"""satchel verify: check the signatures of a SIF image (Apptainer's `verify` grammar).

Wiring only: the checks live in satchel.trust.verify. PGP signatures are checked against the
global keyring and the user's local one (there is no keyserver: --url is refused), DSSE
signatures against --key PUBLIC.pem. Exits non-zero (one FATAL line) when any requested object
is unsigned, altered, or signed by an unknown key.
"""

from __future__ import annotations

import sys

from satchel.cli import options as o
from satchel.errors import TrustError, UsageError

_X509 = "X.509 certificate signatures are not supported (PGP and DSSE key signatures are)"
# Apptainer 1.3 verify flags satchel parses and refuses (tests/unit/test_apptainer_command_flags.py)
REFUSED = (
    o.refused("--certificate", "certificate", _X509, o.VALUE),
    o.refused("--certificate-intermediates", "certificate_intermediates", _X509, o.VALUE),
    o.refused("--certificate-roots", "certificate_roots", _X509, o.VALUE),
    o.refused("--ocsp-verify", "ocsp_verify", _X509),
)
SPECS = {
    "verify": o.Spec(
        "verify", "verify [verify options...] <image path>",
        "Verify digital signature(s) within an image",
        description="Verify the signature(s) of the data objects of a SIF image: each signature "
                    "must be valid, made by a known key, and cover the objects as they are now.",
        options=(
            o.Opt("-g --group-id", "group_id", o.VALUE, metavar="uint32",
                  help="verify objects with the specified group ID"),
            o.Opt("--groupid", "group_id", o.VALUE, metavar="uint32", hidden=True),
            o.Opt("-i --sif-id", "sif_id", o.VALUE, metavar="uint32",
                  help="verify object with the specified ID"),
            o.Opt("--id", "sif_id", o.VALUE, metavar="uint32", hidden=True),
            o.Opt("--key", "key", o.VALUE,
                  help="path to the public key file (PEM for DSSE signatures, or an OpenPGP "
                       "public key)"),
            o.Opt("-l --local", "local", help="only verify with local key(s) in keyring"),
            o.Opt("-j --json", "json", help="output json"),
            o.Opt("-a --all", "all", help="verify all objects"),
            o.Opt("--legacy-insecure", "legacy",
                  help="enable verification of (insecure) legacy signatures"),
            o.Opt("-u --url", "url", o.VALUE, help="specify a URL for a key server", hidden=True),
        ) + tuple(r[0] for r in REFUSED),
        min_args=1, max_args=1,
        examples="  satchel verify container.sif\n  satchel verify --key public.pem container.sif",
    ),
}

NO_KEYSERVER = ("there is no keyserver in satchel: keys are looked up in the local and global "
                "keyrings only")


def _id(text: str | None, what: str) -> list[int]:
    if text is None:
        return []
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 1 << 32:
        raise UsageError(f"invalid {what} {text!r}: expected a positive integer")
    return [int(text)]


def key_material(key_path: str | None):
    """Keys from --key (PEM: DSSE; otherwise an OpenPGP certificate) or the keyrings."""
    from satchel.trust import dsse, keyring, pgp
    from satchel.trust.verify import KeyMaterial

    if key_path:
        if dsse.is_pem(key_path):
            return KeyMaterial(dsse_keys=[dsse.load_public(key_path)])
        keys = pgp.read_keys(key_path)
        names = {k.fingerprint: (k.name, "GIVEN") for k in keys}
        return KeyMaterial(extra_pgp=b"".join(k.public_bytes() for k in keys), names=names)
    names = {}
    for where, path in (("GLOBAL", keyring.global_path()), ("LOCAL", keyring.public_path())):
        for k in keyring.load(path):
            names.setdefault(k.fingerprint, (k.name, where))
    return KeyMaterial(keyring.verification_keyrings(), names=names)


def run(name: str, parsed) -> int:
    from satchel import log
    from satchel.trust import verify
    o.check_refused(parsed, REFUSED)

    if parsed.url:
        raise TrustError(f"cannot verify against {parsed.url}: {NO_KEYSERVER}",
                         hint="import the signer's key with 'satchel key import' and use --local")
    image = parsed.args[0]
    groups, objects = _id(parsed.group_id, "group ID"), _id(parsed.sif_id, "object ID")
    material = key_material(parsed.key)
    log.info("Verifying image with " + ("key material from " + repr(parsed.key)
                                        if parsed.key else "PGP key material"))
    report = verify.verify_image(image, material, groups, objects, parsed.legacy, parsed.all)
    if parsed.json:
        _print_json(report)
    else:
        _print_text(report)
    if not report.ok:
        error = report.first_error()
        hint = None
        if "unknown key" in error:
            hint = f"import the signer's public key with 'satchel key import' ({NO_KEYSERVER})"
        elif "not found for" in error and "legacy" not in error:
            hint = "sign it with 'satchel sign', or try --legacy-insecure for Singularity 3.x " \
                   "signatures"
        raise TrustError(f"failed to verify container: {error}", hint=hint)
    log.info(f"Verified signature(s) from image '{image}'")
    return 0


def _row(d) -> str:
    group = str(d.group_id) if d.group_id else "NONE"
    link = "NONE" if not d.link_id else f"{d.link_id} (G)" if d.link_is_group else str(d.link_id)
    return f"{d.id:<4d}|{group:<8s}|{link:<8s}|{_type_name(d)}\n"


def _type_name(d) -> str:
    from satchel.image import sif
    names = {sif.DATA_DEFFILE: "Def.FILE", sif.DATA_ENVVAR: "Env.Vars",
             sif.DATA_LABELS: "JSON.Labels", sif.DATA_PARTITION: "FS",
             sif.DATA_SIGNATURE: "Signature", sif.DATA_GENERICJSON: "JSON.Generic",
             sif.DATA_GENERIC: "Generic/Raw", sif.DATA_CRYPTOMESSAGE: "Cryptographic Message",
             sif.DATA_SBOM: "SBOM", sif.DATA_OCIROOTINDEX: "OCI.RootIndex",
             sif.DATA_OCIBLOB: "OCI.Blob"}
    return names.get(d.datatype, "Unknown")


def _print_text(report) -> None:
    out = []
    for r in report.results:
        prefix = f"[{r.where or ('KEY' if r.kind == 'dsse' else 'UNKNOWN')}]"
        out.append(f"Signature object {r.sig_id} ({r.kind}):\n")
        if r.signer:
            if r.kind != "dsse":
                out.append(f"{prefix:<18} Signing entity: {r.name}\n")
                out.append(f"{prefix:<18} Fingerprint: {r.signer}\n")
            else:
                out.append(f"{prefix:<18} Key: {r.signer}\n")
        if r.verified:
            out.append("Objects verified:\n")
            out.append(f"{'ID':<4s}|{'GROUP':<8s}|{'LINK':<8s}|TYPE\n")
            out.append("-" * 48 + "\n")
            out.extend(_row(d) for d in r.verified)
        if r.error:
            out.append(f"\nError encountered during signature verification: {r.error}\n")
        out.append("\n")
    for error in report.errors:
        out.append(f"Error: {error}\n")
    sys.stdout.write("".join(out))
    sys.stdout.flush()


def _print_json(report) -> None:
    """Apptainer's --json shape: {"Signatures": N, "SignerKeys": [{"Signer": {...}}]}."""
    import json
    keys = []
    for r in report.results:
        for d, data_ok in [(d, True) for d in r.verified] + \
                ([(r.failed_object, False)] if r.failed_object is not None else []):
            keys.append({"Signer": {
                "Partition": _type_name(d), "Name": r.name or "unknown",
                "Fingerprint": r.signer.lower() if r.kind != "dsse" else r.signer,
                "KeyLocal": r.where == "LOCAL", "KeyCheck": bool(r.signer),
                "DataCheck": data_ok, "ObjectID": d.id, "SignatureID": r.sig_id,
                "Error": r.error or ""}})
    doc = {"Signatures": len(report.results), "SignerKeys": keys,
           "Errors": [r.error for r in report.results if r.error] + report.errors}
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()
