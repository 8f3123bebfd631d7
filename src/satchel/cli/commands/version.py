"""satchel version: print the version number."""

from __future__ import annotations

from satchel.cli import options as o

SPECS = {
    "version": o.Spec("version", "version", "Show the version for satchel", max_args=0),
}


def run(name: str, parsed) -> int:
    from satchel import __version__
    from satchel.compat import upstream_version
    print(upstream_version(getattr(parsed, "prog", "satchel"), __version__))
    return 0
