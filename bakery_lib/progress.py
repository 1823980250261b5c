"""The progress line of a many-role ``bakery bake``: ``N of M done, K failed, ETA ...``.

Written when a role finishes, but at most once every ``every`` seconds (the last role always), so
that 200 roles finishing within a minute give a handful of lines, not 200. The clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PROGRESS_EVERY = 5.0


def eta_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, total: int, log: Callable[[str], None], *, every: float = PROGRESS_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.log = log
        self.every = every
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.failed = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def finished(self, failed: bool) -> None:
        """One role is done: count it, and say so if the last line is old enough (or it is the last role)."""
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            now = self.clock()
            if self.done < self.total and self._last is not None and now - self._last < self.every:
                return
            self._last = now
            line = self.line(now)
        self.log(line)

    def line(self, now: float) -> str:
        left = self.total - self.done
        if left == 0:
            eta = f"all done in {eta_text(now - self.started)}"
        else:
            eta = f"ETA {eta_text((now - self.started) / self.done * left)}" if self.done else "ETA unknown"
        return f"progress: {self.done} of {self.total} done, {self.failed} failed, {eta}"
