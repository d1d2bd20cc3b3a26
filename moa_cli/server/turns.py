"""One request's turn: it runs in its own task; what it produces comes out of `pieces()`.

    turn = Turn(served, request, settings, pool, ...)
    turn.start()
    async for kind, text in turn.pieces():    # ("text" | "reasoning" | "heartbeat", str)
        ...
    turn.error or (turn.finish_reason, turn.usage(), turn.moa())
    await turn.close()                         # always: cancels the turn if it still runs

The aggregator's `AnswerDelta` events are the text, as they arrive upstream: nothing is
buffered but the few characters that could begin a stop sequence. A stop sequence ends
the turn there (its aggregator stream is closed). A client that goes away, a drain that
reaches its deadline and --turn-timeout all cancel the task, which closes every upstream
stream (the engine's cancellation contract).

Sampling from the request (temperature, top_p, presence and frequency penalties, max_tokens,
seed) applies to the aggregator's
call (`MoA.arun(aggregator_sampling=...)`); the references keep the line-up's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio

from moa_cli.api import MoA, build_messages
from moa_cli.diagnostics import logger
from moa_cli.engine import piece_limit
from moa_cli.errors import KIND_WORDS, ConfigError, EmptyAnswer, ProviderError, TurnFailed
from moa_cli.events import AnswerDelta, CallFailed, CallFinished, CallStarted, Event
from moa_cli.providers.registry import ProviderPool
from moa_cli.server import errors
from moa_cli.server.errors import ApiError
from moa_cli.server.models import Served
from moa_cli.server.schema import ChatRequest
from moa_cli.settings import Settings
from moa_cli.stops import StopMatcher
from moa_cli.structured import InvalidOutput
from moa_cli.tools import join_tool_calls
from moa_cli.types import CallInfo, CompletionRequest, Finish, Proposal, ToolCall, ToolCallDelta, TurnResult, Usage

_END = object()
_CLOSE_SECONDS = 5.0  # how long close() waits for a cancelled turn to close its streams


class Turn:
    def __init__(
        self,
        served: Served,
        request: ChatRequest,
        settings: Settings | None,
        pool: ProviderPool,
        *,
        turn_timeout: float | None = None,
        heartbeat: float | None = None,
        reasoning: bool = False,
        reuse: tuple[Proposal, ...] | None = None,
    ) -> None:
        self.served = served
        self.request = request
        self.settings = settings
        self.pool = pool
        self.turn_timeout = turn_timeout
        self.heartbeat = heartbeat
        self.reasoning = reasoning
        self.error: ApiError | None = None
        self.result: TurnResult | None = None
        self.finish_reason = "stop"
        self.started = time.perf_counter()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._matcher = StopMatcher(request.stop)
        self._task: asyncio.Task[TurnResult] | None = None
        self._ended_by: str | None = None  # "shutdown", "stop"
        self._last_put = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._calls: dict[CallInfo, dict[str, Any]] = {}  # each call as the events told it
        self._layer = (1, 0, 0)  # (layer, done, total) for the heartbeat comment
        # A retry's proposals, kept by its failed try (retries.py): the references that failed
        # in it run again, then the aggregator; those that answered are not paid for twice.
        self.reuse = reuse
        self._proposals: dict[CallInfo, Proposal] = {}  # each reference's outcome, for a retry
        self._aggregating = bool(reuse)  # the references' layers are done (a retry's: in its first try)
        self.upstream_calls = 0
        for proposal, call in zip(reuse or (), self._reused_calls(), strict=True):
            entry = self._blank(call)
            entry.update(
                status="ok" if proposal.text is not None else "failed", seconds=round(proposal.seconds, 3),
                usage=proposal.usage.to_dict() if proposal.usage and proposal.usage.known else None,
                finish_reason=proposal.finish_reason, error_kind=proposal.error_kind, http_status=proposal.status,
                error=proposal.error, reused=True,
            )  # fmt: skip
            self._calls[call] = entry
            self._proposals[call] = proposal

    def _reused_calls(self) -> list[CallInfo]:
        """The kept proposals' calls, indexed within their layer as the engine does."""
        calls: list[CallInfo] = []
        for proposal in self.reuse or ():
            index = sum(c.layer == proposal.layer for c in calls)
            calls.append(CallInfo(proposal.model, proposal.layer, index))
        return calls

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(lambda _: self._queue.put_nowait(_END))
        if self.heartbeat:
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat / 2, self._beat)

    async def _run(self) -> TurnResult:
        async with asyncio.timeout(self.turn_timeout):
            if self.served.spec is not None:
                return await self._passthrough(self.served.spec)
            return await self._moa()

    async def _moa(self) -> TurnResult:
        """Through `MoA.arun`, the one place every front end's turns pass (log, max_cost)."""
        settings = self.settings
        assert settings is not None
        r = self.request
        wanted = {
            "temperature": r.temperature,
            "top_p": r.top_p,
            "presence_penalty": r.presence_penalty,
            "frequency_penalty": r.frequency_penalty,
            "max_tokens": r.max_tokens,
            "seed": r.seed,
        }
        aggregator = {k: v for k, v in wanted.items() if v is not None}
        # The server's one pool, shared by every request: the engine's per-provider caps hold.
        moa = MoA(settings=settings, router=self.pool)
        moa.source = "serve"
        if r.agentic:  # tools, a JSON format, tool calls in the history: structured.py
            agent: dict[str, Any] = {
                "tools": r.tools,
                "tool_choice": r.tool_choice,
                "response_format": r.response_format,
            }
            if self.reuse:
                return await moa.aaggregate(
                    list(r.conversation), self.reuse, on_event=self._on_event,  # type: ignore[arg-type]
                    aggregator_sampling=aggregator, rerun_failed=True, watch_references=False, **agent,
                )  # fmt: skip
            return await moa.arun(
                list(r.conversation),  # type: ignore[arg-type]
                on_event=self._on_event,
                aggregator_sampling=aggregator,
                watch_references=False,
                **agent,
            )
        if self.reuse:
            return await moa.aaggregate(
                r.messages, self.reuse, on_event=self._on_event, aggregator_sampling=aggregator,
                rerun_failed=True, watch_references=False,
            )  # fmt: skip
        # Only the answer streams to the client: no one reads the references' pieces (even
        # --progress reasoning says only when each starts and ends), so they come whole.
        return await moa.arun(
            r.messages, on_event=self._on_event, aggregator_sampling=aggregator, watch_references=False
        )

    async def _passthrough(self, spec: str) -> TurnResult:
        """One direct call to a provider model, reported like an aggregator's."""
        s = self.pool.settings
        r = self.request
        provider, model = self.pool.resolve(spec)
        if r.with_tools and getattr(provider, "kind", None) == "local":
            raise ConfigError(f"{spec} is a local (llama.cpp) model: moa's local models do not call tools")
        max_tokens = r.max_tokens or s.max_tokens
        request = CompletionRequest(
            model=model,
            messages=build_messages(r.messages, s.system),
            temperature=s.temperature if r.temperature is None else r.temperature,
            max_tokens=max_tokens,
            seed=s.seed if r.seed is None else r.seed,
            top_p=r.top_p,
            presence_penalty=r.presence_penalty,
            frequency_penalty=r.frequency_penalty,
        )
        if r.agentic:  # passed on as sent: a passthrough model is called as itself, unchecked
            system = (
                [{"role": "system", "content": s.system}] if s.system and r.conversation[0]["role"] != "system" else []
            )
            request = replace(
                request, wire_messages=(*system, *r.conversation), tools=r.tools, tool_choice=r.tool_choice,
                response_format=r.response_format,
            )  # fmt: skip
        call = CallInfo(spec, 1, 0, "aggregator")
        self._on_event(CallStarted(call, request.sampling()))
        started = time.perf_counter()
        parts: list[str] = []
        tool_pieces: list[ToolCallDelta] = []
        usage: Usage | None = None
        finish: str | None = None
        stream = provider.stream(request)
        try:
            async for item in stream:
                if isinstance(item, Usage):
                    usage = item
                elif isinstance(item, Finish):
                    finish = item.reason
                elif isinstance(item, ToolCallDelta):
                    tool_pieces.append(item)
                else:
                    parts.append(item)
                    if len(parts) > piece_limit(max_tokens):
                        raise ProviderError(spec, "the stream ran far past max_tokens: cut", kind="bad_response")
                    self._on_event(AnswerDelta(call, item))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        text = "".join(parts)
        tool_calls = join_tool_calls(tool_pieces)
        if not text.strip() and not tool_calls:
            raise EmptyAnswer(spec, "returned an empty answer")
        seconds = time.perf_counter() - started
        self._on_event(CallFinished(call, text, seconds, usage, finish))
        return TurnResult(
            answer=text, aggregator=spec, usage=usage or Usage(), seconds=seconds, aggregator_usage=usage,
            finish_reason=finish, max_tokens=max_tokens, tool_calls=tool_calls,
        )  # fmt: skip

    def _put(self, item: Any) -> None:
        self._last_put = time.monotonic()
        self._queue.put_nowait(item)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, AnswerDelta):
            self._put(("answer", event.text))
            return
        call = getattr(event, "call", None)
        if call is None:
            return
        if isinstance(event, CallStarted):
            self.upstream_calls += 1
            self._aggregating |= call.is_aggregator
            self._calls[call] = self._blank(call)
            layer, done, total = self._layer
            self._layer = (call.layer, 0, 1) if call.layer != layer else (layer, done, total + 1)
            if self.reasoning and call.is_aggregator and self.served.spec is None:
                self._put(("reasoning", f"{call.model} is writing the answer.\n\n"))
        elif isinstance(event, CallFinished):
            self._calls.setdefault(call, self._blank(call)).update(
                status="ok", seconds=round(event.seconds, 3), finish_reason=event.finish_reason,
                usage=event.usage.to_dict() if event.usage and event.usage.known else None,
            )  # fmt: skip
            if not call.is_aggregator:
                self._proposals[call] = Proposal(
                    call.model, call.layer, text=event.text, seconds=event.seconds, usage=event.usage,
                    finish_reason=event.finish_reason,
                )  # fmt: skip
            self._layer_done(call)
            if self.reasoning and not call.is_aggregator:
                self._put(("reasoning", f"{call.model} (layer {call.layer}) answered in {event.seconds:.1f}s.\n"))
        elif isinstance(event, CallFailed):
            # A call cut by the quorum or a deadline while it waited for a slot never started.
            self._calls.setdefault(call, self._blank(call)).update(status="failed", seconds=round(event.seconds, 3), error_kind=event.kind,
                                     http_status=event.status, error=event.error)  # fmt: skip
            if not call.is_aggregator:
                self._proposals[call] = Proposal(
                    call.model, call.layer, error=event.error, seconds=event.seconds, timed_out=event.timed_out,
                    error_kind=event.kind, status=event.status,
                )  # fmt: skip
            self._layer_done(call)
            if self.reasoning and not call.is_aggregator:
                word = KIND_WORDS.get(event.kind, "failed")
                self._put(("reasoning", f"{call.model} (layer {call.layer}) {word}: left out.\n"))

    @staticmethod
    def _blank(call: CallInfo) -> dict[str, Any]:
        return {
            "model": call.model, "layer": call.layer, "role": call.role, "status": "running", "seconds": None,
            "usage": None, "finish_reason": None, "error_kind": None, "http_status": None, "error": None,
        }  # fmt: skip

    def _layer_done(self, call: CallInfo) -> None:
        layer, done, total = self._layer
        if call.layer == layer:
            self._layer = (layer, done + 1, total)

    def _beat(self) -> None:
        assert self.heartbeat
        if time.monotonic() - self._last_put >= self.heartbeat / 2:
            layer, done, total = self._layer
            rounds = self.settings.rounds if self.settings is not None else 0
            if self.served.spec is not None:
                text = f"moa waiting for {self.served.spec}"
            elif layer > rounds:
                text = "moa aggregator"
            else:
                text = f"moa layer {layer} {done}/{len(self.settings.references) if self.settings else total}"
            self._put(("heartbeat", text))
        self._timer = asyncio.get_running_loop().call_later(self.heartbeat / 2, self._beat)

    # ------------------------------------------------------------------ reading

    async def pieces(self) -> AsyncIterator[tuple[str, str]]:
        """("text", ...) as the aggregator writes, plus ("reasoning"|"heartbeat", ...)."""
        while (item := await self._queue.get()) is not _END:
            kind, value = item
            if kind != "answer":
                yield kind, value
                continue
            text, stopped = self._matcher.feed(value)
            if text:
                yield "text", text
            if stopped:
                self._stop_here()
                return
        tail = self._matcher.flush()
        self._settle()
        if tail and self.error is None:
            yield "text", tail

    async def collect(self) -> str:
        return "".join([text async for kind, text in self.pieces() if kind == "text"])

    def _stop_here(self) -> None:
        """A stop sequence: the answer ends here; the aggregator's stream is closed."""
        self._ended_by = "stop"
        self.finish_reason = "stop"
        if self._task is not None:
            self._task.cancel()

    def end_by_shutdown(self) -> None:
        if self._task is not None and not self._task.done():
            self._ended_by = "shutdown"
            self._task.cancel()

    def _settle(self) -> None:
        task = self._task
        assert task is not None and task.done()
        if task.cancelled():
            self.error = (
                errors.ended_by_shutdown() if self._ended_by == "shutdown" else errors.internal("turn cancelled")
            )
            return
        exc = task.exception()
        if exc is None:
            self.result = task.result()
            self.finish_reason = self.result.finish_reason or "stop"
        elif isinstance(exc, InvalidOutput):
            self.error = errors.invalid_output(str(exc), exc.what)
        elif isinstance(exc, TurnFailed):
            self.error = errors.from_turn_failed(exc)
        elif isinstance(exc, ProviderError):
            self.error = errors.from_provider_error(exc)
        elif isinstance(exc, ConfigError):  # refused before it started (--max-cost)
            self.error = ApiError(400, str(exc), code="turn_refused")
        elif isinstance(exc, TimeoutError):
            self.error = errors.turn_timed_out(self.turn_timeout or 0)
        else:
            logger.error("turn failed unexpectedly: {}: {}", type(exc).__name__, exc)
            self.error = errors.internal()
        if self.error is not None:
            logger.info("{} turn failed: {} ({})", self.served.id, self.error.message, self.error.status)

    async def close(self) -> None:
        """Cancel the turn if it still runs and wait (briefly) until its streams are closed."""
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task}, timeout=_CLOSE_SECONDS)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit

    # ------------------------------------------------------------------ reporting

    def kept_proposals(self) -> tuple[Proposal, ...] | None:
        """What a retry may reuse: every reference's outcome, once the aggregator step began
        (its layers are done) and the turn did not end with an answer; else None."""
        if self.result is not None or not self._aggregating or self.served.spec is not None:
            return None
        kept = tuple(self._proposals[c] for c in sorted(self._proposals, key=lambda c: (c.layer, c.index)))
        return kept if any(p.text is not None for p in kept) else None

    def tool_calls(self) -> list[ToolCall]:
        """The calls the answer made (tools.py), once the turn is done."""
        return list(self.result.tool_calls) if self.result is not None else []

    def usage(self) -> dict[str, int | None] | None:
        """The turn's total usage as the providers reported it; None when any call did not say."""
        if self.result is None or not self.result.usage.known:
            return None
        return self.result.usage.to_dict()

    def headers(self) -> dict[str, str]:
        """Response headers that summarise the turn (a whole response only: a stream's headers
        go out before the turn is done, and its last chunk's `moa` says the same)."""
        if self.result is None or self.served.spec is not None:
            return {}
        references = self.result.references_dict()
        headers = {"X-MoA-References": f"{references['answered']}/{references['asked']}"}
        if references["degraded"]:
            summary = references["summary"].encode("ascii", "replace").decode("ascii")
            headers["X-MoA-Degraded"] = " ".join(summary.split())
        if self.result.fitted:
            headers["X-MoA-Fitted"] = str(len(self.result.fitted))
        return headers

    def moa(self) -> dict[str, Any]:
        calls = list(self._calls.values())
        for call in calls:
            if call["status"] == "running":
                call["status"] = "stopped" if self._ended_by == "stop" else "cancelled"
        info: dict[str, Any] = {
            "proposals": [{k: v for k, v in c.items() if k != "role"} for c in calls if c["role"] == "proposer"],
            "aggregator": next(
                ({k: v for k, v in c.items() if k != "role"} for c in calls if c["role"] == "aggregator"), None
            ),
            "usage_complete": self.usage() is not None,
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        if self.result is not None and self.served.spec is None:
            # "3 of 4 references (qwen timed out)", and what was shortened to fit a context window
            info["references"] = self.result.references_dict()
            info["fitted"] = [dict(f) for f in self.result.fitted]
        s = self.settings
        if s is not None:
            info["lineup"] = {
                "name": self.served.id,
                "references": list(s.references),
                "aggregator": s.aggregator,
                "rounds": s.rounds,
            }
        else:
            info["passthrough"] = self.served.spec
        return info
