"""The execution control list: ecl.toml, in Apptainer's format, beside satchel.conf.

    activated = true
    legacyinsecure = false
    [[execgroup]]
      tagname = "group1"
      mode = "whitestrict"          # whitelist | whitestrict | blacklist
      dirpath = "/var/cache/containers"
      keyfp = ["5994BE54C31CF1B5E1994F987C52CF6D055F072B"]

When activated, a SIF image may only be launched (exec, run, shell, test, instance start) if
its signatures satisfy the execution group of the directory it lies in (or the group with an
empty dirpath): whitelist = signed by at least one listed key, whitestrict = by all of them,
blacklist = by none of them. Signatures are checked against the global keyring
(global-pgp-public, beside ecl.toml); a signature that does not verify counts for nothing, an
unsigned or altered image is refused. As in Apptainer, the ECL is a policy for SIF images only.

Every launch checks for the file (runtime/launch.py: check_ecl, one failed stat without it)
and imports this module and calls enforce() only when it exists; with a list that is not
activated, that costs a read and a scan of a small file. Only an activated list loads tomllib
and the crypto.
"""

from __future__ import annotations

import os

FILE = "ecl.toml"  # runtime/launch.py (ECL_FILE) looks for it before importing this
MODES = ("whitelist", "whitestrict", "blacklist")


def ecl_path(config_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), FILE)


def _activated(text: str) -> bool:
    """Does the top-level table say `activated = true`? (Scanned without a TOML parser: the
    exec path must not import one for a list that is off.)"""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            return False  # keys after a table header belong to that table
        key, sep, value = line.partition("=")
        if sep and key.strip() == "activated":
            return value.strip() == "true"
    return False


def enforce(image, config_path: str) -> None:
    """Raise TrustError when an activated ECL refuses `image` (an ImageRef); else return."""
    path = ecl_path(config_path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(1 << 20)
    except FileNotFoundError:
        return
    except OSError as err:
        from satchel.errors import TrustError
        raise TrustError(f"reading ECL {path}: {(err.strerror or str(err)).lower()}") from None
    text = raw.decode("utf-8", "replace")
    if not _activated(text) or image is None or image.kind != "sif":
        return
    _check(load(path, text), image.path, os.path.dirname(os.path.abspath(config_path)))


class ExecGroup:
    __slots__ = ("tagname", "mode", "dirpath", "keyfps")

    def __init__(self, tagname: str, mode: str, dirpath: str, keyfps: list[str]):
        self.tagname = tagname
        self.mode = mode
        self.dirpath = dirpath
        self.keyfps = keyfps


class ECL:
    __slots__ = ("path", "activated", "legacy", "groups")

    def __init__(self, path, activated, legacy, groups):
        self.path = path
        self.activated = activated
        self.legacy = legacy
        self.groups = groups


def load(path: str, text: str) -> ECL:
    """Parse and validate (Apptainer's ValidateConfig rules)."""
    import tomllib

    from satchel.errors import ConfigError

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"while validating ECL configuration {path}: {err}") from None

    def bad(why: str):
        return ConfigError(f"while validating ECL configuration {path}: {why}")

    groups, seen = [], set()
    for entry in doc.get("execgroup", []):
        if not isinstance(entry, dict):
            raise bad("execgroup entries must be tables")
        group = ExecGroup(str(entry.get("tagname", "")), entry.get("mode", ""),
                          entry.get("dirpath", ""), entry.get("keyfp", []))
        if group.dirpath in seen:
            raise bad(f"a specific dirpath can only appear in one execgroup: {group.dirpath}")
        seen.add(group.dirpath)
        if group.dirpath and os.path.realpath(group.dirpath) != group.dirpath:
            raise bad(f"execgroup {group.tagname!r}: dirpath {group.dirpath} should be fully "
                      f"cleaned with symlinks resolved")
        if group.mode not in MODES:
            raise bad(f"execgroup {group.tagname!r}: the mode field can only be either: "
                      f"whitelist, whitestrict, blacklist")
        if not isinstance(group.keyfps, list):
            raise bad(f"execgroup {group.tagname!r}: keyfp must be a list")
        for fp in group.keyfps:
            if not isinstance(fp, str) or len(fp) != 40 or \
                    any(c not in "0123456789abcdefABCDEF" for c in fp):
                raise bad(f"execgroup {group.tagname!r}: expecting a 40 chars hex fingerprint "
                          f"string, got {fp!r}")
        group.keyfps = [fp.upper() for fp in group.keyfps]
        groups.append(group)
    return ECL(path, doc.get("activated") is True, doc.get("legacyinsecure") is True, groups)


def _group_for(ecl: ECL, image_path: str) -> ExecGroup | None:
    directory = os.path.dirname(os.path.abspath(image_path))
    for group in ecl.groups:
        if group.dirpath and group.dirpath == directory:
            return group
    for group in ecl.groups:
        if not group.dirpath:
            return group
    return None


def _check(ecl: ECL, image_path: str, confdir: str) -> None:
    from satchel.errors import TrustError
    from satchel.trust import keyring, verify

    group = _group_for(ecl, image_path)
    if group is None:
        raise TrustError(f"image {image_path} prohibited by ECL {ecl.path}: its directory is not "
                         f"part of any execgroup")
    rule = f"execgroup {group.tagname!r} ({group.mode})"

    def refuse(why: str):
        return TrustError(f"image {image_path} prohibited by ECL {ecl.path}, {rule}: {why}")

    ring = os.path.join(confdir, keyring.GLOBAL_FILE)
    keys = verify.KeyMaterial([ring] if os.path.isfile(ring) else [])
    try:
        report = verify.verify_image(image_path, keys, legacy=ecl.legacy)
    except TrustError as err:
        raise refuse(err.message) from None
    if report.errors:
        raise refuse(report.errors[0])
    integrity = [r for r in report.results if r.error and r.failed_object is not None
                 or (r.error or "").startswith("header integrity")]
    if integrity:
        raise refuse(f"image signature not valid: {integrity[0].error}")
    # who validly signed every verified target, and who claims to have signed anything
    per_target: dict = {}
    claimed = set()
    for r in report.results:
        per_target.setdefault(r.target, set())
        if r.error is None and r.signer:
            per_target[r.target].add(r.signer.upper())
        if r.entity:
            claimed.add(r.entity)
    all_signed = set.intersection(*per_target.values()) if per_target else set()
    any_signed = claimed | set().union(*per_target.values())
    if group.mode == "whitelist":
        if not any(fp in all_signed for fp in group.keyfps):
            raise refuse("image not signed by required entities (none of "
                         f"{', '.join(group.keyfps) or 'no key'} signed it, verified with "
                         f"the global keyring)")
    elif group.mode == "whitestrict":
        missing = [fp for fp in group.keyfps if fp not in all_signed]
        if missing or not group.keyfps:
            raise refuse(f"image not signed by required entities (missing {', '.join(missing)})")
    else:
        banned = [fp for fp in group.keyfps if fp in any_signed]
        if banned:
            raise refuse(f"image signed by a forbidden entity ({banned[0]})")
