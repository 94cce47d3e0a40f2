"""The endpoint's event loop: epoll, readers, timers and signals, nothing else.

The overlay endpoint is woken for every packet that crosses it, four times per round
trip of a ping. This loop calls the reader straight from ``epoll.poll``, without
asyncio's selector wrapper, handles, ready queue and contexts: in a ping-pong over a
socket pair from idle, asyncio added about 60 µs per wake-up on these machines. In
the overlay's own ping the gain is smaller (0.85 against 0.88 ms at the median of
four alternating rounds): the wake-up and the packet's cold Python work dominate
(docs/networks.md). The endpoint uses aioquic sans-IO, so it needs no more of asyncio
than what is here.

Like asyncio, a callback that raises is logged and the loop goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("nova_quic.loop")


class Timer:
    """A callback due at ``when`` (monotonic seconds); :meth:`cancel` drops it."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not call it (it leaves the loop's heap lazily)."""
        self.cancelled = True


class Loop:
    """Readers by file descriptor, timers on :func:`time.monotonic`, signal handlers.

    Signals reach it through :func:`signal.set_wakeup_fd`, so a signal wakes ``poll``
    at once. Use it from the main thread only.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], Any]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # equal deadlines run in the order they were set
        self._stopped = False
        self._signalled: list[Callable[[], Any]] = []  # run by the wake-up reader
        self._wake_read, self._wake_write = socket.socketpair()
        for end in (self._wake_read, self._wake_write):
            end.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_write.fileno(),
                                                warn_on_full_buffer=False)
        self.add_reader(self._wake_read.fileno(), self._drain_wakeups)

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (level-triggered)."""
        self._readers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(*args)`` at monotonic time ``when`` (at once if it has passed)."""
        timer = Timer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(*args)`` in ``delay`` seconds."""
        return self.call_at(time.monotonic() + delay, callback, *args)

    def add_signal_handler(self, signum: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` from the loop when ``signum`` arrives."""
        signal.signal(signum, lambda _signum, _frame: self._signalled.append(callback))

    def stop(self) -> None:
        """Make :meth:`run` return after the current round."""
        self._stopped = True

    def run(self, duration: float | None = None) -> None:
        """Serve readers and timers until :meth:`stop`, or for ``duration`` seconds."""
        self._stopped = False
        end = None if duration is None else time.monotonic() + duration
        poll, readers, timers = self._epoll.poll, self._readers, self._timers
        while not self._stopped:
            while timers and timers[0][2].cancelled:
                heapq.heappop(timers)
            deadline = timers[0][0] if timers else None
            if end is not None:
                deadline = end if deadline is None else min(deadline, end)
            timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            for fd, _mask in poll(timeout):
                callback = readers.get(fd)
                if callback is not None:
                    self._call(callback, ())
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                timer = heapq.heappop(timers)[2]
                if not timer.cancelled:
                    self._call(timer.callback, timer.args)
            if len(timers) > 256:
                self._compact()
            if end is not None and now >= end:
                break

    def close(self) -> None:
        """Give the signal wake-up back and close the loop's descriptors."""
        signal.set_wakeup_fd(self._old_wakeup)
        self._epoll.close()
        self._wake_read.close()
        self._wake_write.close()

    def _call(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - as asyncio: log it, keep serving
            LOG.exception("error in %s", getattr(callback, "__qualname__", callback))

    def _compact(self) -> None:
        """Drop cancelled timers once they are most of the heap (links re-arm theirs often)."""
        live = [entry for entry in self._timers if not entry[2].cancelled]
        if len(live) * 2 < len(self._timers):
            heapq.heapify(live)
            self._timers[:] = live

    def _drain_wakeups(self) -> None:
        """A signal arrived: its Python handler has queued the callback by now."""
        try:
            while self._wake_read.recv(512):
                pass
        except BlockingIOError:
            pass
        signalled, self._signalled = self._signalled, []
        for callback in signalled:
            self._call(callback, ())


class KeepWarm:
    """Call ``exercise()`` every ``every`` seconds while the data path had a packet in the
    last ``window`` seconds but none in the last ``every``: keep its code and data warm
    for the next packet of sparse traffic (a ping, a request), at no cost when idle.

    After 10 ms of idle a packet's first pass through Python and ``cryptography`` runs
    10 to 50 times slower than warm on these machines (docs/networks.md); after 1 ms,
    barely slower. The endpoint's exercise seals and opens a packet with throwaway keys.
    """

    def __init__(self, loop: Loop, exercise: Callable[[], Any], every: float = 0.001,
                 window: float = 0.1) -> None:
        self.loop, self.exercise, self.every, self.window = loop, exercise, every, window
        self.last = 0.0  # monotonic time of the last packet
        self.running = False

    def packet(self, now: float) -> None:
        """A packet went through the data path at ``now``."""
        self.last = now
        if not self.running:
            self.running = True
            self.loop.call_at(now + self.every, self._tick)

    def _tick(self) -> None:
        quiet = time.monotonic() - self.last
        if quiet >= self.window:
            self.running = False
            return
        self.loop.call_later(self.every, self._tick)  # first: an exercise that raises is logged
        if quiet >= self.every * 0.9:
            self.exercise()
