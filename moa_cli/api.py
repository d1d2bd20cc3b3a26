"""The public Python API: MoA in your own code, sync or async, with streaming.

    from moa_cli import MoA

    moa = MoA(references=["ollama:llama3.2:1b", "ollama:qwen2.5:1.5b"], aggregator="ollama:qwen2.5:1.5b")
    result = moa.run("Why is the sky blue?")          # blocking; a TurnResult
    print(result.answer, result.usage.total_tokens)

    stream = moa.stream("Write a haiku about rain")  # blocking iterator over the answer
    for text in stream:
        print(text, end="", flush=True)
    print(stream.result.to_dict())                   # same object `moa ask --json` prints

    async with MoA() as moa:                         # async: connections reused across turns
        result = await moa.arun("Hello")
        async for text in moa.astream("And again"):
            ...
        again = await moa.aaggregate("Hello", result.proposals)  # only the aggregator runs

Arguments left as None come from flags/env/config/defaults exactly as for the `moa` command.
The CLI itself is built on this class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, cast

from moa_cli import (
    logs,  # noqa: F401  (importing it keeps the library quiet by default)
    recorder,
)
from moa_cli.config import Settings, load_settings
from moa_cli.engine import AGGREGATOR_SAMPLING, EventSink, Plan, Router, run_aggregation, run_turn
from moa_cli.events import AnswerDelta, Event
from moa_cli.providers.registry import ProviderPool, check_lineup, lineup_specs
from moa_cli.types import Message, Proposal, TurnResult

_DONE = object()


def plan_from_settings(settings: Settings) -> Plan:
    """The engine's plan: each of its fields is the setting of the same name."""
    return Plan.from_settings(settings)


def build_messages(prompt: str | Sequence[Message], system: str | None = None) -> list[Message]:
    """A prompt string becomes one user message; a message list is used as given.

    `system` is put first unless the conversation already has a system message.
    """
    messages: list[Message] = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]  # type: ignore[misc]
    )
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


class MoA:
    """A configured Mixture-of-Agents. Cheap to create; providers connect on first use."""

    #: The log (recorder.py): the conversation the next turns belong to (None: each turn
    #: starts one), what runs them, and the last turn's recording.
    conversation_id: str | None = None
    source: str = "api"
    last_recording: recorder.Recording | None = None

    def __init__(
        self,
        references: Sequence[str] | str | None = None,
        aggregator: str | None = None,
        *,
        lineup: str | None = None,
        local: bool = False,
        settings: Settings | None = None,
        env: Mapping[str, str] | None = None,
        router: Router | None = None,
        **overrides: Any,
    ) -> None:
        """Settings left out come from the environment, the config file and the defaults.

        `overrides` are any settings by name (`moa_cli.settings.SPECS`: temperature,
        max_tokens, rounds, seed, timeout, ...); an unknown name is a TypeError.
        `router` routes every call through providers someone else owns (a server's or a
        batch's shared `ProviderPool`, perhaps wrapped): this MoA never closes it.
        """
        if settings is None:
            given = {"references": references, "aggregator": aggregator, "lineup": lineup, **overrides}
            settings = load_settings(given, env, force_local=local, origin="argument")
        elif references is not None or aggregator is not None or lineup is not None or overrides:
            raise TypeError("pass either settings= or single settings, not both")
        self.settings = settings
        self._router = router
        self._pool: ProviderPool | None = None

    @property
    def plan(self) -> Plan:
        return plan_from_settings(self.settings)

    def check(self, *, preload: bool = False) -> None:
        """Raise ConfigError now (missing key, missing model file) instead of mid-turn.

        `preload=True` also imports the SDKs the line-up needs: do it before an event loop
        runs, so the first turn does not freeze it while they load.
        """
        check_lineup(self.settings)
        if preload:
            self.preload()

    def preload(self) -> None:
        """Import the SDKs the line-up needs now (~1 s for together), before an event loop
        runs, so the first turn does not freeze the loop while they load."""
        ProviderPool(self.settings).preload(lineup_specs(self.settings))

    async def __aenter__(self) -> MoA:
        self._pool = ProviderPool(self.settings)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    async def arun(
        self,
        prompt: str | Sequence[Message],
        *,
        on_event: EventSink | None = None,
        system: str | None = None,
        aggregator_sampling: Mapping[str, Any] | None = None,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
    ) -> TurnResult:
        """Run one turn. `prompt` is a string or the whole conversation as messages.

        `aggregator_sampling` sets `temperature`, `top_p`, `presence_penalty`, `frequency_penalty`,
        `max_tokens` or `seed` for the answer's
        call alone, in this turn (the references keep the settings' values).

        `watch_references`: whether `on_event` reads the references' pieces as they arrive
        (`CallDelta`, `CallFirstToken`). When False the references are asked for whole and
        those events are not sent: much less CPU per call. None (the default): True.
        `watch_answer=False` asks for the answer whole too (one `AnswerDelta`): for callers
        that only want the result (`moa batch`).

        The turn is logged (recorder.py) to `conversation_id` (a new conversation when None)
        unless the `log` setting is off; its cost is set on the result either way.
        """
        return await self._turn(prompt, run_turn, on_event, system, aggregator_sampling, watch_references, watch_answer)

    async def aaggregate(
        self,
        prompt: str | Sequence[Message],
        proposals: Sequence[Proposal],
        *,
        on_event: EventSink | None = None,
        system: str | None = None,
        aggregator_sampling: Mapping[str, Any] | None = None,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
    ) -> TurnResult:
        """Run only the aggregator over `proposals` made earlier (a stored turn's), calling no reference.

        The aggregator answers `prompt` with the answered proposals of the last layer, as
        `arun` would have after its layers (engine.run_aggregation): a cheap way to compare
        aggregators, aggregation strategies or prompts over the same references' answers.
        The result's `proposals` are the ones given; its usage and cost are the aggregator's
        alone. Logged like `arun`. ValueError if the last layer has no answered proposal.
        """
        stored = list(proposals)

        def aggregate_only(
            messages: list[Message], plan: Plan, router: Router, sink: EventSink | None
        ) -> Awaitable[TurnResult]:
            return run_aggregation(messages, plan, router, stored, sink)

        return await self._turn(
            prompt, aggregate_only, on_event, system, aggregator_sampling, watch_references, watch_answer
        )

    async def _turn(
        self,
        prompt: str | Sequence[Message],
        run: Callable[[list[Message], Plan, Router, EventSink | None], Awaitable[TurnResult]],
        on_event: EventSink | None,
        system: str | None,
        aggregator_sampling: Mapping[str, Any] | None,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
    ) -> TurnResult:
        """`run` (the engine's run_turn or run_aggregation) recorded, through the router or a pool."""
        messages = build_messages(prompt, system or self.settings.system)
        plan = self.plan
        if watch_references is not None:
            plan = replace(plan, watch_references=watch_references)
        if watch_answer is not None:
            plan = replace(plan, watch_answer=watch_answer)
        if aggregator_sampling:
            unknown = set(aggregator_sampling) - AGGREGATOR_SAMPLING
            if unknown:
                raise TypeError(f"aggregator_sampling: unknown field {sorted(unknown)[0]!r}")
            plan = replace(plan, aggregator_sampling=dict(aggregator_sampling))
        # The worst case counts the answer's own budget when the turn sets one.
        recording = await recorder.start(
            self.settings,
            messages,
            conversation_id=self.conversation_id,
            source=self.source,
            aggregator_max_tokens=plan.aggregator_sampling.get("max_tokens"),
        )
        on_event = recording.wrap(on_event)
        try:
            router = self._router or self._pool
            if router is not None:
                result = await run(messages, plan, router, on_event)
            else:
                pool = ProviderPool(self.settings)  # outside `async with`: one pool per call
                try:
                    result = await run(messages, plan, pool, on_event)
                finally:
                    await pool.aclose()
        except BaseException as exc:
            recording.end(error=exc)
            self.last_recording = recording
            raise
        recording.end(result)
        self.last_recording = recording
        return result

    def run(self, prompt: str | Sequence[Message], *, on_event: EventSink | None = None) -> TurnResult:
        """Blocking `arun` for code without an event loop."""
        return asyncio.run(self.arun(prompt, on_event=on_event))

    def astream(self, prompt: str | Sequence[Message], *, on_event: EventSink | None = None) -> AsyncAnswerStream:
        """Iterate over the answer's text as it streams; `.result` holds the TurnResult after."""
        return AsyncAnswerStream(self, prompt, on_event)

    def stream(self, prompt: str | Sequence[Message], *, on_event: EventSink | None = None) -> AnswerStream:
        """Blocking iterator over the answer's text; `.result` holds the TurnResult after."""
        return AnswerStream(self.astream(prompt, on_event=on_event))


class AsyncAnswerStream:
    """`async for text in moa.astream(...)`; the turn runs in a task that stops if you stop."""

    def __init__(self, moa: MoA, prompt: str | Sequence[Message], on_event: EventSink | None) -> None:
        self._moa = moa
        self._prompt = prompt
        self._on_event = on_event
        self.result: TurnResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def sink(event: Event) -> None:
            if isinstance(event, AnswerDelta):
                queue.put_nowait(event.text)
            if self._on_event is not None:
                self._on_event(event)

        task = asyncio.create_task(self._moa.arun(self._prompt, on_event=sink))
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            self.result = task.result()  # re-raises TurnFailed and friends
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


class AnswerStream:
    """Blocking iteration over an AsyncAnswerStream, on a private event loop."""

    def __init__(self, inner: AsyncAnswerStream) -> None:
        self._inner = inner

    @property
    def result(self) -> TurnResult | None:
        return self._inner.result

    def __iter__(self) -> Iterator[str]:
        with asyncio.Runner() as runner:
            agen = cast(AsyncGenerator[str, None], self._inner.__aiter__())
            try:
                while True:
                    try:
                        yield runner.run(agen.__anext__())
                    except StopAsyncIteration:
                        return
            finally:
                runner.run(agen.aclose())
