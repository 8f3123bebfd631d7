"""Loads every shared fixture module in tests/support/fixtures_*.py."""

import glob
import os
import sys

import pytest

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

# fixture modules hold assertion helpers too: rewrite their asserts like the tests'
pytest.register_assert_rewrite("support")

pytest_plugins = sorted(
    "support." + os.path.splitext(os.path.basename(p))[0]
    for p in glob.glob(os.path.join(_here, "support", "fixtures_*.py"))
)
