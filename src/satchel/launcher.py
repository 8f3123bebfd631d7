"""Write lean entry scripts: `#!<python> -IS` plus an explicit sys.path entry.

pip's console script imports `site` (~4 ms here) and an editable install needs a .pth hook that
`-S` skips. The exec path is measured in milliseconds, so the setup script replaces the console
script with this one. `-I` also keeps a user's PYTHONPATH/PYTHONHOME out of satchel itself.

It also writes the launch bundle (satchel/__init__.py says what that is and how it is used):
the compiled code of the modules that the roots in LAUNCH_ROOTS import, found by importing
them in a fresh interpreter, with each source's size and modification time. It is written
where the package is installed, so whoever installs satchel writes it; `--bundle` alone
writes it again (after editing a checkout: stale entries are only skipped, not wrong).

Usage: python -m satchel.launcher BIN_DIR [NAME ...]   (default NAME: satchel)
       python -m satchel.launcher --bundle
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


# What a launch imports: exec/run/shell/test, the FUSE server and its read-ahead, sharing,
# instances, the OCI runtime's commands (satchel-runc), with every module of the runtime
# packages (rarer options: overlays, --fakeroot, --nv, cgroups...); what they import comes
# along. Not build, pull, sign: their time is not in milliseconds.
LAUNCH_ROOTS = ("satchel.cli.main", "satchel.cli.commands.action",
                "satchel.cli.commands.instance", "satchel.cli.commands.oci",
                "satchel.image.formats", "satchel.image.sif", "satchel.image.overlay")
LAUNCH_PACKAGES = ("satchel.runtime", "satchel.ocirt", "satchel.instance")
_LIST_MODULES = """import os, sys
sys.path.insert(0, sys.argv[1])
roots = sys.argv[2:]
for package in %r:
    directory = os.path.join(sys.argv[1], *package.split("."))
    roots += [package + "." + name[:-3] for name in sorted(os.listdir(directory))
              if name.endswith(".py") and name != "__init__.py"]
for root in roots:
    try:
        __import__(root)
    except ImportError:  # an optional dependency missing: its modules are imported as usual
        pass
print("\\n".join(sorted(n for n, m in sys.modules.items()
                          if n.startswith("satchel.") and getattr(m, "__file__", None))))
""" % (LAUNCH_PACKAGES,)


def launch_modules(root: str) -> list[str]:
    """The satchel modules LAUNCH_ROOTS and LAUNCH_PACKAGES import, by importing them in a
    fresh interpreter."""
    import subprocess

    out = subprocess.run([sys.executable, "-IS", "-c", _LIST_MODULES, root, *LAUNCH_ROOTS],
                         check=True, capture_output=True, text=True).stdout
    return out.split()


def write_bundle(root: str | None = None) -> str:
    """Write <package>/__pycache__/launch.<cache tag>.bundle (atomically); return its path."""
    import marshal

    from satchel import BUNDLE_MAGIC

    root = root or package_root()
    here = os.path.join(root, "satchel")
    index, blobs, offset = {}, [], 0
    for name in launch_modules(root):
        relative = name.split(".", 1)[1].replace(".", "/")
        package = os.path.isfile(os.path.join(here, relative, "__init__.py"))
        relative += "/__init__.py" if package else ".py"
        source = os.path.join(here, relative)
        st = os.stat(source)
        with open(source, "rb") as fh:
            code = marshal.dumps(compile(fh.read(), source, "exec", dont_inherit=True))
        index[name] = (relative, st.st_mtime_ns, st.st_size, package, offset, len(code))
        blobs.append(code)
        offset += len(code)
    table = marshal.dumps(index)
    cache = os.path.join(here, "__pycache__")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"launch.{sys.implementation.cache_tag}.bundle")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(BUNDLE_MAGIC + len(table).to_bytes(8, "little") + table + b"".join(blobs))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    import subprocess

    if argv == ["--bundle"]:
        write_bundle()
        return 0
    bin_dir, names = argv[0], argv[1:] or ["satchel"]
    for name in names:
        write_launcher(os.path.join(bin_dir, name))
    try:
        write_bundle()
    except (OSError, SyntaxError, ValueError, subprocess.SubprocessError) as err:
        # the launch only goes slower without it
        print(f"WARNING: no launch bundle written: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
