"""The Mixture-of-Agents engine: layers of proposers, then one aggregator (arXiv 2406.04692).

    layer 1          every reference answers the conversation as it is
    layer 2..R       every reference answers with layer k-1's answers after the conversation
                     (or in its system message: `Plan.aggregator_layout`, prompts.py)
    aggregator       answers with layer R's answers after the conversation (likewise); only it is streamed
                     to the user (the references too, as CallDelta, when `Plan.watch_references`;
                     else they are asked for whole)

The engine knows nothing of terminals or HTTP: it talks to models only through the
provider seam (`providers/base.py`), reports what happens through an event callback
(`events.py`) and returns a `TurnResult`. Importing it has no side effects.

A reference that fails is left out of the next layer, with its typed error (`kind`,
`status`) in its `Proposal` and `CallFailed` event; if a whole layer fails, or the
aggregator does, `TurnFailed` is raised with the calls' original exceptions. Every call's
stream is capped at `2 * max_tokens + 32` pieces, so a server that never stops cannot hold
a turn. Cancelling the task that runs `run_turn` cancels every call and closes its stream.

Before each call its prompt is fitted to the model's context window (fitting.py): what
was shortened is a `ContextFitted` event and an entry of `TurnResult.fitted`; a prompt that
cannot fit fails that call (kind "context") without sending it. A call its provider refuses as
too long all the same (`ContextRefused`: the window assumed was wrong) is fitted again to the
window the refusal states and sent once more; refused again, it fails (kind "context").

`run_aggregation` runs the aggregator step alone over proposals made earlier (`moa batch
--reuse-proposals`: compare aggregators without paying for the references again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, cast

from moa_cli.aggregation import aggregate
from moa_cli.diagnostics import logger  # disabled until the CLI configures it
from moa_cli.errors import BadResponse, ContextRefused, DeadlineExceeded, EmptyAnswer, ProviderError, TurnFailed
from moa_cli.events import (
    AnswerDelta,
    CallDelta,
    CallFailed,
    CallFinished,
    CallFirstToken,
    CallRetrying,
    CallStarted,
    ContextFitted,
    Event,
    TurnDone,
)
from moa_cli.fitting import Fit, Parts, fit_call, refit_call, with_references
from moa_cli.providers.base import RETRY_NOTICE, Provider, StreamItem
from moa_cli.settings import DEFAULTS, SPECS
from moa_cli.tools import for_aggregator, join_tool_calls
from moa_cli.types import (
    AgentSpec,
    CallInfo,
    CompletionRequest,
    Finish,
    Message,
    Proposal,
    ToolCallDelta,
    TurnResult,
    Usage,
)

EventSink = Callable[[Event], None]


def piece_limit(max_tokens: int) -> int:
    """Streamed pieces past which a call is cut: a piece is at most a token, give or take."""
    return 2 * max_tokens + 32


class Router(Protocol):
    """Finds the provider for a model spec (`ProviderPool` in the CLI; any object will do)."""

    def resolve(self, spec: str) -> tuple[Provider, str]:
        """The provider for a model spec, and the model name to send it."""
        ...


#: What `Plan.aggregator_sampling` may set: a turn's own sampling for the answer's call.
AGGREGATOR_SAMPLING = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens", "seed"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What one turn runs: the line-up and its sampling settings."""

    # Field names are setting names (api.plan_from_settings copies them); the defaults
    # are the settings' declared ones, for callers that build a Plan by hand.
    references: tuple[str, ...]
    aggregator: str
    rounds: int = DEFAULTS["rounds"]
    temperature: float = DEFAULTS["temperature"]
    max_tokens: int = DEFAULTS["max_tokens"]
    reference_max_tokens: int | None = DEFAULTS["reference_max_tokens"]  # None: max_tokens
    num_proc: int | None = DEFAULTS["num_proc"]
    layer_deadline: float | None = DEFAULTS["layer_deadline"]
    aggregator_prompt: str = DEFAULTS["aggregator_prompt"]
    aggregator_layout: str = DEFAULTS["aggregator_layout"]
    seed: int | None = DEFAULTS["seed"]
    aggregation: str = DEFAULTS["aggregation"]
    repeat_penalty: float = DEFAULTS["repeat_penalty"]
    quorum: int | None = DEFAULTS["quorum"]
    # Not a setting: CompletionRequest fields set for the aggregator's call alone, for one
    # turn (`moa serve` applies a request's temperature, max_tokens and seed this way).
    aggregator_sampling: Mapping[str, Any] = field(default_factory=dict)
    # Not a setting: an agent's request (tools.py), for the aggregator's answering call alone;
    # `agent_note` is the tool text the references' system message carries (left out for it).
    agent: AgentSpec | None = None
    agent_note: str = ""
    # Not a setting: whether someone reads the references' pieces as they arrive (CallDelta,
    # CallFirstToken: a live progress view, a draft). The front end says so; when no one
    # does, every call but the answer's is asked for whole (`CompletionRequest.stream`
    # False), with no per-piece events: a fraction of the CPU (issue 22).
    watch_references: bool = True
    # Not a setting: whether someone reads the answer as it arrives (a terminal, a server's
    # client, `MoA.astream`). When no one does (`moa batch`), the aggregator's call is asked
    # for whole too, and the answer comes as one AnswerDelta.
    watch_answer: bool = True
    # Not a setting: model spec -> its context window in tokens ([models."SPEC"] context = N).
    contexts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> Plan:
        """The plan of a `Settings`: each field that is a setting takes the setting's value."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name in SPECS}
        return cls(**values, contexts=dict(getattr(settings, "contexts", None) or {}))

    def seed_for(self, layer: int, index: int) -> int | None:
        """Distinct seeds per sample, so repeated models (Self-MoA) give distinct answers."""
        if self.seed is None:
            return None
        return self.seed + (layer - 1) * len(self.references) + index


def _ignore(_: Event) -> None:
    pass


class _Turn:
    """State of one running turn."""

    def __init__(self, plan: Plan, router: Router, emit: EventSink) -> None:
        self.plan = plan
        self.router = router
        self.emit = emit
        self.slots = asyncio.Semaphore(plan.num_proc or len(plan.references))
        self.streamed: set[CallInfo] = set()  # calls that produced at least one token
        self.usage_lost = False  # a call failed after streaming: the total is unknown
        self.errors: dict[CallInfo, ProviderError] = {}  # each failed call's own exception
        self.active: dict[str, set[CallInfo]] = {}  # provider name -> its calls in flight
        self.overlapped: set[CallInfo] = set()  # calls that shared their provider with another
        self.fitted: list[dict[str, Any]] = []  # what fitting shortened, per call (fitting.py)

    async def call(
        self,
        call: CallInfo,
        messages: list[Message] | Parts,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        answer: bool = True,
    ) -> Proposal:
        """Run one model call to completion. Failures become a Proposal with `error`.

        `max_tokens` and `temperature` override the plan's (aggregation.py's selection call);
        an aggregator call streams as the answer unless `answer` is False. `messages` given as
        `Parts` may be shortened to fit the model's context window (fitting.py). A call its
        provider refuses as too long for the model's context (`ContextRefused`, before any of
        its answer came) is fitted again to the window the refusal states and sent once more.
        """
        provider, model = self.router.resolve(call.model)
        prompt = messages if isinstance(messages, Parts) else Parts(list(messages))
        budget = self.plan.max_tokens if call.is_aggregator else self.plan.reference_max_tokens or self.plan.max_tokens
        request = CompletionRequest(
            model=model,
            messages=prompt.conversation,
            temperature=self.plan.temperature if temperature is None else temperature,
            max_tokens=max_tokens or budget,
            seed=self.plan.seed if call.is_aggregator else self.plan.seed_for(call.layer, call.index),
            repeat_penalty=self.plan.repeat_penalty,
            stream=self.plan.watch_answer if call.is_aggregator and answer else self.plan.watch_references,
        )
        if call.is_aggregator and self.plan.aggregator_sampling:
            # Per-turn values for the answer only (`moa serve` takes them from the request);
            # an explicit override above (the selection call's own budget) still wins.
            given = {"max_tokens": max_tokens, "temperature": temperature}
            request = replace(
                request, **{k: v for k, v in self.plan.aggregator_sampling.items() if given.get(k) is None}
            )
        sharing = 1 if call.is_aggregator else self.plan.references.count(call.model)  # Self-MoA's samples
        try:
            fitted = await fit_call(
                provider, model, call.model, prompt, request.max_tokens, self.plan.contexts, sharing=sharing
            )
        except ProviderError as exc:  # ContextOverflow: never sent; or the local model failed to load
            return self._failed(call, exc, time.perf_counter())
        sent = await self._send(call, provider, self._fitted_request(call, request, fitted, answer), answer)
        if isinstance(sent, Proposal):
            return sent
        refused, started = sent
        logger.debug("layer {} call {} refused as too long ({}): fitted again", call.layer, call.model, refused.reason)
        try:
            refitted = await refit_call(
                provider, model, call.model, prompt, request.max_tokens, fitted, refused.window, sharing=sharing
            )
        except ProviderError as exc:  # ContextOverflow: the stated window is too small for any prompt
            return self._failed(call, exc, started)
        again = await self._send(call, provider, self._fitted_request(call, request, refitted, answer), answer, started)
        assert isinstance(again, Proposal)  # a second refusal is the call's failure: never a loop
        return again

    def _fitted_request(
        self, call: CallInfo, request: CompletionRequest, fitted: Fit, answer: bool
    ) -> CompletionRequest:
        """`request` with the fitted prompt and max_tokens (said when something was shortened)."""
        request = replace(request, messages=fitted.messages, max_tokens=fitted.max_tokens)
        if fitted.changed:
            self._fitted(call, fitted)
        if call.is_aggregator and answer and self.plan.agent is not None:
            # After fitting: the (fitted) system message leads the agent's own conversation.
            request = for_aggregator(request, self.plan.agent, self.plan.agent_note)
        return request

    async def _send(
        self,
        call: CallInfo,
        provider: Provider,
        request: CompletionRequest,
        answer: bool,
        first_try: float | None = None,
    ) -> Proposal | tuple[ContextRefused, float]:
        """Send `request` and read its answer. A refusal as too long before any piece came, on a
        first try (`first_try` None), is returned with the time the try started, for `call` to
        fit the prompt again; on the second try (`first_try`: when the first started, which its
        time counts from) it is the call's failure, like any other."""
        delta = AnswerDelta if call.is_aggregator and answer else CallDelta
        # Else no per-piece events for a reference: no one reads them. The answer's pieces
        # are always events (one piece, when it came whole).
        watched = request.stream or (call.is_aggregator and answer)
        limit = piece_limit(request.max_tokens)
        parts: list[str] = []
        tool_pieces: list[ToolCallDelta] = []
        usage: Usage | None = None
        finish: str | None = None
        async with self.slots:
            started = time.perf_counter() if first_try is None else first_try
            logger.debug(
                "layer {} call {} -> {} ({} messages)", call.layer, call.model, provider.name, len(request.messages)
            )
            self._enter(provider.name, call)
            self.emit(CallStarted(call, request.sampling()))
            # Every provider's stream is an async generator: aclose() ends it where it stands.
            stream = cast(AsyncGenerator[StreamItem, None], provider.stream(request))
            # The generator runs in this task's context: its client's retries are told here.
            notice = RETRY_NOTICE.set(
                lambda status, wait, attempt: self.emit(CallRetrying(call, status, wait, attempt))
            )
            try:
                while True:
                    # Only the provider's errors are this model's failure; an error raised by
                    # an event handler (the display) is not, and propagates.
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except ContextRefused as exc:
                        if first_try is None and not parts and call not in self.streamed:
                            return exc, started
                        if first_try is not None:
                            again = f"{exc.reason} (refused again after moa shortened it: not sent a third time)"
                            exc = ContextRefused(exc.model, again, status=exc.status, window=exc.window)
                        return self._failed(call, exc, started)
                    except ProviderError as exc:
                        return self._failed(call, exc, started)
                    except Exception as exc:  # noqa: BLE001 - a provider bug must not crash the turn
                        logger.opt(exception=exc).debug("unexpected error from {}", call.model)
                        error = ProviderError(call.model, f"unexpected error: {type(exc).__name__}: {exc}")
                        error.__cause__ = exc
                        return self._failed(call, error, started)
                    if isinstance(item, Usage):
                        usage = item
                        continue
                    if isinstance(item, Finish):
                        finish = item.reason
                        continue
                    if isinstance(item, ToolCallDelta):  # an aggregator's tool call (tools.py)
                        self.streamed.add(call)
                        tool_pieces.append(item)
                        item = ""
                    if not parts:
                        self.streamed.add(call)
                        if watched:
                            self.emit(CallFirstToken(call, time.perf_counter() - started))
                    parts.append(item)
                    if len(parts) > limit:
                        reason = (
                            f"the stream ran far past max_tokens ({len(parts)} pieces for max_tokens "
                            f"{request.max_tokens}): cut"
                        )
                        return self._failed(call, BadResponse(call.model, reason), started)
                    if item and watched:
                        self.emit(delta(call, item))
            finally:
                RETRY_NOTICE.reset(notice)
                self._leave(provider.name, call)
                await stream.aclose()  # closes the HTTP stream if we stopped early
        text = "".join(parts)
        tool_calls = join_tool_calls(tool_pieces)
        if not text.strip() and not tool_calls:
            return self._failed(call, self._empty(call, provider), started)
        seconds = time.perf_counter() - started
        logger.debug(
            "layer {} call {} finished in {:.3f}s ({}), usage {}", call.layer, call.model, seconds, finish, usage
        )
        self.emit(CallFinished(call, text, seconds, usage, finish, tuple(tool_calls)))
        return Proposal(
            call.model, call.layer, text=text, seconds=seconds, usage=usage, finish_reason=finish, tool_calls=tool_calls
        )

    def _layout(self) -> str:
        """Where the answers go (prompts.py). An agent's aggregator call keeps "system": it sends
        the client's own conversation, led by the text conversation's system message."""
        return "system" if self.plan.agent is not None else self.plan.aggregator_layout

    def _with_answers(self) -> Callable[[list[Message], list[str]], list[Message]]:
        """How a layer after the first gets the earlier layer's answers."""
        return with_references(self.plan.aggregator_prompt, self._layout())

    def _fitted(self, call: CallInfo, fitted: Fit) -> None:
        message = fitted.summary(call.model)
        details = {"model": call.model, "layer": call.layer, "index": call.index, "role": call.role, **fitted.to_dict()}
        logger.info("layer {} call {}: {}", call.layer, call.model, message)
        # One entry per call: fitted again after a refusal, the second fit is what was sent.
        same = ("model", "layer", "index", "role")
        self.fitted = [e for e in self.fitted if any(e[k] != details[k] for k in same)]
        self.fitted.append(details)
        self.emit(ContextFitted(call, message, details))

    def _enter(self, provider: str, call: CallInfo) -> None:
        active = self.active.setdefault(provider, set())
        active.add(call)
        if len(active) > 1:
            self.overlapped.update(active)

    def _leave(self, provider: str, call: CallInfo) -> None:
        self.active.get(provider, set()).discard(call)

    def _empty(self, call: CallInfo, provider: object) -> EmptyAnswer:
        reason = "returned an empty answer"
        name = getattr(provider, "name", "?")
        capped_to_one = getattr(provider, "max_concurrency", None) == 1
        if getattr(provider, "kind", None) == "openai" and call in self.overlapped and not capped_to_one:
            # Seen with llama.cpp's server: a second request interrupts the first.
            reason += (
                f" while another call to provider {name!r} was in flight; if its server answers one "
                f"request at a time, set max_concurrency = 1 under [providers.{name}]"
            )
        return EmptyAnswer(call.model, reason)

    def _failed(self, call: CallInfo, error: ProviderError, started: float) -> Proposal:
        if call in self.streamed:
            # It produced (and was billed for) tokens we never learnt the count of.
            self.usage_lost = True
        seconds = time.perf_counter() - started
        self.errors[call] = error
        timed_out = error.kind in ("timeout", "deadline")
        logger.debug(
            "layer {} call {} failed after {:.3f}s ({}): {}", call.layer, call.model, seconds, error.kind, error.reason
        )
        self.emit(CallFailed(call, error.reason, seconds, timed_out, error.kind, error.status))
        return Proposal(
            call.model,
            call.layer,
            error=error.reason,
            seconds=seconds,
            timed_out=timed_out,
            error_kind=error.kind,
            status=error.status,
        )

    async def layer(
        self,
        layer: int,
        messages: list[Message] | Parts,
        calls: list[CallInfo] | None = None,
        answered_before: int = 0,
    ) -> list[Proposal]:
        """Run every reference of a layer; go on at the quorum or the deadline, whichever comes first.

        With a quorum K, the layer goes on as soon as K references have answered: the calls
        still running (or waiting for a slot) are cancelled, their streams closed, and each is
        reported as cut by the quorum (kind "quorum"). The deadline, past which the layer goes
        on with whatever answers it has, still applies; neither ever goes on with no answer.

        `calls`: only these (a retry's failed references), `answered_before` of the layer's
        references having answered already: they count towards the quorum and the deadline.
        """
        total = len(self.plan.references) if calls is None else len(calls) + answered_before
        if calls is None:
            calls = [CallInfo(model, layer, i) for i, model in enumerate(self.plan.references)]
        started = time.perf_counter()
        tasks = {asyncio.create_task(self.call(c, messages)): c for c in calls}
        results: dict[CallInfo, Proposal] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plan.layer_deadline if self.plan.layer_deadline else None
        quorum = min(self.plan.quorum, total) if self.plan.quorum else None
        pending = set(tasks)
        cut: ProviderError | None = None
        try:
            while pending:
                # Before the deadline, wake at it; after it, wait for the first answer.
                timeout = None if deadline is None or loop.time() >= deadline else deadline - loop.time()
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    results[tasks[task]] = task.result()
                answered = answered_before + sum(p.text is not None for p in results.values())
                if not pending:
                    break
                if quorum is not None and answered >= quorum:
                    reason = f"cut by the quorum ({answered} of {total} answered, quorum {quorum})"
                    cut = ProviderError("", reason, kind="quorum")
                    break
                if deadline is not None and loop.time() >= deadline and answered:
                    cut = DeadlineExceeded("", f"timed out at the layer deadline ({self.plan.layer_deadline:g}s)")
                    break
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                call = tasks[task]
                assert cut is not None
                error = type(cut)(call.model, cut.reason, kind=cut.kind)
                results[call] = self._failed(call, error, started)
        finally:
            # Reached with tasks still running only when the turn itself is cancelled.
            running = [t for t in tasks if not t.done()]
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return [results[c] for c in calls]

    async def rerun_failed(
        self, messages: list[Message], given: list[Proposal]
    ) -> tuple[list[Proposal], list[Usage | None]]:
        """Run again the last layer's references that failed in `given` (a failed try's kept
        proposals), over the same input they had; the quorum's cuts are not failures to redo.

        Returns the proposals with the fresh outcomes in the failed ones' places, and the usage
        of the calls made here (paid by this turn).
        """
        layer = max(p.layer for p in given)
        mine = [(n, p) for n, p in enumerate(given) if p.layer == layer]
        todo = [
            (n, CallInfo(p.model, layer, i))
            for i, (n, p) in enumerate(mine)
            if p.text is None and p.error_kind != "quorum"
        ]
        answered = sum(p.text is not None for _, p in mine)
        if not todo or (self.plan.quorum and answered >= self.plan.quorum):
            return given, []
        if layer == 1:
            layer_messages = Parts(messages)
        else:
            earlier = [p.text for p in given if p.layer == layer - 1 and p.text is not None]
            layer_messages = Parts(messages, tuple(earlier), self._with_answers())
        fresh = await self.layer(layer, layer_messages, [call for _, call in todo], answered)
        merged = list(given)
        for (n, _), proposal in zip(todo, fresh, strict=True):
            merged[n] = proposal
        return merged, [p.usage for p in fresh if p.text is not None]

    async def run(self, messages: list[Message]) -> TurnResult:
        started = time.perf_counter()
        proposals: list[Proposal] = []
        answers: list[str] = []
        for layer in range(1, self.plan.rounds + 1):
            layer_messages = Parts(messages) if layer == 1 else Parts(messages, tuple(answers), self._with_answers())
            results = await self.layer(layer, layer_messages)
            proposals.extend(results)
            answers = [p.text for p in results if p.text is not None]
            if not answers:
                reasons = "; ".join(f"{p.model}: {p.error}" for p in results)
                failures = [self.errors[CallInfo(model, layer, i)] for i, model in enumerate(self.plan.references)]
                raise TurnFailed(f"every reference model failed in layer {layer} ({reasons})", failures)

        paid = [p.usage for p in proposals if p.text is not None]
        last = [p for p in results if p.text is not None]
        return await self.aggregate(messages, proposals, last, self.plan.rounds + 1, started, paid)

    async def aggregate(
        self,
        messages: list[Message],
        proposals: list[Proposal],
        last: list[Proposal],
        layer: int,
        started: float,
        paid: list[Usage | None],
    ) -> TurnResult:
        """The aggregator step over `last` (answered proposals, in `proposals`), as layer `layer`.

        `paid` is the usage of the calls the turn made before it: the turn's usage is theirs
        plus the aggregator's.
        """
        step = await aggregate(
            self.plan.aggregation,
            self,
            self.plan.aggregator,
            layer,
            messages,
            self.plan.aggregator_prompt,
            last,
            self._layout(),
        )
        final = step.final
        if final.text is None:
            failed = [self.errors[step.failed_call]] if step.failed_call in self.errors else []
            raise TurnFailed(f"the aggregator {final.model} failed: {final.error}", failed, aggregator=True)
        usages = paid + [c.usage for c in step.calls]
        usage = Usage.total(usages) if usages else Usage(0, 0, 0)  # no call at all: nothing used
        if self.usage_lost:
            usage = Usage()
        result = TurnResult(
            answer=final.text,
            aggregator=self.plan.aggregator,
            proposals=proposals,
            usage=usage,
            seconds=time.perf_counter() - started,
            aggregator_usage=step.usage(),
            finish_reason=final.finish_reason,
            max_tokens=self.plan.max_tokens,
            aggregation=self.plan.aggregation,
            selected=step.selected,
            warnings=step.warnings,
            tool_calls=final.tool_calls,
            fitted=list(self.fitted),
        )
        self.emit(TurnDone(result))
        return result


async def run_turn(
    messages: list[Message],
    plan: Plan,
    router: Router,
    on_event: EventSink | None = None,
) -> TurnResult:
    """Run one MoA turn over `messages` (the conversation so far, ending with the user's turn)."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    return await _Turn(plan, router, on_event or _ignore).run(list(messages))


async def run_aggregation(
    messages: list[Message],
    plan: Plan,
    router: Router,
    proposals: Sequence[Proposal],
    on_event: EventSink | None = None,
    *,
    rerun_failed: bool = False,
) -> TurnResult:
    """Run only the aggregator step of a turn, over proposals made earlier (stored ones).

    With `rerun_failed` (a retried request of `moa serve`), the last layer's references that
    failed are called again first, as `run_turn` would have; their usage is this turn's.

    The aggregator (`plan.aggregator`, `plan.aggregation`, its prompt and sampling) answers
    `messages` with the answered proposals of the last layer in `proposals`, exactly as
    `run_turn` would have after its layers; no reference is called, so `plan.references`
    and `plan.rounds` are not used. The result's `proposals` are the ones given (the same
    objects), and its `usage` and events cover the aggregator's calls alone: the proposals
    were paid for when they were made. ValueError if no proposal of the last layer has text.
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    given = list(proposals)
    if not given:
        raise ValueError("no proposals to aggregate")
    turn = _Turn(plan, router, on_event or _ignore)
    started = time.perf_counter()
    paid: list[Usage | None] = []
    if rerun_failed:
        given, paid = await turn.rerun_failed(list(messages), given)
    layer = max(p.layer for p in given)
    last = [p for p in given if p.layer == layer and p.text is not None]
    if not last and rerun_failed:
        reasons = "; ".join(f"{p.model}: {p.error}" for p in given if p.layer == layer)
        raise TurnFailed(f"every reference model failed in layer {layer} ({reasons})", list(turn.errors.values()))
    if not last:
        raise ValueError(f"no proposal of the last layer ({layer}) has an answer to aggregate")
    return await turn.aggregate(list(messages), given, last, layer + 1, started, paid)
