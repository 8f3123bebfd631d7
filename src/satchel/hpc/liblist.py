"""The admin-editable lists of GPU driver files (nvliblist.conf, rocmliblist.conf).

Format (the one Apptainer admins already know): one name per line, `#` starts a comment.
A name containing ".so" is a library, looked up by soname prefix in the linker cache
(`libcuda.so` matches libcuda.so and libcuda.so.1); any other name is a driver binary, looked
up on the GPU binary search path. Names are base names: a slash is a configuration error,
because it would let a list entry point outside the search.
"""

from __future__ import annotations

import os

from satchel.errors import ConfigError

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def default_path(kind: str) -> str:
    return os.path.join(DATA_DIR, "nvliblist.conf" if kind == "nv" else "rocmliblist.conf")


class LibList:
    """What one list file asks for: library name prefixes and binary names, in file order."""

    __slots__ = ("path", "libraries", "binaries")

    def __init__(self, path: str, libraries: list[str], binaries: list[str]):
        self.path = path
        self.libraries = libraries
        self.binaries = binaries


def parse(text: str, path: str = "liblist") -> LibList:
    libraries: list[str] = []
    binaries: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        if "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
            raise ConfigError(f"{path}:{number}: {name!r} is not a plain file name",
                              hint="list base names only; satchel searches the linker cache "
                                   "and the GPU binary path for them")
        target = libraries if ".so" in name else binaries
        if name not in target:
            target.append(name)
    return LibList(path, libraries, binaries)


def read(path: str) -> LibList:
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"reading GPU library list {path}: {reason}") from None
    return parse(text, path)
