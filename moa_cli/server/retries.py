"""A retried request pays only for what failed: the proposals its failed try kept are reused.

A turn that fails after its references answered (the aggregator's 503, a timeout, a client
that went away) leaves its proposals here for --retry-window seconds. The same request again
(the same body, or the same `Idempotency-Key` header with the same conversation) runs again
only the references that failed in that try, then the aggregator over the whole: the answered
proposals are not paid for twice (`MoA.aaggregate(..., rerun_failed=True)`; references a quorum
cut are not redone, as the quorum was met).

In-process and bounded (least recently kept dropped past --retry-entries, each kept at most
the window): a retry that reaches another replica or worker runs the whole turn again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moa_cli.types import Proposal

HEADER = "idempotency-key"


@dataclass(frozen=True, slots=True)
class Kept:
    fingerprint: str
    proposals: tuple[Proposal, ...]
    until: float


def request_key(headers: Mapping[str, str], body: bytes) -> str:
    """Which earlier try this request retries: its Idempotency-Key, else its body; per API key."""
    caller = hashlib.sha256(headers.get("authorization", "").encode()).hexdigest()[:16]
    given = headers.get(HEADER, "").strip()
    if given:
        return f"{caller}:key:{hashlib.sha256(given.encode()).hexdigest()}"
    return f"{caller}:body:{hashlib.sha256(body).hexdigest()}"


def fingerprint(
    model: str, messages: Sequence[Any], overrides: Mapping[str, Any], agent: Mapping[str, Any] | None = None
) -> str:
    """What decides the proposals: a kept try is reused only by a request with the same
    (an agent's request: also the same conversation as sent, tools, tool_choice and format)."""
    text = json.dumps([model, list(messages), dict(overrides), dict(agent or {})], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Retries:
    def __init__(self, window: float, entries: int) -> None:
        self.window = window
        self.entries = entries
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, key: str, fingerprint: str) -> tuple[Proposal, ...] | None:
        """The proposals a failed try of this request kept (removed: one retry reuses them)."""
        kept = self._kept.pop(key, None)
        if kept is None or kept.until < time.monotonic() or kept.fingerprint != fingerprint:
            return None
        return kept.proposals

    def keep(self, key: str, fingerprint: str, proposals: Sequence[Proposal]) -> None:
        if self.window <= 0 or self.entries <= 0 or not proposals:
            return
        now = time.monotonic()
        self._kept.pop(key, None)
        self._kept[key] = Kept(fingerprint, tuple(proposals), now + self.window)
        while self._kept and (len(self._kept) > self.entries or next(iter(self._kept.values())).until < now):
            self._kept.popitem(last=False)
