"""An in-process provider that plays back scripted replies: the engine's tests run on it.

Like llm's `MockModel` and openai-agents' `ScriptedModel`: no network, no SDK, each reply
a `Step` that says what the "model" streams, how slowly, why it stops, or how it fails.

    provider = ScriptedProvider("fake")
    provider.enqueue("alpha", Step("Hello there."), Step(error="rate_limit", status=429))
    provider.set_default("judge", Step(["The ", "answer."], finish_reason="length"))
    router = ScriptedRouter(provider)                  # resolve(spec) -> (provider, spec)
    result = await run_turn(messages, plan, router)
    assert provider.calls[0].model == "alpha"          # every request, in arrival order
    provider.assert_complete()                         # every enqueued step was used

A model with neither queued steps nor a default answers `Step(f"Answer from {model}.")`,
unless `strict=True`, where it fails the test with `UnexpectedModelCall`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from moa_cli.errors import (
    ErrorKind,
    error_for,
)
from moa_cli.types import CompletionRequest, Finish, Usage


class UnexpectedModelCall(AssertionError):
    """A strict provider was asked for a model it has no step for."""


class UnconsumedModelSteps(AssertionError):
    """`assert_complete()` found enqueued steps that no call used."""


@dataclass(frozen=True)
class Step:
    """One scripted reply.

    `text`: the answer, as one string (streamed word by word) or as the exact pieces.
    `delay`: seconds before the first piece; `piece_delay`: seconds between pieces.
    `finish_reason`: yielded as `Finish` after the text ("stop" by default; None: no Finish).
    `error`: a failure kind ("timeout", "rate_limit", ...) raised after `error_after` pieces,
    with `status` and `reason`; or `raises`: this very exception (any type: a provider bug).
    `usage`: reported after the text (None: counted from the pieces); `report_usage=False`: none.
    `endless`: keep streaming `text`'s pieces over and over (a server that never stops).
    """

    text: str | Sequence[str] = ""
    delay: float = 0.0
    piece_delay: float = 0.0
    finish_reason: str | None = "stop"
    error: ErrorKind | None = None
    error_after: int = 0
    status: int | None = None
    reason: str | None = None
    usage: Usage | None = None
    report_usage: bool = True
    endless: bool = False
    raises: BaseException | None = None

    def pieces(self) -> list[str]:
        if isinstance(self.text, str):
            words = self.text.split(" ")
            return [w + " " for w in words[:-1]] + [words[-1]] if self.text else []
        return list(self.text)

    def fails(self) -> bool:
        return self.error is not None or self.raises is not None

    def exception(self, model: str) -> BaseException:
        if self.raises is not None:
            return self.raises
        assert self.error is not None
        reason = self.reason or f"scripted {self.error} failure"
        return error_for(model, reason, kind=self.error, status=self.status)


@dataclass
class ScriptedProvider:
    """A provider (see `providers/base.py`) whose models answer from a script."""

    name: str = "scripted"
    strict: bool = False
    kind: str = "scripted"
    calls: list[CompletionRequest] = field(default_factory=list)
    _queues: dict[str, deque[Step]] = field(default_factory=dict)
    _defaults: dict[str, Step] = field(default_factory=dict)
    closed: bool = False
    active: int = 0  # calls streaming right now
    peak: int = 0  # most calls streaming at once
    cancelled: list[CompletionRequest] = field(default_factory=list)  # calls cancelled or closed early

    def enqueue(self, model: str, *steps: Step | str) -> ScriptedProvider:
        """Queue replies for `model`, used first-in first-out (a str is `Step(text)`)."""
        queue = self._queues.setdefault(model, deque())
        queue.extend(Step(s) if isinstance(s, str) else s for s in steps)
        return self

    def set_default(self, model: str, step: Step | str) -> ScriptedProvider:
        """The reply for `model` once its queue is empty."""
        self._defaults[model] = Step(step) if isinstance(step, str) else step
        return self

    def calls_for(self, model: str) -> list[CompletionRequest]:
        return [c for c in self.calls if c.model == model]

    def assert_complete(self) -> None:
        left = {model: len(queue) for model, queue in self._queues.items() if queue}
        if left:
            raise UnconsumedModelSteps(f"steps never used: {left}")

    def _next(self, model: str) -> Step:
        queue = self._queues.get(model)
        if queue:
            return queue.popleft()
        if model in self._defaults:
            return self._defaults[model]
        if self.strict:
            raise UnexpectedModelCall(f"no scripted step for model {model!r}")
        return Step(f"Answer from {model}.")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Finish | Usage]:
        self.calls.append(request)
        step = self._next(request.model)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if step.delay:
                await asyncio.sleep(step.delay)
            pieces = step.pieces()
            sent = 0
            while True:
                for piece in pieces:
                    if step.fails() and sent >= step.error_after:
                        raise step.exception(request.model)
                    if step.piece_delay:
                        await asyncio.sleep(step.piece_delay)
                    else:
                        await asyncio.sleep(0)  # let other calls run, as a network would
                    yield piece
                    sent += 1
                if not step.endless or not pieces:
                    break
            if step.fails():
                raise step.exception(request.model)
            if step.finish_reason is not None:
                yield Finish(step.finish_reason)
            if step.report_usage:
                prompt = sum(len(m["content"].split()) for m in request.messages)
                yield step.usage or Usage(prompt, sent, prompt + sent)
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled.append(request)
            raise
        finally:
            self.active -= 1

    async def list_models(self) -> list[str]:
        return list(dict.fromkeys([*self._queues, *self._defaults]))

    async def aclose(self) -> None:
        self.closed = True


class ScriptedRouter:
    """Routes every model spec to one provider, unchanged (`Router` in engine.py)."""

    def __init__(self, provider: ScriptedProvider) -> None:
        self.provider = provider

    def resolve(self, spec: str) -> tuple[ScriptedProvider, str]:
        return self.provider, spec
