"""What one item produced (`Outcome`), and who of the line-up took part in it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Outcome:
    """What one item produced: every turn's answer, or the error that stopped it."""

    id: str
    ok: bool
    answers: list[str | None]  # one per turn; None for a turn not answered
    results: list[dict[str, Any]] = field(default_factory=list)  # TurnResult.to_dict() per answered turn
    error: str | None = None
    error_kind: str | None = None
    status: int | None = None
    tokens: int | None = None  # None when any call did not report usage
    cost: float | None = None  # USD; None unless every call was priced (pricing.py)
    seconds: float = 0.0
    answer_id: str = ""
    tstamp: float = 0.0
    # Who took part: each member of the line-up that answered, and what went otherwise
    # ("alpha failed", "judge: select fell back"); computed from `results` (members()).
    answered_by: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.results and not (self.answered_by or self.degraded):
            self.answered_by, self.degraded = members(self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ok": self.ok,
            "answers": self.answers,
            "results": self.results,
            "error": self.error,
            "error_kind": self.error_kind,
            "status": self.status,
            "tokens": self.tokens,
            "cost": self.cost,
            "seconds": round(self.seconds, 3),
            "answer_id": self.answer_id,
            "tstamp": self.tstamp,
            "answered_by": self.answered_by,
            "degraded": self.degraded,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(
            id=str(data["id"]),
            ok=bool(data["ok"]),
            answers=list(data["answers"]),
            results=list(data.get("results") or []),
            error=data.get("error"),
            error_kind=data.get("error_kind"),
            status=data.get("status"),
            tokens=data.get("tokens"),
            cost=data.get("cost"),
            seconds=float(data.get("seconds") or 0.0),
            answer_id=str(data.get("answer_id") or ""),
            tstamp=float(data.get("tstamp") or 0.0),
            answered_by=[str(m) for m in data.get("answered_by") or []],
            degraded=[str(d) for d in data.get("degraded") or []],
        )


FAILED, FELL_BACK = "failed", "fell back"


def members(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Who answered in `results` (TurnResult.to_dict() per turn), and the degradations.

    A degradation is a member of the line-up that did not take part as configured, as
    "MODEL failed" (a reference call that failed or timed out, in any layer or turn; one cut
    by --quorum is the quorum at work, not a failure) or "MODEL: select fell back" (the
    aggregator named no answer and synthesized one). Each is listed once per item.
    """
    answered: dict[str, None] = {}
    degraded: dict[str, None] = {}
    for result in results:
        for proposal in result.get("proposals") or []:
            model = str(proposal.get("model"))
            if proposal.get("text") is not None:
                answered[model] = None
            elif proposal.get("error_kind") != "quorum":
                degraded[f"{model} {FAILED}"] = None
        aggregator = result.get("aggregator")
        if aggregator is not None and result.get("answer") is not None:
            answered[str(aggregator)] = None
        aggregation = result.get("aggregation") or {}
        if aggregation.get("warnings") and aggregation.get("selected") is None:
            degraded[f"{aggregator}: {aggregation.get('strategy', 'aggregation')} {FELL_BACK}"] = None
    return list(answered), list(degraded)


def degraded_by_member(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """How many items each degradation touched ("alpha failed" -> 11), most first."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        for what in outcome.degraded:
            counts[what] = counts.get(what, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
