"""No dead code in src/satchel: vulture finds no unused function, class, method, import,
variable or attribute (at 60% confidence, the level that reports unused functions).

What vulture cannot see used (names looked up by string, protocols the standard library calls,
the tests' own helper library) is listed with its reason in tests/dead_code_whitelist.py; the
executors' op_* methods, dispatched as getattr(self, "op_" + op.kind), are allowed by pattern.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
SOURCE = os.path.join(ROOT, "src", "satchel")
WHITELIST = os.path.join(TESTS, "dead_code_whitelist.py")
CONFIDENCE = "60"
IGNORE_NAMES = "op_*"


def vulture(*paths: str) -> list[str]:
    """vulture's findings over `paths` (run as the suite's Python: it is in the test extra)."""
    try:
        import vulture as _  # noqa: F401
    except ImportError:
        pytest.fail("vulture is missing: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "vulture", "--min-confidence", CONFIDENCE,
         "--ignore-names", IGNORE_NAMES, *paths],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    # 0: nothing found, 3: dead code found; anything else is vulture failing
    assert proc.returncode in (0, 3), proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_no_dead_code_in_src():
    found = vulture(SOURCE, WHITELIST)
    assert not found, ("dead code (delete it, or list it with its reason in "
                       "tests/dead_code_whitelist.py):\n" + "\n".join(found))


def test_the_check_sees_an_unused_function(tmp_path):
    """The settings above catch what they are for: a module beside the real tree with an
    unused function, import and variable is reported, and nothing else is."""
    extra = tmp_path / "added.py"
    extra.write_text("import colorsys\n\n\ndef never_called():\n    dead_probe = 1\n    return 2\n")
    found = vulture(SOURCE, WHITELIST, str(extra))
    assert [line.split(": ", 1)[1].split(" (")[0] for line in found] == [
        "unused import 'colorsys'", "unused function 'never_called'",
        "unused variable 'dead_probe'"]
