"""Apptainer's keyring layout, so keys are shared with apptainer/singularity.

- local keys: $APPTAINER_KEYSDIR (or $SINGULARITY_SYPGPDIR), else $APPTAINER_CONFIGDIR/keys,
  else ~/.apptainer/keys; in it `pgp-public` and `pgp-secret`, binary OpenPGP keyrings
  (concatenated transferable keys), mode 0600 in a 0700 directory;
- the global keyring: `global-pgp-public` in the admin configuration directory (beside
  satchel.conf), the keys an ECL trusts and every verification also accepts.

Writes replace a keyring file atomically (temporary file + rename).
"""

from __future__ import annotations

import os

from satchel import fsutil
from satchel.errors import TrustError
from satchel.trust import pgp

PUBLIC_FILE = "pgp-public"
SECRET_FILE = "pgp-secret"
GLOBAL_FILE = "global-pgp-public"


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def keys_dir() -> str:
    chosen = _env("APPTAINER_KEYSDIR", "SINGULARITY_KEYSDIR", "SINGULARITY_SYPGPDIR")
    if chosen:
        return chosen
    config = _env("APPTAINER_CONFIGDIR", "SINGULARITY_CONFIGDIR")
    if not config:
        home = os.environ.get("HOME") or os.path.expanduser("~")
        config = os.path.join(home, ".apptainer")
    return os.path.join(config, "keys")


def public_path() -> str:
    return os.path.join(keys_dir(), PUBLIC_FILE)


def secret_path() -> str:
    return os.path.join(keys_dir(), SECRET_FILE)


def global_path() -> str:
    from satchel.runtime.config import config_path
    return os.path.join(os.path.dirname(os.path.abspath(config_path())), GLOBAL_FILE)


def load(path: str) -> list[pgp.Key]:
    """The keys in a keyring file; [] when it does not exist."""
    if not os.path.exists(path):
        return []
    return pgp.read_keys(path)


def save(path: str, keys: list[pgp.Key]) -> None:
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fsutil.atomic_write(path, b"".join(key.binary() for key in keys), 0o600)
    except OSError as err:
        raise TrustError(f"writing keyring {path}: {(err.strerror or str(err)).lower()}") from None


def verification_keyrings(extra: list[str] = ()) -> list[str]:
    """Existing keyring files to check PGP signatures against: the global, then the local one."""
    return [p for p in (global_path(), public_path(), *extra) if os.path.isfile(p)]


def find(keys: list[pgp.Key], fingerprint: str) -> pgp.Key | None:
    fingerprint = fingerprint.upper()
    for key in keys:
        if key.fingerprint == fingerprint:
            return key
    return None


def merge_into(path: str, new: list[pgp.Key]) -> list[pgp.Key]:
    """Add keys to the keyring at path (a key already there is replaced by the merged one);
    return those that were added or updated."""
    keys = load(path)
    changed = []
    for key in new:
        old = find(keys, key.fingerprint)
        if old is None:
            keys.append(key)
        elif not key.secret and not old.secret:
            try:
                merged = old.cert.merge(key.cert)
            except Exception as err:
                raise TrustError(f"merging key {key.fingerprint}: {pgp._reason(err)}") from None
            keys[keys.index(old)] = pgp.Key(bytes(merged), merged, False)
        else:
            keys[keys.index(old)] = key
        changed.append(key)
    save(path, keys)
    return changed


def remove(path: str, fingerprint: str) -> bool:
    keys = load(path)
    kept = [k for k in keys if k.fingerprint != fingerprint.upper()]
    if len(kept) == len(keys):
        return False
    save(path, kept)
    return True
