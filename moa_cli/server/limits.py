"""At most N turns run at once; M more wait their turn in arrival order; beyond that, 429."""

from __future__ import annotations

import asyncio
from collections import deque

from moa_cli.server.errors import overloaded


class Gate:
    """`await gate.enter()` returns once the request may run (ApiError 429 when full);
    `gate.leave()` once it is done. Waiters are served first come, first served."""

    def __init__(self, max_concurrent: int | None, queue: int) -> None:
        self.max_concurrent = max_concurrent  # None: no limit
        self.queue = queue
        self.running = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self) -> None:
        if self.max_concurrent is None or (self.running < self.max_concurrent and not self._waiting):
            self.running += 1
            return
        if len(self._waiting) >= self.queue:
            raise overloaded()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # leave() hands its slot over: `running` already counts us
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave()  # we were handed a slot as we went away: pass it on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def refuse_waiting(self, error: Exception) -> None:
        """Every request still queued fails with `error` (the drain's 503), at once."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def leave(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the next in line
                return
        self.running -= 1
