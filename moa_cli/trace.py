"""The timeline of one turn, from its stored calls: what `moa trace` and `/trace` draw.

    layer 1      ref-a   ──────┃━━━━━━━━━━        2.1s  212 tok  $0.0004
                 ref-b   ────┃━━━━━━━━━━━━━━━━━━  3.9s  301 tok  $0.0011   <- held the layer up
                 ref-c   ──────────✗              1.2s  rate limited
    aggregator   judge                ──┃━━━━━━━  1.8s  180 tok  $0.0021

One bar per call on a shared time axis (seconds from the turn's start), grouped by layer;
the first token, a failure (with its kind) and a cut at the layer deadline are marked.
This module is plain data (stdlib only); `render/trace.py` draws it with rich.
"""

from __future__ import annotations

from dataclasses import dataclass

from moa_cli.errors import KIND_WORDS
from moa_cli.pricing import Total, total
from moa_cli.store import CallRecord, TurnRecord


@dataclass(frozen=True, slots=True)
class Bar:
    """One call. Times are seconds from the turn's start."""

    model: str
    layer: int
    slot: int
    aggregator: bool
    start: float
    end: float
    first_token: float | None  # when its first token arrived, if it did
    state: str  # "ok", "failed", "deadline" (cut at the layer deadline), "quorum" (cut by the quorum), "length" (cut at max_tokens)
    kind: str | None  # the failure's kind
    error: str | None
    tokens: int | None  # completion tokens, when the provider reported them
    cost_usd: float | None
    price_source: str | None

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def what(self) -> str:
        """How the call ended, in words: "done", "cut at the deadline", "rate limited", ..."""
        if self.state == "ok":
            return "done"
        if self.state == "length":
            return "cut at max_tokens"
        if self.state == "deadline":
            return "cut at the deadline"
        if self.state == "quorum":
            return "cut by the quorum"
        return KIND_WORDS.get(self.kind or "other", "failed")


@dataclass(frozen=True, slots=True)
class Lane:
    """A layer of references, or the aggregator."""

    title: str
    bars: tuple[Bar, ...]
    held_up_by: Bar | None  # the call that ended last: the one the layer waited for


@dataclass(frozen=True, slots=True)
class Timeline:
    turn_id: int | None
    conversation_id: str
    prompt: str
    status: str
    error: str | None
    seconds: float  # the axis: the turn's duration (or the last call's end)
    lanes: tuple[Lane, ...]
    cost: Total
    first_token: float | None

    @property
    def bars(self) -> list[Bar]:
        return [bar for lane in self.lanes for bar in lane.bars]

    @property
    def priciest(self) -> Bar | None:
        priced = [b for b in self.bars if b.cost_usd]
        return max(priced, key=lambda b: b.cost_usd or 0.0) if priced else None


def _bar(call: CallRecord) -> Bar:
    start = call.started or 0.0
    end = start + (call.duration or 0.0)
    first = start + call.first_token if call.first_token is not None else None
    if call.error is not None:
        state = call.error_kind if call.error_kind in ("deadline", "quorum") else "failed"
    elif call.finish_reason == "length":
        state = "length"
    else:
        state = "ok"
    return Bar(
        model=call.spec,
        layer=call.layer,
        slot=call.slot,
        aggregator=call.role == "aggregator",
        start=start,
        end=end,
        first_token=first,
        state=state,
        kind=call.error_kind,
        error=call.error,
        tokens=call.completion_tokens,
        cost_usd=call.cost_usd,
        price_source=call.price_source,
    )


def timeline(turn: TurnRecord) -> Timeline:
    """The picture's model of a stored turn (its `calls` loaded)."""
    bars = sorted((_bar(c) for c in turn.calls), key=lambda b: (b.aggregator, b.layer, b.slot))
    lanes: list[Lane] = []
    for key in dict.fromkeys((b.aggregator, b.layer) for b in bars):
        members = tuple(b for b in bars if (b.aggregator, b.layer) == key)
        title = "aggregator" if key[0] else f"layer {key[1]}"
        held = max(members, key=lambda b: b.end) if len(members) > 1 and not key[0] else None
        lanes.append(Lane(title, members, held))
    end = max([turn.duration or 0.0, *(b.end for b in bars)])
    return Timeline(
        turn_id=turn.id,
        conversation_id=turn.conversation_id,
        prompt=turn.prompt,
        status=turn.status,
        error=turn.error,
        seconds=end,
        lanes=tuple(lanes),
        cost=total([c.cost_usd for c in turn.calls]),
        first_token=turn.first_token,
    )
