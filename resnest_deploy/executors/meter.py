"""Progress of a job wherever it runs: items done and items/s, at most every two seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


class Meter:
    """Counts what finished and hands ``report`` a line (``12/899 images, 40.1 images/s``) at most
    every two seconds, and once more at the end: a long cluster job shows it is moving."""

    def __init__(self, total: int, report: Callable[[str], None] | None, what: str = "images") -> None:
        self.total, self.report, self.what = total, report, what
        self.done_count, self.start, self.last = 0, time.monotonic(), 0.0

    def add(self, n: int) -> None:
        self.done_count += n
        now = time.monotonic()
        if self.report and now - self.last >= 2.0:
            self.last = now
            self.report(self._line(now))

    def _line(self, now: float) -> str:
        rate = self.done_count / max(now - self.start, 1e-9)
        return f"{self.done_count}/{self.total} {self.what}, {rate:.1f} {self.what}/s"

    def done(self) -> None:
        if self.report:
            self.report(self._line(time.monotonic()))
