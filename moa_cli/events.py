"""Events the engine emits while a turn runs. Front ends render them; the engine never does.

Each event is a small frozen dataclass with a `type` tag; `Event` is their union.
The tags are public API: renaming one breaks front ends and users' callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from moa_cli.types import CallInfo, TurnResult, Usage


@dataclass(frozen=True, slots=True)
class CallStarted:
    call: CallInfo
    type: Literal["call_started"] = "call_started"


@dataclass(frozen=True, slots=True)
class CallFirstToken:
    call: CallInfo
    seconds: float
    type: Literal["call_first_token"] = "call_first_token"


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
    call: CallInfo
    text: str
    seconds: float
    usage: Usage | None
    type: Literal["call_finished"] = "call_finished"


@dataclass(frozen=True, slots=True)
class CallFailed:
    call: CallInfo
    error: str
    seconds: float
    timed_out: bool = False
    type: Literal["call_failed"] = "call_failed"


@dataclass(frozen=True, slots=True)
class TurnDone:
    result: TurnResult
    type: Literal["turn_done"] = "turn_done"


Event = Union[CallStarted, CallFirstToken, CallDelta, AnswerDelta, CallFinished, CallFailed, TurnDone]
