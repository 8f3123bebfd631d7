"""Progress bars on stderr, only when stderr is a terminal and messages are at INFO or above
(so `-q`, `-s`, pipes, files and CI logs see none). Thread-safe: download threads update one bar.
"""

from __future__ import annotations

import sys
import threading
import time

from satchel import log

REDRAW_S = 0.1
WIDTH = 30


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Bar:
    """`label [=====>    ] 12.0 MiB / 40.0 MiB  35.2 MiB/s`, redrawn at most every 0.1 s."""

    def __init__(self, label: str, total: int, show: bool | None = None):
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.show = log.progress_wanted() if show is None else show
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if not self.show:
                return
            now = time.monotonic()
            if now - self._last >= REDRAW_S:
                self._last = now
                self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        total = self.total or 1
        fraction = min(max(self.done / total, 0.0), 1.0)
        filled = int(fraction * WIDTH)
        bar = "=" * filled + (">" if filled < WIDTH else "") + " " * (WIDTH - filled - 1)
        rate = self.done / max(now - self.start, 1e-6)
        text = (f"\r{self.label} [{bar[:WIDTH]}] {human(self.done)} / {human(self.total)}"
                f"  {human(rate)}/s ")
        try:
            sys.stderr.write(text + ("\n" if final else ""))
            sys.stderr.flush()
        except (OSError, ValueError):
            self.show = False

    def close(self) -> None:
        with self._lock:
            if self.show:
                self._draw(time.monotonic(), final=True)
                self.show = False


class Null:
    """A bar that draws nothing (for code paths that always take a bar)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
