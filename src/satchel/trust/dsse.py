"""DSSE envelopes (in-toto's Dead Simple Signing Envelope), the reference's `--key` signatures.

    {"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"<base64 metadata>",
     "signatures":[{"keyid":"...","sig":"<base64>"}]}

Each signature signs PAE(type, payload) = "DSSEv1 <len type> <type> <len payload> <payload>":
ECDSA (ASN.1 DER) and RSA (PKCS#1 v1.5) over its SHA-256 digest, Ed25519 over the bytes
themselves, as sigstore's signers do. One valid signature from a given key is enough.
"""

from __future__ import annotations

import base64
import hashlib
import json

from satchel.errors import TrustError

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"
DESCRIPTOR_HASH = 1  # SHA-256


def _crypto():
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    except ImportError as err:
        raise TrustError(f"PEM key support is not installed: {err}",
                         hint="install the 'cryptography' package") from None
    return exceptions, hashes, serialization, ec, ed25519, padding, rsa


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def is_envelope(data: bytes) -> bool:
    if not data.lstrip().startswith(b"{"):
        return False
    try:
        return json.loads(data).get("payloadType") == PAYLOAD_TYPE
    except (ValueError, AttributeError):
        return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise TrustError(f"reading {path}: {(err.strerror or str(err)).lower()}") from None


def is_pem(path: str) -> bool:
    return b"-----BEGIN " in _read(path)[:4096] and b"PGP" not in _read(path)[:64]


def load_public(path: str):
    _, _, serialization, ec, ed25519, _, rsa = _crypto()
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise TrustError(f"{path} is not a PEM public key: {str(err).splitlines()[0].lower()}") \
            from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey,
                            rsa.RSAPublicKey)):
        raise TrustError(f"{path}: unsupported key type (ECDSA, Ed25519 or RSA expected)")
    return key


def load_private(path: str, passphrase_fn):
    """Load a PEM private key; passphrase_fn() is asked only when the key is encrypted."""
    _, _, serialization, ec, ed25519, _, rsa = _crypto()
    data = _read(path)
    if b"PRIVATE KEY" not in data:
        raise TrustError(f"{path} is not a PEM private key")
    password = None
    if b"ENCRYPTED" in data:
        password = passphrase_fn().encode()
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        key = serialization.load_pem_private_key(data, password=passphrase_fn().encode())
    except ValueError as err:
        if password is not None:
            raise TrustError(f"failed to decrypt {path}: wrong passphrase") from None
        raise TrustError(f"{path} is not a PEM private key: "
                         f"{str(err).splitlines()[0].lower()}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            rsa.RSAPrivateKey)):
        raise TrustError(f"{path}: unsupported key type (ECDSA, Ed25519 or RSA expected)")
    return key


def key_id(public_key) -> str:
    _, _, serialization, *_ = _crypto()
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def _hash(name: str):
    _, hashes, *_ = _crypto()
    return {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[name]()


def sign(private_key, payload: bytes) -> bytes:
    _, _, _, ec, ed25519, padding, rsa = _crypto()
    message = pae(PAYLOAD_TYPE, payload)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        sig = private_key.sign(message)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        sig = private_key.sign(message, ec.ECDSA(_hash("sha256")))
    else:
        sig = private_key.sign(message, padding.PKCS1v15(), _hash("sha256"))
    envelope = {"payloadType": PAYLOAD_TYPE,
                "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": key_id(private_key.public_key()),
                                "sig": base64.b64encode(sig).decode()}]}
    return json.dumps(envelope, separators=(",", ":")).encode()


def _verify_one(public_key, sig: bytes, message: bytes, hash_name: str) -> bool:
    exceptions, _, _, ec, ed25519, padding, rsa = _crypto()
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(sig, message)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, message, ec.ECDSA(_hash(hash_name)))
        else:
            public_key.verify(sig, message, padding.PKCS1v15(), _hash(hash_name))
    except (exceptions.InvalidSignature, ValueError):
        return False
    return True


def verify(data: bytes, public_keys: list, hash_name: str = "sha256") -> tuple[bytes, list]:
    """The payload of envelope `data` if one of its signatures is valid for one of
    `public_keys`; also the keys that verified. TrustError otherwise."""
    try:
        env = json.loads(data)
        if env.get("payloadType") != PAYLOAD_TYPE:
            raise TrustError(f"unexpected DSSE payload type {env.get('payloadType')!r}")
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TrustError(f"malformed DSSE envelope: {err}") from None
    if hash_name not in ("sha256", "sha384", "sha512"):
        raise TrustError(f"unsupported hash {hash_name} for a DSSE signature")
    message = pae(PAYLOAD_TYPE, payload)
    accepted = [k for k in public_keys if any(_verify_one(k, s, message, hash_name) for s in sigs)]
    if not accepted:
        raise TrustError("dsse: verify envelope failed: no signature valid for the given key")
    return payload, accepted
