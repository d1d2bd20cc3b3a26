"""What the log holds, as plain records; its file names and ids. Stdlib only."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_cli.errors import MoaError

DB_NAME = "logs.db"


OFF_MARKER = "logs-off"  # `moa logs off` creates it in the data dir


BUSY_TIMEOUT_MS = 5000


TITLE_CHARS = 60


STATUSES = ("ok", "failed", "cancelled")


RANK_WINDOW = 5000  # a search ranks the newest this many matches


class StoreError(MoaError):
    """The log cannot be read or written (a corrupt file, an unknown id, a full disk)."""


@dataclass(slots=True)
class CallRecord:
    """One model call. Times are seconds: `started` from the turn's start, the others from the call's."""

    layer: int
    slot: int
    role: str  # "proposer" or "aggregator"
    spec: str  # as given to -r/-a ("ollama:llama3.2:1b")
    provider: str
    model: str  # the name sent to the provider
    settings: dict[str, Any] = field(default_factory=dict)  # what the request set, as sent (CallStarted.sent)
    text: str | None = None
    error: str | None = None
    error_kind: str | None = None
    status: int | None = None  # HTTP status of a failure
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an aggregator's, as OpenAI shapes them
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    price_input: float | None = None  # USD per million tokens
    price_output: float | None = None
    price_source: str | None = None  # "provider", "config", "catalogue together 2026-08-01", "local"
    cost_usd: float | None = None  # None: unknown, never 0 for "don't know"
    started: float | None = None
    first_token: float | None = None
    duration: float | None = None
    id: int | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


@dataclass(slots=True)
class TurnRecord:
    """One turn with its calls, as written at its end and as read back."""

    conversation_id: str
    prompt: str
    status: str  # ok, failed, cancelled
    started_at: float  # unix time
    source: str = "api"
    system: str | None = None
    answer: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # the answer's tool calls (an agent's turn), checked
    error: str | None = None
    error_kind: str | None = None
    lineup: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None  # every call priced, else None
    priced_usd: float = 0.0  # the calls that are priced ("at least")
    unpriced_calls: int = 0
    first_token: float | None = None  # seconds to the first token of the answer
    duration: float | None = None
    calls: list[CallRecord] = field(default_factory=list)
    id: int | None = None
    seq: int | None = None
    title: str | None = None  # the conversation's


@dataclass(slots=True)
class ConversationRecord:
    id: str
    title: str
    source: str
    created_at: float
    updated_at: float | None  # None: not known (the REPL's conversation, transcript.chat_conversation)
    lineup: dict[str, Any]
    turns: list[TurnRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """A published price: USD per million input and output tokens."""

    provider: str
    model: str
    input_per_m: float
    output_per_m: float
    source: str  # where it was fetched from
    fetched_at: float


@dataclass(frozen=True, slots=True)
class CostLine:
    key: str
    turns: int
    calls: int
    priced_usd: float
    unpriced_calls: int

    @property
    def cost_usd(self) -> float | None:
        return None if self.unpriced_calls else self.priced_usd


#: In a turn's stored settings: which exchange of the conversation it answered (1 = the first),
#: set when the history was sent (multi-turn). `/retry` answers the same exchange again.
EXCHANGE_KEY = "exchange"


def answered_turns(turns: Sequence[TurnRecord]) -> list[TurnRecord]:
    """The turns a conversation kept, in order: the answered ones, a later answer to the same
    exchange (`/retry`) in place of the earlier. What `-c` continues and a transcript's messages."""
    answered: list[TurnRecord] = []
    for turn in (t for t in turns if t.status == "ok" and t.answer is not None):
        exchange = turn.settings.get(EXCHANGE_KEY) if isinstance(turn.settings, dict) else None
        if isinstance(exchange, int):  # a re-run of an earlier exchange (/retry) replaces it
            answered = [t for t in answered if (t.settings or {}).get(EXCHANGE_KEY, 0) < exchange]
        answered.append(turn)
    return answered


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_conversation_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 characters that sort by time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def title_of(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def fts_query(text: str) -> str:
    """User text as an FTS5 query: every word must appear (each quoted: no query syntax)."""
    words = [w for w in text.replace('"', " ").split() if w.strip()]
    return " ".join(f'"{w}"' for w in words)


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_NAME


def logging_off_marker(data_dir: Path) -> Path:
    return Path(data_dir) / OFF_MARKER
