"""A plain progress bar for long management commands (no extra dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stdout
        self.width = width
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self._last_print = 0.0
        self._last_pct = -1

    def update(self, done: int) -> None:
        done = min(max(done, 0), self.total)
        pct = int(100 * done / self.total)
        now = time.monotonic()
        # On a terminal redraw in place; in a log file print every 10%.
        if self.tty:
            if now - self._last_print < 0.1 and done < self.total:
                return
            filled = int(self.width * done / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {pct:3d}% {done}/{self.total}")
            self.stream.flush()
        elif pct // 10 != self._last_pct // 10 or done == self.total:
            if pct != self._last_pct:
                self.stream.write(f"{self.label}: {pct}% ({done}/{self.total})\n")
                self.stream.flush()
        self._last_pct = pct
        self._last_print = now

    def finish(self) -> float:
        self.update(self.total)
        if self.tty:
            self.stream.write("\n")
        return time.monotonic() - self.started
