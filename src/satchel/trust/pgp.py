"""OpenPGP for signatures and keyrings.

Sequoia's Python bindings (pysequoia) parse, split, armor, generate keys and clear-sign. They
also verify, but under Sequoia's policy a signature only counts if the key was valid *when it
signed*, judged by the self-signatures the certificate holds today; the reference SIF corpus was
signed in 2020 by a key whose only self-signature dates from 2022, which Sequoia therefore
rejects while the reference (go-crypto) and GnuPG accept it. Verification hence goes through
GnuPG's `gpgv` (a Debian `apt` dependency, present wherever apt is): stateless, given keyring
files, no agent, ~5 ms; its machine-readable status lines say which key made a good signature.
Both load only here, inside sign/verify/key and an activated ECL.
"""

from __future__ import annotations

import os

from satchel.errors import TrustError

# Hash: SHA256 is what the reference records in a PGP signature's descriptor
DESCRIPTOR_HASH = 1


def _sequoia():
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="pysequoia")
    warnings.filterwarnings("ignore", message=".*Tsk::.*")
    try:
        import pysequoia
    except ImportError as err:
        raise TrustError(f"OpenPGP support is not installed: {err}",
                         hint="install the 'pysequoia' package") from None
    return pysequoia


def _reason(err: Exception) -> str:
    """Sequoia's errors carry a Rust backtrace: keep the first line."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".").lower()


class Key:
    """One transferable key: `raw` is its binary form (with the secret parts, if any), `cert`
    the public certificate."""

    __slots__ = ("raw", "cert", "fingerprint", "user_ids", "secret")

    def __init__(self, raw: bytes, cert, secret: bool):
        self.raw = raw
        self.cert = cert
        self.fingerprint = cert.fingerprint.upper()
        self.user_ids = [str(getattr(u, "value", u)) for u in cert.user_ids]
        self.secret = secret

    @property
    def name(self) -> str:
        return self.user_ids[0] if self.user_ids else "unknown"

    def public_bytes(self) -> bytes:
        """Binary transferable public key (secret parts stripped)."""
        return bytes(self.cert)

    def binary(self) -> bytes:
        return self.raw

    def armored(self) -> str:
        ps = _sequoia()
        kind = ps.ArmorKind.SecretKey if self.secret else ps.ArmorKind.PublicKey
        text = ps.armor(self.raw, kind)
        return text if isinstance(text, str) else text.decode()

    def public(self) -> "Key":
        return Key(bytes(self.cert), self.cert, False)


def _key_from_packets(ps, packets) -> Key:
    if packets[0].tag == ps.packet.Tag.SecretKey:
        tsk = ps.Tsk.from_packets(packets)
        return Key(bytes(tsk), tsk.extract_certificate(), True)
    cert = ps.Cert.from_packets(packets)
    return Key(bytes(cert), cert, False)


def parse_keys(data: bytes, what: str) -> list[Key]:
    """Every key in `data` (armored or binary, one or many, public or secret)."""
    ps = _sequoia()
    if not data.strip():
        return []
    try:
        groups: list[list] = []
        for packet in ps.packet.PacketPile.from_bytes(data):
            if packet.tag in (ps.packet.Tag.SecretKey, ps.packet.Tag.PublicKey):
                groups.append([])
            elif not groups:
                raise TrustError(f"{what} is not an OpenPGP key: it starts with a "
                                 f"{packet.tag} packet")
            groups[-1].append(packet)
        keys = [_key_from_packets(ps, g) for g in groups]
    except TrustError:
        raise
    except Exception as err:  # pysequoia raises RuntimeError/ValueError with a Rust message
        raise TrustError(f"{what} is not an OpenPGP key: {_reason(err)}") from None
    if not keys:
        raise TrustError(f"{what} is not an OpenPGP key: no key found")
    return keys


def read_keys(path: str) -> list[Key]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise TrustError(f"reading {path}: {(err.strerror or str(err)).lower()}") from None
    return parse_keys(data, path)


def generate(user_id: str) -> Key:
    """A new key pair: an Ed25519 primary signing key with an X25519 encryption subkey."""
    ps = _sequoia()
    try:
        tsk = ps.Tsk.generate(user_id)
    except Exception as err:
        raise TrustError(f"generating a key pair: {_reason(err)}") from None
    return Key(bytes(tsk), tsk.extract_certificate(), True)


def generate_protected(user_id: str, passphrase: str) -> Key:
    """A new key pair whose secret parts are encrypted with `passphrase`. pysequoia cannot
    encrypt secret keys, so GnuPG makes this one, in a throwaway home whose agent is stopped."""
    import shutil
    import subprocess
    import tempfile

    gpg = shutil.which("gpg")
    if gpg is None:
        raise TrustError("cannot protect a new key with a passphrase: gpg not found",
                         hint="install GnuPG, or create the key without --password")
    home = tempfile.mkdtemp(prefix="satchel-gpg-")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "GNUPGHOME": home}
    base = [gpg, "--homedir", home, "--batch", "--pinentry-mode", "loopback",
            "--passphrase-fd", "0"]
    try:
        made = subprocess.run(base + ["--quick-gen-key", user_id, "ed25519", "sign,cert",
                                      "never"], input=passphrase.encode() + b"\n",
                              capture_output=True, env=env, timeout=120)
        if made.returncode != 0:
            last = made.stderr.decode("utf-8", "replace").strip().splitlines()
            raise TrustError(f"generating a key pair with gpg: {last[-1] if last else 'failed'}")
        out = subprocess.run(base + ["--export-secret-keys"], input=passphrase.encode() + b"\n",
                             capture_output=True, env=env, timeout=120)
        if out.returncode != 0 or not out.stdout:
            raise TrustError("exporting the new key pair from gpg failed")
    except subprocess.TimeoutExpired:
        raise TrustError("gpg did not answer within 120 s") from None
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run([gpgconf, "--homedir", home, "--kill", "gpg-agent"],
                           capture_output=True, env=env)
        shutil.rmtree(home, ignore_errors=True)
    return parse_keys(out.stdout, "the new key pair")[0]


def needs_passphrase(key: Key) -> bool:
    ps = _sequoia()
    try:
        ps.Tsk.from_bytes(key.raw).signer()
    except Exception:
        return True
    return False


def clearsign(key: Key, message: bytes, passphrase: str | None) -> bytes:
    """The clear-signed message (what the reference stores in a PGP signature object)."""
    ps = _sequoia()
    if not key.secret:
        raise TrustError(f"key {key.fingerprint} has no secret part to sign with")
    try:
        signer = ps.Tsk.from_bytes(key.raw).signer(passphrase or None)
    except Exception as err:
        reason = _reason(err)
        if passphrase:
            raise TrustError(f"failed to decrypt key {key.fingerprint}: wrong passphrase") \
                from None
        raise TrustError(f"key {key.fingerprint} cannot sign: {reason}") from None
    try:
        out = ps.sign(signer, message, mode=ps.SignatureMode.CLEAR)
    except Exception as err:
        raise TrustError(f"signing with key {key.fingerprint}: {_reason(err)}") from None
    return out if isinstance(out, bytes) else bytes(out)


def is_clearsigned(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")


def clearsigned_text(data: bytes) -> bytes:
    """The signed text of a clear-signed message, unverified (to tell legacy signatures, whose
    text starts with "SIFHASH:", from JSON ones before choosing how to verify)."""
    lines = data.split(b"\n")
    try:
        start = next(i for i, l in enumerate(lines)
                     if l.rstrip(b"\r") == b"-----BEGIN PGP SIGNED MESSAGE-----")
        body = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
        end = next(i for i in range(body, len(lines))
                   if lines[i].rstrip(b"\r") == b"-----BEGIN PGP SIGNATURE-----")
    except StopIteration:
        return b""
    text = [l[2:] if l.startswith(b"- ") else l for l in lines[body + 1:end]]
    return b"\n".join(l.rstrip(b"\r") for l in text)


class Verified:
    __slots__ = ("text", "fingerprint")

    def __init__(self, text: bytes, fingerprint: str):
        self.text = text
        self.fingerprint = fingerprint


def verify_clearsigned(data: bytes, keyrings: list[str], extra_keys: bytes = b"") -> Verified:
    """Check a clear-signed message against binary keyring files (and `extra_keys`, binary
    certificates) with gpgv; return the text it signed and the primary fingerprint of the key
    that signed it. TrustError says why not."""
    import shutil
    import subprocess
    import tempfile

    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise TrustError("cannot verify OpenPGP signatures: gpgv not found",
                         hint="install GnuPG's gpgv (Debian package gpgv)")
    home = tempfile.mkdtemp(prefix="satchel-gpgv-")
    try:
        msg = os.path.join(home, "signed.asc")
        with open(msg, "wb") as fh:
            fh.write(data)
        out = os.path.join(home, "text")
        argv = [gpgv, "--homedir", home, "--status-fd", "1", "--output", out]
        rings = list(keyrings)
        if extra_keys:
            rings.append(os.path.join(home, "given.gpg"))
            with open(rings[-1], "wb") as fh:
                fh.write(extra_keys)
        if not rings:
            raise TrustError("no public key to verify with: the keyring is empty",
                             hint="import the signer's key with 'satchel key import FILE'")
        for ring in rings:
            argv += ["--keyring", ring]
        argv.append(msg)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              timeout=60)
        status = proc.stdout.decode("utf-8", "replace").splitlines()
        fields = [line.split()[1:] for line in status if line.startswith("[GNUPG:] ")]
        valid = [f for f in fields if f and f[0] == "VALIDSIG"]
        if proc.returncode == 0 and len(valid) == 1:
            with open(out, "rb") as fh:
                text = fh.read()
            fpr = valid[0][-1] if len(valid[0]) >= 10 else valid[0][1]
            return Verified(text, fpr.upper())
        raise TrustError(_gpgv_failure(fields, proc.stderr))
    except subprocess.TimeoutExpired:
        raise TrustError("gpgv did not answer within 60 s") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _gpgv_failure(fields: list[list[str]], stderr: bytes) -> str:
    fields = [f for f in fields if f]
    for f in fields:
        if f[0] == "NO_PUBKEY":
            errsig = next((e for e in fields if e[0] == "ERRSIG"), None)
            # legacy signatures name no issuer fingerprint ("-"): the key ID then
            fpr = errsig[-1] if errsig and len(errsig) >= 7 and errsig[-1] != "-" else f[1]
            return f"signed by unknown key {fpr.upper()} (not in the keyring)"
    for f in fields:
        if f[0] == "BADSIG":
            return f"bad signature by key {f[1]}: the signed message was altered"
        if f[0] == "EXPKEYSIG":
            return f"signed by expired key {f[1]}"
        if f[0] == "REVKEYSIG":
            return f"signed by revoked key {f[1]}"
        if f[0] == "ERRSIG":
            return f"signature cannot be checked (key {f[1]}, algorithm {f[2]})"
        if f[0] == "NODATA":
            return "no OpenPGP signature found (garbled or truncated)"
    last = stderr.decode("utf-8", "replace").strip().splitlines()
    return "signature not valid" + (f": {last[-1].removeprefix('gpgv: ')}" if last else "")
