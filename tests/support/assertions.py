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


def one_fatal(result, *needles) -> None:
    """Stricter, for bad input: the FATAL line is all that is printed (a `hint:` line may
    follow it), nothing on stdout, status 255, no traceback or bug report."""
    lines = result.stderr.splitlines()
    assert result.returncode == 255, (result.returncode, result.stdout, result.stderr)
    assert lines and lines[0].startswith("FATAL:   "), result.stderr
    assert [line for line in lines if not line.startswith("         hint: ")] == lines[:1], \
        result.stderr
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr, \
        result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
