"""Stored proposals (`--reuse-proposals`): read an earlier run's jsonl output or progress file."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa_cli.batch.formats import BatchInputError, Item, read_bytes
from moa_cli.batch.outcome import Outcome
from moa_cli.batch.sidecar import SIDECAR_SUFFIX, SIDECAR_VERSION, manifest_path
from moa_cli.errors import ConfigError
from moa_cli.files import read_file
from moa_cli.types import Proposal, Usage


@dataclass(frozen=True, slots=True)
class Stored:
    """The proposals an earlier run kept, for `--reuse-proposals`: per item id, one list per turn.

    Only items the earlier run answered are here. `input_sha256` is the earlier run's input
    file's hash when PATH says it (a progress file's header, a jsonl output's manifest).
    """

    path: Path
    sha256: str
    kind: str  # "progress file" or "jsonl output"
    input_sha256: str | None
    turns: dict[str, list[list[Proposal]]]

    def covers(self, item: Item) -> bool:
        """Whether every turn of `item` has stored proposals with an answer in their last layer."""
        turns = self.turns.get(item.id)
        return turns is not None and len(turns) == len(item.turns) and all(_answered_last(t) for t in turns)


def _answered_last(proposals: Sequence[Proposal]) -> bool:
    if not proposals:
        return False
    last = max(p.layer for p in proposals)
    return any(p.layer == last and p.text is not None for p in proposals)


_REUSE_TAKES = (
    f"--reuse-proposals takes an earlier moa batch run's --format jsonl output or its OUTPUT{SIDECAR_SUFFIX} "
    "file (any format)"
)


def read_stored(path: Path) -> Stored:
    """Read the proposals an earlier run kept in `path`: its jsonl output or its progress file.

    BatchInputError (exit 2) if `path` is neither (an alpaca, MT-Bench or FLASK output holds
    only answers) or is damaged.
    """
    data = read_bytes(path, "--reuse-proposals file")
    sha = hashlib.sha256(data).hexdigest()
    lines = data.decode("utf-8", "replace").split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    torn = bool(lines[-1].strip())  # a progress file of a run killed mid-write ends without a newline
    records: list[tuple[int, dict[str, Any]]] = []
    for n, line in numbered:
        try:
            value = json.loads(line)
        except ValueError:
            if torn and n == len(lines) and records and "moa_batch" in records[0][1]:
                break  # that item was in flight: it is not there
            raise BatchInputError(f"{path}:line {n} is not a JSON object: {_REUSE_TAKES}") from None
        if not isinstance(value, dict):
            raise BatchInputError(f"{path}:line {n} is not a JSON object: {_REUSE_TAKES}")
        records.append((n, value))
    if not records:
        raise BatchInputError(f"{path} is empty: {_REUSE_TAKES}")
    first = records[0][1]
    turns: dict[str, list[list[Proposal]]] = {}
    if "moa_batch" in first:
        if first.get("moa_batch") != SIDECAR_VERSION:
            raise BatchInputError(f"{path} is a moa batch progress file this version cannot read")
        parts = first.get("parts")
        input_sha = parts.get("input_sha256") if isinstance(parts, dict) else None
        for n, record in records[1:]:
            try:
                outcome = Outcome.from_json(record)
                kept = [[_proposal(p) for p in result["proposals"]] for result in outcome.results]
            except (ValueError, KeyError, TypeError):
                raise BatchInputError(f"{path}:line {n} is damaged") from None
            if outcome.ok:
                turns[outcome.id] = kept
            else:
                turns.pop(outcome.id, None)  # the latest record of an item is the one that counts
        return Stored(path, sha, "progress file", input_sha if isinstance(input_sha, str) else None, turns)
    if not {"id", "answer", "proposals"} <= set(first):
        raise BatchInputError(f"{path} holds no proposals: {_REUSE_TAKES}")
    for n, record in records:
        try:
            key, answer, proposals = record["id"], record["answer"], record["proposals"]
            one = [_proposal(p) for p in proposals]
        except (ValueError, KeyError, TypeError):
            raise BatchInputError(f"{path}:line {n} is not a moa batch jsonl line with proposals") from None
        if answer is not None:  # a failed item (written with --allow-failures) has none to reuse
            turns[str(key)] = [one]
    input_sha = None
    with contextlib.suppress(OSError, ValueError, AttributeError, ConfigError, RecursionError):
        input_sha = json.loads(read_file(manifest_path(path), "manifest") or b"{}").get("input_sha256")
    return Stored(path, sha, "jsonl output", input_sha if isinstance(input_sha, str) else None, turns)


def _proposal(data: Mapping[str, Any]) -> Proposal:
    """A Proposal from its `to_dict()` (TypeError/KeyError/ValueError if it is not one)."""
    text, error, usage = data.get("text"), data.get("error"), data.get("usage")
    if not isinstance(data["model"], str) or not isinstance(text, (str, type(None))):
        raise TypeError("not a proposal")
    kind = data.get("error_kind")
    return Proposal(
        data["model"],
        int(data["layer"]),
        text=text,
        error=str(error) if error is not None else None,
        seconds=float(data.get("seconds") or 0.0),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) if usage else None,
        timed_out=kind in ("timeout", "deadline"),
        error_kind=kind,
        status=data.get("status"),
        finish_reason=data.get("finish_reason"),
    )
