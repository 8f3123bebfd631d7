"""Assertions on a finished satchel run, shared by the integration tests."""

from __future__ import annotations


def fatal(result, *needles) -> str:
    """The run failed the way bad input must: status 255, exactly one `FATAL:` line holding
    every needle, no traceback, no "this is a bug" report. Returns that line."""
    assert result.returncode == 255, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("FATAL:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "bug in satchel" not in result.stderr, \
        result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
