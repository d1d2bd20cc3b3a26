"""Pacing a run: `--rps` (RateLimiter, LimitedRouter) and `--budget` (Budget)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from moa_cli.batch.formats import Item
from moa_cli.errors import ConfigError
from moa_cli.providers.base import Gated, Provider
from moa_cli.settings import Settings
from moa_cli.types import Message


class RateLimiter:
    """Request starts at most `rate` a second, evenly spaced (a token bucket of depth 1).

    Each caller reserves the next free start time under a lock, then sleeps until it: no
    busy waiting, no retry loop, and first come first served.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("rate must be more than 0")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            start = max(self._next, now)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A call's turn to start (`Gated`'s gate): the limit is on starts, not on calls held."""
        await self.acquire()
        yield


class LimitedRouter:
    """The batch's provider pool, each provider behind the rate limiter (when there is one)."""

    def __init__(self, pool: Any, limiter: RateLimiter | None) -> None:
        self._pool = pool
        self._limiter = limiter
        self._wrapped: dict[str, Provider] = {}

    def resolve(self, spec: str) -> tuple[Provider, str]:
        provider, model = self._pool.resolve(spec)
        if self._limiter is None:
            return provider, model
        wrapped = self._wrapped.get(provider.name)
        if wrapped is None:
            wrapped = self._wrapped[provider.name] = Gated(provider, self._limiter.slot)
        return wrapped, model

    async def aclose(self) -> None:
        await self._pool.aclose()


class Budget:
    """`--budget`: what this run spent, plus the worst case of every item in flight, stays under the limit.

    An item starts only if its worst case (every call at max_tokens, pricing.worst_case) fits
    in what is left; while items are in flight it waits for them to settle (their real cost is
    usually far below their worst case), and with none in flight the run stops there. Every
    model of the line-up needs a price, or the budget cannot be kept: ConfigError (exit 2).
    """

    def __init__(self, limit: float, book: Any) -> None:
        self.limit = limit
        self.book = book
        self.spent = 0.0
        self.reserved = 0.0
        self.in_flight = 0
        self._settled = asyncio.Event()  # set when an item settles (the workers share one event loop)

    def worst_case(self, item: Item, settings: Settings) -> float:
        from moa_cli.recorder import estimate

        messages: list[Message] = list(item.prefix)
        total = 0.0
        for number, turn in enumerate(item.turns):
            messages.append({"role": "user", "content": turn})
            worst = estimate(settings, messages, self.book, earlier_answers=number)
            if worst.cost_usd is None:
                raise ConfigError(
                    f"--budget {self.limit:g}: cannot keep it, an item's worst case is {worst.text()}; "
                    'set a price with [pricing."provider:model"] in the config file or run moa models --refresh-prices'
                )
            total += worst.cost_usd
        return total

    async def reserve(self, cost: float) -> bool:
        """Hold `cost` for an item; False when it cannot fit even once nothing is in flight."""
        while self.spent + self.reserved + cost > self.limit:
            if not self.in_flight:
                return False
            self._settled.clear()
            await self._settled.wait()
        self.reserved += cost
        self.in_flight += 1
        return True

    def settle(self, reserved: float, actual: float | None) -> None:
        """An item is done: its real cost replaces its worst case (unknown: the worst case stays)."""
        self.reserved -= reserved
        self.in_flight -= 1
        self.spent += reserved if actual is None else actual
        self._settled.set()
