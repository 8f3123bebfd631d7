"""Write lean entry scripts: `#!<python> -IS` plus an explicit sys.path entry.

pip's console script imports `site` (~4 ms here) and an editable install needs a .pth hook that
`-S` skips. The exec path is measured in milliseconds, so the setup script replaces the console
script with this one. `-I` also keeps a user's PYTHONPATH/PYTHONHOME out of satchel itself.

Usage: python -m satchel.launcher BIN_DIR [NAME ...]   (default NAME: satchel)
"""

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
import sys
sys.path.insert(0, {path!r})
sys.path.extend({site_dirs!r})
from satchel.cli.main import main
sys.exit(main())
"""


def package_root() -> str:
    import satchel
    return os.path.dirname(os.path.dirname(os.path.abspath(satchel.__file__)))


def site_dirs() -> list[str]:
    """The environment's site-packages, appended after the standard library so that lazily imported
    dependencies (zstandard, ...) resolve without the cost of `site` at start-up."""
    import sysconfig
    paths = sysconfig.get_paths()
    dirs = []
    for key in ("purelib", "platlib"):
        if paths[key] not in dirs and os.path.isdir(paths[key]):
            dirs.append(paths[key])
    return dirs


def write_launcher(dest: str, python: str | None = None) -> None:
    text = TEMPLATE.format(python=python or sys.executable, path=package_root(),
                           site_dirs=site_dirs())
    tmp = f"{dest}.tmp{os.getpid()}"
    with open(tmp, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    bin_dir, names = argv[0], argv[1:] or ["satchel"]
    for name in names:
        write_launcher(os.path.join(bin_dir, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
