"""A dependency-free progress bar: redrawn in place on a terminal, one line per task elsewhere."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """``with Progress("train", total) as bar: bar.update(1, loss=0.3)``; prints to stderr."""

    def __init__(self, label: str, total: int, stream: Optional[TextIO] = None, width: int = 24):
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.note, self.start = 0, "", time.perf_counter()

    def __enter__(self) -> "Progress":
        self._draw()
        return self

    def update(self, steps: int = 1, **values: float) -> None:
        """Advances by ``steps`` and shows ``values`` (e.g. the running loss) beside the bar."""
        self.done = min(self.done + steps, self.total)
        if values:
            self.note = " ".join(f"{k} {v:.3g}" for k, v in values.items())
        self._draw()

    def _line(self) -> str:
        filled = self.width * self.done // self.total
        elapsed = time.perf_counter() - self.start
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.1f}s {self.note}")

    def _draw(self) -> None:
        if self.live:
            self.stream.write("\r\033[K" + self._line())
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        self.stream.write(("\r\033[K" if self.live else "") + self._line() + "\n")
        self.stream.flush()
