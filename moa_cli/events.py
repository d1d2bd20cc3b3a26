"""Events the engine emits while a turn runs. Front ends render them; the engine never does.

Each event is a small frozen dataclass with a `type` tag; `Event` is their union.
The tags are public API: renaming one breaks front ends and users' callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from moa_cli.types import CallInfo, ToolCall, TurnResult, Usage


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call was sent. `sent` is what its request set besides the model and the messages,
    as sent (`CompletionRequest.sampling()`): temperature, max_tokens, seed, penalties."""

    call: CallInfo
    sent: dict[str, Any] = field(default_factory=dict)
    type: Literal["call_started"] = "call_started"


@dataclass(frozen=True, slots=True)
class CallFirstToken:
    call: CallInfo
    seconds: float
    type: Literal["call_first_token"] = "call_first_token"


@dataclass(frozen=True, slots=True)
class CallRetrying:
    """The provider's client got an error it will retry (`status`, e.g. 429 or 503): the call
    waits `wait` seconds (the server's Retry-After; None when the client backs off on its own)."""

    call: CallInfo
    status: int
    wait: float | None
    attempt: int  # 1 for the first retry
    type: Literal["call_retrying"] = "call_retrying"


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of a reference model's answer (not shown to the user by default)."""

    call: CallInfo
    text: str
    type: Literal["call_delta"] = "call_delta"


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """A piece of the aggregator's answer: the text the user reads."""

    call: CallInfo
    text: str
    type: Literal["answer_delta"] = "answer_delta"


@dataclass(frozen=True, slots=True)
class CallFinished:
    """A call answered. `finish_reason` is "length" when max_tokens cut it, None if unknown;
    `tool_calls` are the calls an aggregator with tools asked for (as it wrote them, unchecked)."""

    call: CallInfo
    text: str
    seconds: float
    usage: Usage | None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    type: Literal["call_finished"] = "call_finished"


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call failed: `error` is the one-line reason, `kind` one of `errors.KINDS`,
    `status` the HTTP status when there was one. `timed_out`: kind is timeout or deadline."""

    call: CallInfo
    error: str
    seconds: float
    timed_out: bool = False
    kind: str = "other"
    status: int | None = None
    type: Literal["call_failed"] = "call_failed"


@dataclass(frozen=True, slots=True)
class TurnWarning:
    """Something the user should know about the turn that is not a failure (one line);
    also kept in `TurnResult.warnings`. Example: `select` fell back to synthesizing."""

    message: str
    type: Literal["turn_warning"] = "turn_warning"


@dataclass(frozen=True, slots=True)
class ContextFitted:
    """A call's prompt was shortened to fit its model's context window (fitting.py), before it
    was sent. `message` says what was done, in one line; `details` is its entry of
    `TurnResult.fitted` (window, where it came from, prompt tokens, estimated or not, steps)."""

    call: CallInfo
    message: str
    details: Mapping[str, Any]
    type: Literal["context_fitted"] = "context_fitted"


@dataclass(frozen=True, slots=True)
class TurnDone:
    result: TurnResult
    type: Literal["turn_done"] = "turn_done"


Event = (
    CallStarted
    | CallFirstToken
    | CallRetrying
    | CallDelta
    | AnswerDelta
    | CallFinished
    | CallFailed
    | ContextFitted
    | TurnWarning
    | TurnDone
)
