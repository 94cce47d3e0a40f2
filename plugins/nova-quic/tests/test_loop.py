"""The endpoint's event loop (nova_quic.loop) on real descriptors, timers and signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import pytest
from nova_quic.loop import KeepWarm, Loop


@pytest.fixture
def loop():  # noqa: ANN201
    made = Loop()
    previous = signal.getsignal(signal.SIGUSR1)
    yield made
    made.close()
    signal.signal(signal.SIGUSR1, previous)


def test_readers_and_timers_run_in_order_and_cancelled_timers_do_not(loop: Loop) -> None:
    left, right = socket.socketpair()
    seen: list[object] = []

    loop.add_reader(right.fileno(), lambda: seen.append(right.recv(100)))
    loop.call_later(0.03, seen.append, "late")
    dropped = loop.call_later(0.01, seen.append, "cancelled")
    loop.call_later(0.01, seen.append, "early")
    loop.call_later(0.02, left.send, b"data")
    dropped.cancel()
    loop.call_later(0.04, loop.stop)
    started = time.monotonic()
    loop.run()
    assert seen == ["early", b"data", "late"]
    assert time.monotonic() - started >= 0.04
    loop.remove_reader(right.fileno())
    left.close()
    right.close()


def test_run_for_a_duration_returns_and_keeps_timers_for_later(loop: Loop) -> None:
    seen: list[str] = []
    loop.call_later(0.5, seen.append, "later")
    started = time.monotonic()
    loop.run(duration=0.05)
    assert 0.05 <= time.monotonic() - started < 0.4
    assert seen == []
    loop.call_later(0.0, loop.stop)
    loop.call_at(0.0, seen.append, "past")  # a deadline already passed runs at once
    loop.run()
    assert seen == ["past"]


def test_a_signal_wakes_the_loop_at_once(loop: Loop) -> None:
    """The handler runs from the loop within milliseconds, not at the next timer."""
    loop.add_signal_handler(signal.SIGUSR1, loop.stop)
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(10.0, pytest.fail, "the signal did not stop the loop")
    started = time.monotonic()
    loop.run()
    assert time.monotonic() - started < 2.0


def test_a_failing_callback_is_logged_and_the_loop_goes_on(loop: Loop, caplog) -> None:  # noqa: ANN001
    def broken() -> None:
        raise ValueError("boom")

    loop.call_later(0.0, broken)
    loop.call_later(0.01, loop.stop)
    with caplog.at_level(logging.ERROR, logger="nova_quic.loop"):
        loop.run()
    assert "boom" in caplog.text and "broken" in caplog.text


def test_many_re_armed_timers_do_not_pile_up(loop: Loop) -> None:
    """Links re-arm their timer on every flush: cancelled entries leave the heap."""
    timer = None
    for index in range(5000):
        if timer is not None:
            timer.cancel()
        timer = loop.call_later(60 + index, lambda: None)
    loop.run(duration=0.0)
    assert len(loop._timers) < 600


def test_keep_warm_ticks_after_a_packet_and_stops_when_traffic_does(loop: Loop) -> None:
    calls: list[float] = []
    warm = KeepWarm(loop, lambda: calls.append(time.monotonic()), every=0.005, window=0.05)
    warm.packet(time.monotonic())
    loop.run(duration=0.15)
    assert 3 <= len(calls) <= 10  # about window / every, timers permitting
    assert calls[-1] - calls[0] < 0.06  # ...all within the window after the packet
    assert not warm.running
    done = len(calls)
    loop.run(duration=0.05)
    assert len(calls) == done  # idle: no tick, no timer left
    assert all(entry[2].cancelled for entry in loop._timers)


def test_keep_warm_does_not_exercise_while_packets_keep_coming(loop: Loop) -> None:
    calls: list[float] = []
    warm = KeepWarm(loop, lambda: calls.append(time.monotonic()), every=0.05, window=1.0)

    def traffic() -> None:  # a packet every 2 ms: the path is warm already
        warm.packet(time.monotonic())
        loop.call_later(0.002, traffic)

    traffic()
    loop.run(duration=0.3)
    assert calls == []
    assert warm.running


def test_keep_warm_goes_on_after_an_exercise_that_raises(loop: Loop, caplog) -> None:  # noqa: ANN001
    calls: list[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("exercise failed")

    warm = KeepWarm(loop, broken, every=0.005, window=0.05)
    with caplog.at_level(logging.ERROR, logger="nova_quic.loop"):
        warm.packet(time.monotonic())
        loop.run(duration=0.15)
    assert len(calls) >= 3 and "exercise failed" in caplog.text
    assert not warm.running  # it ended with the window, not with the first error
