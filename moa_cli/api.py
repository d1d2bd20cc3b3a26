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
    diagnostics,  # noqa: F401  (importing it keeps the library quiet by default)
    recorder,
)
from moa_cli.config import Settings, load_settings
from moa_cli.engine import AGGREGATOR_SAMPLING, EventSink, Plan, Router, run_aggregation, run_turn
from moa_cli.errors import ConfigError
from moa_cli.events import AnswerDelta, Event
from moa_cli.providers.registry import ProviderPool, check_lineup, lineup_specs, split
from moa_cli.types import AgentSpec, Message, Proposal, TurnResult

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


def _agentic(
    prompt: str | Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None,
    response_format: Mapping[str, Any] | None,
) -> bool:
    """Whether a turn is an agent's: tools, a JSON format, or tool calls in the conversation."""
    with_tool_calls = not isinstance(prompt, str) and any(
        dict(m).get("role") == "tool" or dict(m).get("tool_calls") for m in prompt
    )
    return bool(tools) or with_tool_calls or (response_format is not None and response_format.get("type") != "text")


def _check_grammar(response_format: dict[str, Any]) -> None:
    """ConfigError if a local model cannot be held to `response_format` (providers/local.py)."""
    try:
        from moa_cli.providers.local import grammar_for

        grammar_for(response_format)
    except ImportError:  # no llama.cpp here: the call itself says so
        return
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class MoA:
    """A configured Mixture-of-Agents. Cheap to create; providers connect on first use."""

    #: The log (recorder.py): the conversation the next turns belong to (None: each turn
    #: starts one), what runs them, whether each turn continues the last one's conversation,
    #: and the last turn's recording. The first three are also keyword arguments.
    conversation_id: str | None = None
    source: str = "api"
    continue_conversation: bool = False
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
        source: str = "api",
        conversation_id: str | None = None,
        continue_conversation: bool = False,
        **overrides: Any,
    ) -> None:
        """Settings left out come from the environment, the config file and the defaults.

        `overrides` are any settings by name (`moa_cli.settings.SPECS`: temperature,
        max_tokens, rounds, seed, timeout, ...); an unknown name is a TypeError.
        `router` routes every call through providers someone else owns (a server's or a
        batch's shared `ProviderPool`, perhaps wrapped): this MoA never closes it.
        `source` names what runs the turns in the log ("api", "batch", ...); `conversation_id`
        is the logged conversation they belong to (None: the first turn starts one); with
        `continue_conversation`, each turn's conversation is the next turn's (a batch item's turns).
        """
        if settings is None:
            given = {"references": references, "aggregator": aggregator, "lineup": lineup, **overrides}
            settings = load_settings(given, env, force_local=local, origin="argument")
        elif references is not None or aggregator is not None or lineup is not None or overrides:
            raise TypeError("pass either settings= or single settings, not both")
        self.settings = settings
        self.source = source
        self.conversation_id = conversation_id
        self.continue_conversation = continue_conversation
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
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
    ) -> TurnResult:
        """Run one turn. `prompt` is a string or the whole conversation as messages.

        `aggregator_sampling` sets `temperature`, `top_p`, `presence_penalty`, `frequency_penalty`,
        `max_tokens` or `seed` for the answer's
        call alone, in this turn (the references keep the settings' values).

        `tools` (OpenAI tool objects, with `tool_choice`) and `response_format` (`json_object`
        or `json_schema`) make it an agent's turn (tools.py, structured.py): `prompt` may then
        hold assistant `tool_calls` and `tool` messages; the references read it all as text and
        advise in prose; the aggregator gets the real tools and format, and the result's
        `tool_calls` (finish_reason "tool_calls") or JSON `answer` are checked, with one repair
        round (then `structured.InvalidOutput`, a TurnFailed). Such a turn always synthesizes
        (a verbatim reference answer cannot call a tool), and its aggregator must not be a
        local model (ConfigError).
        `watch_references`: whether `on_event` reads the references' pieces as they arrive
        (`CallDelta`, `CallFirstToken`). When False the references are asked for whole and
        those events are not sent: much less CPU per call. None (the default): True.
        `watch_answer=False` asks for the answer whole too (one `AnswerDelta`): for callers
        that only want the result (`moa batch`).

        The turn is logged (recorder.py) to `conversation_id` (a new conversation when None)
        unless the `log` setting is off; its cost is set on the result either way.
        """
        if _agentic(prompt, tools, response_format):
            from moa_cli.structured import run_checked

            agent, note, text = self._agent(prompt, system, tools or (), tool_choice, response_format)
            return await self._turn(
                text, run_checked, on_event, system, aggregator_sampling,
                agent=(agent, note), watch_references=watch_references, watch_answer=watch_answer,
            )  # fmt: skip
        return await self._turn(
            prompt, run_turn, on_event, system, aggregator_sampling,
            watch_references=watch_references, watch_answer=watch_answer,
        )  # fmt: skip

    def _agent(
        self,
        prompt: str | Sequence[Message],
        system: str | None,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: Any,
        response_format: Mapping[str, Any] | None,
    ) -> tuple[AgentSpec, str, list[Message]]:
        """An agent's turn: its spec, the references' tool note and the conversation as text."""
        from moa_cli.structured import check_response_format
        from moa_cli.tools import conversation_as_text, reference_note

        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if tool.get("type") != "function" or not isinstance(function, Mapping) or not function.get("name"):
                raise ConfigError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        try:
            formatted = check_response_format(dict(response_format) if response_format is not None else None)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        aggregator = self.settings.aggregator
        local = split(self.settings, aggregator)[0].kind == "local"
        # A JSON format binds a local model through a grammar (providers/local.py); tool calls do not.
        if (tools or _agentic(prompt, None, None)) and local:
            raise ConfigError(
                f"the aggregator {aggregator} is a local (llama.cpp) model, and moa's local models do not call tools: "
                "use a hosted aggregator (--aggregator); the references may stay local"
            )
        if local and formatted is not None:  # a schema its grammar cannot hold: said before any call
            _check_grammar(formatted)
        native = [dict(m) for m in build_messages(prompt, system or self.settings.system)]
        note = reference_note([dict(t) for t in tools], tool_choice)
        text = conversation_as_text(native, note)
        if not text or text[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message or a tool result")
        spec = AgentSpec(tuple(native), tuple(dict(t) for t in tools), tool_choice, formatted)
        return spec, note, text

    async def aaggregate(
        self,
        prompt: str | Sequence[Message],
        proposals: Sequence[Proposal],
        *,
        on_event: EventSink | None = None,
        system: str | None = None,
        aggregator_sampling: Mapping[str, Any] | None = None,
        rerun_failed: bool = False,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> TurnResult:
        """Run only the aggregator over `proposals` made earlier (a stored turn's), calling no reference.

        With `rerun_failed`, the last layer's references that failed (not those a quorum cut)
        are called again first, over the same input: a retry that pays only for what failed.
        `tools`, `tool_choice` and `response_format` make it an agent's turn, as in `arun`:
        the aggregator's answer is checked, with one repair round over the same proposals.

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
            return run_aggregation(messages, plan, router, stored, sink, rerun_failed=rerun_failed)

        if _agentic(prompt, tools, response_format):
            from moa_cli.structured import run_checked

            agent, note, text = self._agent(prompt, system, tools or (), tool_choice, response_format)

            def checked(
                messages: list[Message], plan: Plan, router: Router, sink: EventSink | None
            ) -> Awaitable[TurnResult]:
                return run_checked(messages, plan, router, sink, first_step=aggregate_only)

            return await self._turn(
                text, checked, on_event, system, aggregator_sampling,
                agent=(agent, note), watch_references=watch_references, watch_answer=watch_answer,
            )  # fmt: skip
        return await self._turn(
            prompt, aggregate_only, on_event, system, aggregator_sampling,
            watch_references=watch_references, watch_answer=watch_answer,
        )  # fmt: skip

    async def _turn(
        self,
        prompt: str | Sequence[Message],
        run: Callable[[list[Message], Plan, Router, EventSink | None], Awaitable[TurnResult]],
        on_event: EventSink | None,
        system: str | None,
        aggregator_sampling: Mapping[str, Any] | None,
        agent: tuple[AgentSpec, str] | None = None,
        watch_references: bool | None = None,
        watch_answer: bool | None = None,
    ) -> TurnResult:
        """`run` (the engine's run_turn or run_aggregation) recorded, through the router or a pool."""
        messages = build_messages(prompt, system or self.settings.system)
        plan = self.plan
        if agent is not None:  # an agent's turn: always synthesized (a reference's prose calls no tool)
            plan = replace(plan, agent=agent[0], agent_note=agent[1], aggregation="synthesize")
        if watch_references is not None:
            plan = replace(plan, watch_references=watch_references)
        if watch_answer is not None and agent is None:  # tool calls and JSON are checked as they stream
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
            self._recorded(recording)
            raise
        recording.end(result)
        self._recorded(recording)
        return result

    def _recorded(self, recording: recorder.Recording) -> None:
        self.last_recording = recording
        if self.continue_conversation:
            self.conversation_id = recording.conversation_id  # the next turn continues it

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
