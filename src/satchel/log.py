"""Apptainer-style messages on stderr, without the cost of `logging` on the exec path.

Levels: -s silent (errors only), -q quiet (warnings), default info, -v verbose, -d debug.
The level travels to re-executed children in SATCHEL_MESSAGELEVEL.
"""

from __future__ import annotations

import os
import sys

SILENT, QUIET, INFO, VERBOSE, DEBUG = -1, 0, 1, 2, 5
ENV_LEVEL = "SATCHEL_MESSAGELEVEL"


def _initial_level() -> int:
    try:
        return int(os.environ.get(ENV_LEVEL, INFO))
    except ValueError:
        return INFO


_level = _initial_level()


def set_level(level: int) -> None:
    global _level
    _level = level
    os.environ[ENV_LEVEL] = str(level)


def level() -> int:
    return _level


def _emit(prefix: str, message: str) -> None:
    try:
        sys.stderr.write(f"{prefix}{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def fatal_line(message: str) -> None:
    """The one FATAL line: newlines and other control characters that reached the message from
    user input (a path, an option value) are shown escaped, never as line breaks."""
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    _emit("FATAL:   ", message)


def error(message: str) -> None:
    _emit("ERROR:   ", message)


def warning(message: str) -> None:
    if _level >= QUIET:
        _emit("WARNING: ", message)


def info(message: str) -> None:
    if _level >= INFO:
        _emit("INFO:    ", message)


def verbose(message: str) -> None:
    if _level >= VERBOSE:
        _emit("VERBOSE: ", message)


def debug(message: str) -> None:
    if _level >= DEBUG:
        _emit("DEBUG:   ", message)


def debug_enabled() -> bool:
    return _level >= DEBUG


def verbose_enabled() -> bool:
    return _level >= VERBOSE


def flush_outputs() -> None:
    """Flush Python's stdout and stderr buffers (before a fork, so a child never repeats them)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing to repeat
            pass


def progress_wanted() -> bool:
    """Progress bars (downloads, mksquashfs) only on a terminal, and not under -q/-s."""
    if level() < INFO:
        return False
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
