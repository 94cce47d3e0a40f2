"""Polling for something that usually happens soon: short sleeps first, then longer."""

from __future__ import annotations

import time


class Backoff:
    """Sleeps of ``first`` seconds, doubling up to ``ceiling`` (5 ms, 10, 20 ... 100 ms by
    default): a log line or an exit is seen within milliseconds when it comes at once, and
    a long wait costs at most ten checks a second. :meth:`reset` after progress."""

    def __init__(self, first: float = 0.005, ceiling: float = 0.1) -> None:
        self.first = first
        self.ceiling = ceiling
        self.delay = first

    def wait(self) -> None:
        """Sleep the current delay, then double it (up to the ceiling)."""
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.ceiling)

    def reset(self) -> None:
        """Start again from the shortest sleep."""
        self.delay = self.first
