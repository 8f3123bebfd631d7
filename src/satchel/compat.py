"""Names and versions satchel answers to when called as `apptainer` or `singularity`.

Clients decide which command lines to send from `<name> --version`, so the numbers below are
chosen from their parsing code (checked against the releases on PyPI: cwltool 3.3, cwl-utils,
Snakemake 9, spython 0.3):

- cwltool runs `singularity --version`, applies `(.+) version ([0-9\\.]+)` and keys on the
  first group (singularity, singularity-ce, apptainer). For "singularity" >= 3.10 it sends
  `run --no-eval`, >= 3.9 `--mount`, >= 3.4 overlapping binds, >= 3.1 `--home`; its image
  puller names cached images `.sif` only for >= 3 (cwl-utils). 3.11.5 takes every modern path.
- Snakemake prefers `apptainer` on PATH; it takes the last word of the output, strips a
  leading `v`, trims the tail until packaging accepts it, and wants >= 1.0.0.
- spython runs `singularity --version` and sends the legacy `instance.stop --all` unless the
  text contains "version 3"; "singularity version 3.11.5" makes it send `instance stop --all`.

The local suffix "+satchel.X" is PEP 440 (Snakemake parses it whole) and outside
`[0-9.]` (cwltool's regular expression stops before it), and tells a human which program
answered. The upstream release is the one whose command-line behaviour satchel implements.
"""

from __future__ import annotations

import os

from satchel.errors import SatchelError, UsageError

UPSTREAM = {
    "apptainer": "1.3.6",
    "singularity": "3.11.5",
}
# what `satchel dropin DIR` installs: the two command names, and the interpreter named by the
# first line of .simg and SIF files (`#!/usr/bin/env run-singularity`), so `./image.sif` runs
DROPIN_NAMES = ("apptainer", "singularity", "run-singularity")
# `satchel oci` under runc's role: `ctr run --runc-binary DIR/satchel-runc`, `podman --runtime`
OCI_DROPIN_NAMES = ("satchel-runc",)
_LAUNCHER_MARK = "from satchel.cli.main import main"


def upstream_version(prog: str, own: str) -> str:
    base = UPSTREAM.get(prog)
    if base is None:
        return own
    return f"{base}+satchel.{own}"


def version_line(prog: str, own: str) -> str:
    """What `<prog> --version` prints: `<prog> version X.Y.Z[+local]`."""
    return f"{prog} version {upstream_version(prog, own)}"


def is_satchel_launcher(path: str) -> bool:
    """True if `path` is an entry script written by satchel (safe to replace)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and _LAUNCHER_MARK.encode() in head


def install_dropins(directory: str, names=DROPIN_NAMES, force: bool = False,
                    python: str | None = None) -> list[str]:
    """Write lean entry scripts named `names` into `directory`; return their paths.

    Each is the same `#!<python> -IS` script as the installed `satchel` (satchel.launcher),
    so `singularity exec` costs what `satchel exec` costs; the CLI knows its name from
    argv[0]. An existing file that satchel did not write is kept unless `force`.
    """
    from satchel.launcher import write_launcher

    for name in names:
        if name not in DROPIN_NAMES + OCI_DROPIN_NAMES:
            raise UsageError(f"unknown drop-in name {name!r}: choose from "
                             f"{', '.join(DROPIN_NAMES + OCI_DROPIN_NAMES)}")
    if not os.path.isdir(directory):
        raise SatchelError(f"drop-in directory {directory} does not exist or is not a "
                           "directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SatchelError(f"drop-in directory {directory}: permission denied")
    targets = [os.path.join(directory, name) for name in names]
    for target in targets:
        if os.path.lexists(target) and not force and not is_satchel_launcher(target):
            raise SatchelError(f"{target} exists and was not written by satchel",
                               hint="use --force to replace it")
    for target in targets:
        if os.path.islink(target) or (os.path.lexists(target) and not os.path.isfile(target)):
            if os.path.isdir(target) and not os.path.islink(target):
                raise SatchelError(f"{target} is a directory")
            os.unlink(target)
        try:
            write_launcher(target, python)
        except OSError as err:
            raise SatchelError(f"writing {target}: {err.strerror}") from None
    return targets
