"""Content digests ("sha256:<hex>"): strict parsing and hashing.

Digests name files in the cache, so a digest from a manifest is validated before any path is
built from it: "sha256:../../x" must never become a file name.
"""

from __future__ import annotations

import hashlib
import re

from satchel.errors import OCIError

# algorithm -> length of its hex encoding (the OCI image spec registers sha256 and sha512)
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+\Z")


class Digest:
    """A validated digest; `str()` gives the "algorithm:hex" form."""

    __slots__ = ("algorithm", "hex")

    def __init__(self, algorithm: str, hex_value: str):
        self.algorithm = algorithm
        self.hex = hex_value

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Digest) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def short(self) -> str:
        return self.hex[:12]

    def hasher(self):
        return hashlib.new(self.algorithm)


def parse(text: object, what: str = "digest") -> Digest:
    """Parse "sha256:<64 hex>" (or sha512); anything else is an OCIError naming `what`."""
    if not isinstance(text, str):
        raise OCIError(f"invalid {what}: {text!r}")
    algorithm, sep, hex_value = text.partition(":")
    want = _HEX_LENGTH.get(algorithm)
    if not sep or want is None:
        raise OCIError(f"invalid {what} {text!r}: unsupported algorithm (expected sha256 or sha512)")
    if len(hex_value) != want or not _HEX.match(hex_value):
        raise OCIError(f"invalid {what} {text!r}: expected {want} lowercase hex digits")
    return Digest(algorithm, hex_value)


def of_bytes(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(text: str) -> bool:
    try:
        parse(text)
    except OCIError:
        return False
    return True
