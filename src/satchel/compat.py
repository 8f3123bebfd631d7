"""Names and versions satchel answers to when called as `apptainer` or `singularity`.

Clients parse `<name> version X.Y.Z`: cwltool applies `(.+) version ([0-9\\.]+)` and takes its
modern paths for apptainer >= 1.1 and singularity >= 3.10; Snakemake wants apptainer >= 1.0;
spython takes its modern path only when the text contains "version 3". satchel implements the
behaviour of these upstream releases, and says so with a local version suffix.
"""

from __future__ import annotations

UPSTREAM = {
    "apptainer": "1.3.6",
    "singularity": "3.11.5",
}


def upstream_version(prog: str, own: str) -> str:
    base = UPSTREAM.get(prog)
    if base is None:
        return own
    return f"{base}+satchel.{own}"
