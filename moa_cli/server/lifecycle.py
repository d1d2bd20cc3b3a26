"""Graceful drain: on SIGTERM (or Ctrl-C) readiness turns 503 and new turns are refused,
in-flight turns may finish until the drain deadline, then the rest are ended with a final
error event. uvicorn itself stops accepting connections and waits for ours to close, up to
its `timeout_graceful_shutdown` (`--shutdown-timeout`), a little after our own deadline.

The signal hook wraps uvicorn's own handler while uvicorn serves (it restores its original
handlers when it stops), so the same code drains a single process and each of its workers.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

from moa_cli.diagnostics import logger

#: Our deadline comes this long before uvicorn's, so the final error events can still go out.
MARGIN_SECONDS = 1.0


class Drain:
    """Which turns are in flight, and whether the server is shutting down."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.draining = False
        self._turns: set[Callable[[], None]] = set()  # each in-flight turn's "end now"
        self._on_begin: list[Callable[[], None]] = []  # e.g. refuse the requests still queued
        self._timer: asyncio.TimerHandle | None = None

    @property
    def deadline_seconds(self) -> float:
        return max(self.shutdown_timeout - MARGIN_SECONDS, self.shutdown_timeout / 2)

    def track(self, end_now: Callable[[], None]) -> Callable[[], None]:
        """Register a turn's `end_now`; returns the function that unregisters it."""
        self._turns.add(end_now)
        return lambda: self._turns.discard(end_now)

    @property
    def in_flight(self) -> int:
        return len(self._turns)

    def has_begun(self) -> bool:
        """Whether the drain has begun (a call, so a check after an await reads it afresh)."""
        return self.draining

    def when_draining(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) when the drain begins."""
        self._on_begin.append(callback)

    def begin(self) -> None:
        """(event loop) The first signal: refuse new turns, end the rest at the deadline."""
        if self.draining:
            self.end_all()  # a second signal: stop now
            return
        self.draining = True
        for callback in self._on_begin:
            callback()
        logger.info("draining: {} turn(s) in flight, {:g}s to finish", self.in_flight, self.deadline_seconds)
        self._timer = asyncio.get_running_loop().call_later(self.deadline_seconds, self.end_all)

    def end_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for end_now in list(self._turns):
            end_now()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def hook_signals(drain: Drain, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """While uvicorn's own handlers are installed, let SIGTERM/SIGINT start the drain first.

    Does nothing outside the main thread or when uvicorn is not the one handling signals
    (tests driving the app in-process). Returns a function that undoes it.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        owner = getattr(handler, "__self__", None)
        if not callable(handler) or not type(owner).__module__.startswith("uvicorn"):
            continue

        def on_signal(sig: int, frame: Any, handler: Any = handler) -> None:
            loop.call_soon_threadsafe(drain.begin)
            handler(sig, frame)

        previous[signum] = signal.signal(signum, on_signal)

    def undo() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return undo
