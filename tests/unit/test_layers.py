"""Layers stay layers: nothing below cli/ imports cli/ (the CLI calls down, is never called back)."""

import ast
import os

import satchel

SRC = os.path.dirname(satchel.__file__)
# the entry points, which start the CLI, and compat (it writes entry scripts naming it)
ABOVE_CLI = {"launcher.py", "__main__.py", "compat.py"}


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_layer_below_the_cli_imports_it():
    offenders = []
    for folder, _, files in os.walk(SRC):
        rel = os.path.relpath(folder, SRC)
        if rel == "cli" or rel.startswith("cli" + os.sep):
            continue
        for name in files:
            if not name.endswith(".py") or (rel == "." and name in ABOVE_CLI):
                continue
            path = os.path.join(folder, name)
            if any(m == "satchel.cli" or m.startswith("satchel.cli.") for m in _imports(path)):
                offenders.append(os.path.relpath(path, SRC))
    assert offenders == []
    assert os.path.isfile(os.path.join(SRC, "instance", "lifecycle.py"))  # walked, not empty
