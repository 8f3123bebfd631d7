"""Running host tools (mksquashfs, debootstrap, cp...) for the build: one helper for all.

Every command is logged at -v with its argv; a failure becomes a BuildError naming what was being
done and the tail of the tool's error output. Commands run in their own process group, so that an
interrupted build (SIGINT, SIGTERM) kills the tool *and* whatever it started (debootstrap runs
dpkg in a chroot) before the build removes its temporary files.
"""

from __future__ import annotations

import os
import signal
import subprocess

from satchel import log
from satchel.errors import BuildError

_TAIL = 2000


def run(argv: list[str], what: str, env: dict | None = None, cwd: str | None = None,
        capture: bool = False, quiet: bool = False, input: bytes | None = None) -> str:
    """Run argv; raise BuildError(`what`: ...) on failure. Returns stdout when `capture`.

    Without `capture`, the tool's output goes to our stderr (stdout is for data), unless `quiet`
    (then it is kept and shown only on failure).
    """
    log.verbose("running: " + " ".join(argv))
    keep = capture or quiet
    try:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, start_new_session=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else (subprocess.PIPE if quiet else 2),
            stderr=subprocess.PIPE if keep else None)
    except OSError as err:
        raise BuildError(f"{what}: cannot run {argv[0]}: {err.strerror}") from None
    try:
        out, err_out = proc.communicate(input)
    except BaseException:
        kill_group(proc)
        raise
    if proc.returncode != 0:
        detail = ""
        if keep:
            text = ((err_out or b"") + (b"" if capture else (out or b""))).decode(errors="replace")
            text = text.strip()
            if text:
                detail = ": " + text[-_TAIL:].replace("\n", " | ")
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit status {proc.returncode}")
        raise BuildError(f"{what}: {os.path.basename(argv[0])} failed ({status}){detail}")
    return (out or b"").decode(errors="replace") if capture else ""


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait()
    except BaseException:
        pass
