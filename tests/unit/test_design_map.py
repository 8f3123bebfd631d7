"""docs/DESIGN.md's map of the code agrees with the tree: every module and folder it names
exists, and every module under src/satchel has its line (a package's __init__.py is its
folder's line).

The map is the first code block of "## Layers and where they live": an entry is a line
indented by an even number of spaces, at most 2 per level, whose first word is `name.py` or
`name/`; its level is its indent / 2 below src/satchel/. Description lines are indented
further (to the description column) and are not entries.
"""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DESIGN = os.path.join(ROOT, "docs", "DESIGN.md")
SOURCE = os.path.join(ROOT, "src", "satchel")
ENTRY = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*(?:\.py|/))(?:\s|$)")
MAX_LEVEL = 5  # deeper than any folder of src/satchel: description lines start further right


def map_block(text: str) -> list[str]:
    section = text.split("## Layers and where they live", 1)[1]
    block = section.split("```", 2)[1]
    lines = block.splitlines()[1:]  # past the fence's own line
    assert lines[0] == "src/satchel/", lines[0]
    return lines[1:]


def map_entries(lines: list[str]) -> tuple[set[str], set[str]]:
    """(module paths, folder paths) the map names, relative to src/satchel."""
    modules, folders = set(), set()
    stack: list[str] = []
    for number, line in enumerate(lines, 2):
        match = ENTRY.match(line)
        if not match or len(match.group(1)) % 2 or len(match.group(1)) > 2 * MAX_LEVEL:
            continue
        level = len(match.group(1)) // 2 - 1
        assert level <= len(stack), f"DESIGN.md map line {number}: deeper than its folder: {line}"
        del stack[level:]
        name = match.group(2)
        path = "/".join(stack + [name.rstrip("/")])
        if name.endswith("/"):
            folders.add(path)
            stack.append(name.rstrip("/"))
        else:
            modules.add(path)
    return modules, folders


def tree_modules() -> set[str]:
    found = set()
    for directory, dirnames, filenames in os.walk(SOURCE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(directory, name), SOURCE))
    return found


def test_the_map_names_only_what_exists_and_every_module():
    with open(DESIGN, encoding="utf-8") as fh:
        modules, folders = map_entries(map_block(fh.read()))
    missing_folders = sorted(f for f in folders if not os.path.isdir(os.path.join(SOURCE, f)))
    assert not missing_folders, f"DESIGN.md names folders that do not exist: {missing_folders}"
    missing = sorted(m for m in modules if not os.path.isfile(os.path.join(SOURCE, m)))
    assert not missing, f"DESIGN.md names modules that do not exist: {missing}"
    covered = modules | {f + "/__init__.py" for f in folders}
    unmapped = sorted(tree_modules() - covered - {"__init__.py"})
    assert not unmapped, ("modules without their line in DESIGN.md's map (one line each, "
                          f"under their folder): {unmapped}")


def test_the_parser_reads_levels_and_skips_descriptions():
    """The rules above on a small map: levels from indents, folders as prefixes, wrapped
    description lines (even one starting with a module-like word) not taken as entries."""
    lines = ["  errors.py       typed errors",
             "  runtime/        running containers",
             "    plan.py       build_plan(); named steps",
             "                  plan_build.py is named here, as prose",
             "    session/      a mount point",
             "  cli/",
             "    commands/",
             "      action.py   exec/run/shell/test"]
    assert map_entries(lines) == ({"errors.py", "runtime/plan.py", "cli/commands/action.py"},
                                  {"runtime", "runtime/session", "cli", "cli/commands"})
