"""nova_core.polling.Backoff: the sleeps of a poll."""

from __future__ import annotations

import time

from nova_core.polling import Backoff


def test_backoff_doubles_to_its_ceiling_and_starts_over_on_reset() -> None:
    backoff = Backoff(first=0.001, ceiling=0.004)
    seen = []
    started = time.monotonic()
    for _ in range(4):
        seen.append(backoff.delay)
        backoff.wait()
    assert seen == [0.001, 0.002, 0.004, 0.004]
    assert time.monotonic() - started >= sum(seen)  # it really slept each one
    backoff.reset()
    assert backoff.delay == 0.001
    assert Backoff().delay == 0.005 and Backoff().ceiling == 0.1
