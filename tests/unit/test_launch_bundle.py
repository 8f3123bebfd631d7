"""The launch bundle (satchel/__init__.py, written by satchel/launcher.py): a copy of the
package gets its own bundle, and fresh interpreters import from it, or as usual when the bundle
or a module is not what was recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import satchel
from satchel import launcher

SRC = os.path.dirname(os.path.dirname(os.path.abspath(satchel.__file__)))
PROBE = """import sys
sys.path.insert(0, sys.argv[1])
import satchel.runtime.executor as executor, satchel.runtime.etcfiles as etcfiles
print(type(executor.__loader__).__name__, executor.__file__)
print(type(etcfiles.__loader__).__name__, getattr(etcfiles, "BUNDLE_PROBE", "-"))
print(executor.Executor.__module__, len(executor.Executor.__dict__) > 10)
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of src/ (no __pycache__) with its bundle written."""
    root = str(tmp_path_factory.mktemp("bundle-tree"))
    shutil.copytree(os.path.join(SRC, "satchel"), os.path.join(root, "satchel"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = launcher.write_bundle(root)
    assert path == os.path.join(root, "satchel", "__pycache__",
                                f"launch.{sys.implementation.cache_tag}.bundle")
    return root


def _probe(root: str, code: str = PROBE) -> list[str]:
    out = subprocess.run([sys.executable, "-IS", "-c", code, root], capture_output=True,
                         text=True, check=True)
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout.split("\n")


def _bundle(root: str) -> str:
    return os.path.join(root, "satchel", "__pycache__",
                        f"launch.{sys.implementation.cache_tag}.bundle")


def test_modules_of_a_launch_come_from_the_bundle(tree):
    lines = _probe(tree)
    assert lines[0] == f"_LaunchBundle {tree}/satchel/runtime/executor.py"
    assert lines[1] == "_LaunchBundle -"
    assert lines[2] == "satchel.runtime.executor True"


def test_a_module_edited_since_is_imported_from_its_source(tree, tmp_path):
    root = str(tmp_path / "edited")
    shutil.copytree(tree, root)  # the copy keeps the bundle, and (copy2) the times
    with open(os.path.join(root, "satchel", "runtime", "etcfiles.py"), "a") as fh:
        fh.write("\nBUNDLE_PROBE = 'from the source'\n")
    lines = _probe(root)
    assert lines[0].startswith("_LaunchBundle ")  # the others still come from the bundle
    assert lines[1] == "SourceFileLoader from the source"


@pytest.mark.parametrize("damage", ["truncated", "not a bundle", "empty"])
def test_a_damaged_bundle_means_the_usual_imports(tree, tmp_path, damage):
    root = str(tmp_path / "damaged")
    shutil.copytree(tree, root)
    path = _bundle(root)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if damage == "truncated":
            fh.truncate(size // 2)
        elif damage == "not a bundle":
            fh.write(b"\0" * 64)
        else:
            fh.truncate(0)
    lines = _probe(root)
    assert lines[0] == f"SourceFileLoader {root}/satchel/runtime/executor.py"
    assert lines[2] == "satchel.runtime.executor True"


def test_a_bundle_of_another_python_is_not_read(tree, tmp_path):
    root = str(tmp_path / "other")
    shutil.copytree(tree, root)
    os.rename(_bundle(root), _bundle(root).replace(sys.implementation.cache_tag, "cpython-399"))
    assert _probe(root)[0].startswith("SourceFileLoader ")


def test_a_closed_or_reused_descriptor_means_the_usual_imports(tree):
    """A forked helper that closes every descriptor it does not know (the FUSE server does),
    then opens a file that gets the bundle's number, imports from the sources."""
    code = """import os, sys
sys.path.insert(0, sys.argv[1])
import satchel
finder = sys.meta_path[0]
os.close(finder.fd)
decoy = os.open(os.path.join(sys.argv[1], "satchel", "log.py"), os.O_RDONLY)
assert decoy == finder.fd, (decoy, finder.fd)
import satchel.runtime.executor as executor
print(type(executor.__loader__).__name__, executor.Executor.__module__)
"""
    assert _probe(tree, code)[0] == "SourceFileLoader satchel.runtime.executor"


def test_the_bundle_is_rewritten_whole(tree):
    """Written to a temporary name and renamed: a reader never sees half a bundle."""
    before = os.stat(_bundle(tree)).st_ino
    launcher.write_bundle(tree)
    assert os.stat(_bundle(tree)).st_ino != before
    assert not [n for n in os.listdir(os.path.dirname(_bundle(tree))) if ".tmp" in n]
    assert _probe(tree)[0].startswith("_LaunchBundle ")
