"""Recording a turn: its events become a `TurnRecord`, priced, and handed to the log's writer.

`MoA.arun` is the one place every front end passes through, so it is the one place a turn
is recorded:

    recording = await start(settings, messages, conversation_id=..., source="ask")
    on_event = recording.wrap(on_event)          # per event: a dict update
    ... run the turn ...
    recording.end(result)  /  recording.end(error=exc)

`start` refuses a turn over `max_cost` (ConfigError) and loads the prices (from a cache, or
on a thread: never a network call). `end` prices every call, sets the turn's cost on the
`TurnResult`, and puts the record on the writer thread's queue (store.TurnWriter): the
event loop never waits for SQLite. Nothing secret is recorded: texts and errors go through
`redact`, and no base URL or key is ever part of a record.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa_cli.diagnostics import logger
from moa_cli.errors import ConfigError, TurnFailed
from moa_cli.events import CallFailed, CallFinished, CallFirstToken, CallStarted, ContextFitted, Event
from moa_cli.pricing import Estimate, PriceBook, load_book, total, worst_case
from moa_cli.providers.registry import split_spec
from moa_cli.redact import redact, redact_value
from moa_cli.settings import DEFAULTS, SPECS, Settings, coerce
from moa_cli.store import (
    EXCHANGE_KEY,
    CallRecord,
    Store,
    StoreError,
    TurnRecord,
    answered_turns,
    db_path,
    flush_all,
    logging_off_marker,
    new_conversation_id,
    writer_for,
)
from moa_cli.types import CallInfo, Message, TurnResult

EventSink = Callable[[Event], None]
BOOK_TTL = 300.0  # seconds a loaded price book is reused (prices change rarely)

_books: dict[tuple[Any, ...], tuple[float, PriceBook]] = {}
_books_lock = threading.Lock()


def logging_enabled(settings: Settings) -> bool:
    """--log/--no-log, MOA_LOG or `log = ...` in the config win; else `moa logs off|on` decides."""
    if settings.paths is None or not settings.log:
        return False
    if settings.sources.get("log", "default") != "default":
        return True
    return not logging_off_marker(settings.paths.data_dir).exists()


def lineup_of(settings: Settings) -> dict[str, Any]:
    return {"references": list(settings.references), "aggregator": settings.aggregator, "rounds": settings.rounds}


def settings_of(settings: Settings) -> dict[str, Any]:
    """The line-up settings a turn ran with (what `-c` reuses), plus its limits. No secrets."""
    values: dict[str, Any] = {}
    for name, spec in SPECS.items():
        if spec.recorded:
            value = getattr(settings, name)
            if name == "aggregator_prompt" and value == DEFAULTS[name]:
                continue  # the built-in prompt: not worth a copy per turn
            values[name] = list(value) if isinstance(value, tuple) else value
    return values


def splitter(settings: Settings) -> Callable[[str], tuple[str, str]]:
    def split(spec: str) -> tuple[str, str]:
        return split_spec(spec, settings.providers, settings.default_provider)

    return split


# ---------------------------------------------------------------------------- prices


def load_prices(settings: Settings) -> PriceBook:
    store = None
    path = db_path(settings.paths.data_dir) if settings.paths is not None else None
    try:
        if path is not None and path.exists():
            store = Store(path)
        return load_book(settings, store)
    except StoreError as exc:
        logger.warning("cannot read prices from the log: {}", exc)
        return load_book(settings, None)
    finally:
        if store is not None:
            store.close()


def _book_key(settings: Settings) -> tuple[Any, ...]:
    config = settings.paths.config_file if settings.paths is not None else None
    try:
        mtime = Path(config).stat().st_mtime_ns if config is not None else None
    except OSError:
        mtime = None
    data = settings.paths.data_dir if settings.paths is not None else None
    return (str(config), mtime, str(data), tuple(sorted(settings.providers)))


def forget_prices() -> None:
    """Drop cached price books (after `moa models --refresh-prices`, in tests)."""
    with _books_lock:
        _books.clear()


async def price_book(settings: Settings) -> PriceBook:
    """The prices for `settings`: cached, else read on a thread (the config file and the log's catalogue)."""
    key = _book_key(settings)
    now = time.monotonic()
    with _books_lock:
        cached = _books.get(key)
    if cached is not None and now - cached[0] < BOOK_TTL:
        return cached[1]
    book = await asyncio.to_thread(load_prices, settings)
    with _books_lock:
        _books[key] = (now, book)
    return book


def estimate(
    settings: Settings,
    messages: Sequence[Message],
    book: PriceBook,
    aggregator_max_tokens: int | None = None,
    earlier_answers: int = 0,
) -> Estimate:
    """The worst case of a turn with these settings over `messages` (see pricing.worst_case)."""
    return worst_case(
        messages,  # type: ignore[arg-type]  # Message is a Mapping[str, str] in practice
        references=settings.references,
        aggregator=settings.aggregator,
        rounds=settings.rounds,
        max_tokens=settings.max_tokens,
        reference_max_tokens=settings.reference_max_tokens,
        aggregator_prompt=settings.aggregator_prompt,
        split=splitter(settings),
        book=book,
        aggregator_max_tokens=aggregator_max_tokens,
        earlier_answers=earlier_answers,
    )


def check_max_cost(
    settings: Settings, messages: Sequence[Message], book: PriceBook, aggregator_max_tokens: int | None = None
) -> None:
    """ConfigError (exit 2) when the turn's worst case may exceed `max_cost`."""
    if settings.max_cost is None:
        return
    worst = estimate(settings, messages, book, aggregator_max_tokens)
    if worst.cost_usd is None:
        raise ConfigError(
            f"--max-cost {settings.max_cost:g}: cannot check this turn, its worst case is {worst.text()}; "
            'set a price with [pricing."provider:model"] in the config file or run moa models --refresh-prices'
        )
    if worst.cost_usd > settings.max_cost:
        raise ConfigError(f"--max-cost {settings.max_cost:g}: this turn could cost {worst.text()}; not started")


# ---------------------------------------------------------------------------- a turn


async def start(
    settings: Settings,
    messages: Sequence[Message],
    *,
    conversation_id: str | None = None,
    source: str = "api",
    aggregator_max_tokens: int | None = None,
) -> Recording:
    """Begin recording a turn (and refuse it if it may cost more than max_cost)."""
    book = await price_book(settings)
    check_max_cost(settings, messages, book, aggregator_max_tokens)
    return Recording(settings, messages, book, conversation_id=conversation_id, source=source)


class Recording:
    """Collects one turn's calls from its events; `end` prices them and submits the record."""

    def __init__(
        self,
        settings: Settings,
        messages: Sequence[Message],
        book: PriceBook,
        *,
        conversation_id: str | None = None,
        source: str = "api",
    ) -> None:
        self.settings = settings
        self.messages = messages
        self.book = book
        self.conversation_id = conversation_id or new_conversation_id()
        self.source = source
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self._split = splitter(settings)
        self.calls: dict[CallInfo, CallRecord] = {}
        self.reported: dict[CallInfo, float | None] = {}
        self.first_token: float | None = None
        self.record: TurnRecord | None = None
        self.written: Future[int] | None = None  # the writer's future: the turn's id

    def wrap(self, inner: EventSink | None) -> EventSink:
        def sink(event: Event) -> None:
            self.handle(event)
            if inner is not None:
                inner(event)

        return sink

    def _call(self, call: CallInfo) -> CallRecord:
        record = self.calls.get(call)
        if record is None:
            provider, model = self._split(call.model)
            record = CallRecord(call.layer, call.index, call.role, call.model, provider, model)
            self.calls[call] = record
        return record

    def handle(self, event: Event) -> None:
        if isinstance(event, CallStarted):
            record = self._call(event.call)
            if record.started is None:  # sent again after a refusal as too long: it started at its first try
                record.started = time.perf_counter() - self._t0
            # What the request set, as sent (a call never sent: {}); what fitting shortened,
            # told just before the call started, is kept beside it.
            fitted = {"fitted": record.settings["fitted"]} if "fitted" in record.settings else {}
            record.settings = {**event.sent, **fitted}
        elif isinstance(event, CallFirstToken):
            record = self._call(event.call)
            record.first_token = event.seconds
            if event.call.is_aggregator and record.started is not None:
                self.first_token = record.started + event.seconds
        elif isinstance(event, CallFinished):
            record = self._call(event.call)
            record.text, record.duration, record.finish_reason = event.text, event.seconds, event.finish_reason
            record.tool_calls = [c.to_dict() for c in event.tool_calls] or None
            if event.usage is not None and event.usage.known:
                record.prompt_tokens = event.usage.prompt_tokens
                record.completion_tokens = event.usage.completion_tokens
                record.total_tokens = event.usage.total_tokens
            self.reported[event.call] = event.usage.cost if event.usage is not None else None
        elif isinstance(event, ContextFitted):  # the log keeps what was shortened, per call
            record = self._call(event.call)
            record.settings = {**record.settings, "fitted": dict(event.details)}  # max_tokens: CallStarted's
        elif isinstance(event, CallFailed):
            record = self._call(event.call)
            record.error, record.error_kind, record.status = event.error, event.kind, event.status
            record.duration = event.seconds
            if record.started is None:  # cut at a layer deadline while waiting for a slot
                record.started = max(0.0, time.perf_counter() - self._t0 - event.seconds)

    def _settings_record(self) -> dict[str, Any]:
        values = settings_of(self.settings)
        if self.settings.multi_turn:  # the history was sent: its length says which exchange this is
            values[EXCHANGE_KEY] = sum(1 for m in self.messages if m["role"] == "user")
        return values

    def end(self, result: TurnResult | None = None, *, error: BaseException | None = None) -> TurnRecord:
        """Price the calls, set the cost on `result`, and hand the record to the writer."""
        calls = sorted(self.calls.items(), key=lambda item: (item[0].layer, item[0].index))
        for info, call in calls:
            self.book.price_call(call, self.reported.get(info))
            call.text = redact(call.text) if call.text else call.text
            call.error = redact(call.error) if call.error else call.error
            call.settings = redact_value(call.settings)
            call.tool_calls = redact_value(call.tool_calls)
        costs = total([c.cost_usd for _, c in calls])
        if error is None and result is not None:
            status, message, kind = "ok", None, None
            result.cost_usd, result.priced_usd, result.unpriced_calls = costs.cost_usd, costs.priced_usd, costs.unpriced
        elif isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
            status, message, kind = "cancelled", "cancelled", "cancelled"
        else:
            status, message = "failed", str(error) if error is not None else "failed"
            kind = error.kind if isinstance(error, TurnFailed) else getattr(error, "kind", "other")
        usage = result.usage if result is not None and result.usage.known else None
        system = next((m["content"] for m in self.messages if m["role"] == "system"), None)
        prompt = self.messages[-1]["content"] if self.messages else ""
        record = TurnRecord(
            conversation_id=self.conversation_id,
            prompt=redact(prompt),
            status=status,
            started_at=self.started_at,
            source=self.source,
            system=redact(system) if system else None,
            answer=redact(result.answer) if result is not None else None,
            tool_calls=redact_value([c.to_dict() for c in result.tool_calls]) if result and result.tool_calls else None,
            error=redact(message) if message else None,
            error_kind=kind,
            lineup=redact_value(lineup_of(self.settings)),
            settings=redact_value(self._settings_record()),  # the system prompt is in there
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            total_tokens=usage.total_tokens if usage else None,
            cost_usd=costs.cost_usd,
            priced_usd=costs.priced_usd,
            unpriced_calls=costs.unpriced,
            first_token=self.first_token,
            duration=time.perf_counter() - self._t0,
            calls=[c for _, c in calls],
        )
        self.record = record
        if logging_enabled(self.settings):
            self.written = writer_for(db_path(self.settings.paths.data_dir)).submit(record)
            self.written.add_done_callback(_warn_if_failed)
        return record


def _warn_if_failed(future: Future[int]) -> None:
    exc = future.exception()
    if exc is not None:
        logger.warning("the turn was not logged: {}", exc)


# ---------------------------------------------------------------------------- continuing


@dataclass(slots=True)
class Resumed:
    """A logged conversation to continue: its id, the settings to continue with, its turns."""

    conversation_id: str
    settings: Settings
    turns: list[TurnRecord]  # the answered ones, in order

    def history(self) -> list[Message]:
        """What the models saw: the system prompt, then each prompt and its final answer."""
        messages: list[Message] = []
        if self.settings.system:
            messages.append({"role": "system", "content": self.settings.system})
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.prompt})
            messages.append({"role": "assistant", "content": turn.answer or ""})
        return messages


def resume(settings: Settings, ref: str | None = None, *, with_calls: bool = False) -> Resumed:
    """The conversation `ref` (an id or a unique prefix; None: the latest) to continue.

    It keeps its line-up and sampling settings, and its system prompt, unless flags say
    otherwise: a flag for a setting (or --lineup) wins over what the conversation used.
    ConfigError (exit 2) when there is nothing to continue. `with_calls`: the turns carry
    their calls (the REPL's `/save` writes every reference's answer).
    """
    if settings.paths is None:
        raise ConfigError("no log to continue a conversation from")
    path = db_path(settings.paths.data_dir)
    if not path.exists():
        raise ConfigError(f"no conversation to continue: nothing logged yet ({path})")
    try:
        flush_all()
        with Store(path) as store:
            conversation_id = store.latest_conversation_id() if ref is None else store.resolve_conversation(ref)
            if conversation_id is None:
                raise ConfigError("no conversation to continue: nothing logged yet")
            conversation = store.conversation(conversation_id, with_calls=with_calls)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    given = set(settings.overrides)
    stored = conversation.turns[-1].settings if conversation.turns else {}
    changes: dict[str, Any] = {}
    if "lineup" not in given:
        for name, value in stored.items():
            if name in SPECS and (SPECS[name].lineup or SPECS[name].decides) and name not in given:
                try:
                    changes[name] = coerce(name, value)
                except ValueError:
                    continue  # a value this version no longer accepts: keep the current one
    if changes:
        settings = settings.with_changes(**changes)
    return Resumed(conversation_id, settings, answered_turns(conversation.turns))
