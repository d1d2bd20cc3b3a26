"""`moa batch`: answer a whole benchmark file, resumably, in the format its judge reads.

    items = read_input(path, fmt)           # alpaca | mtbench | flask | jsonl, detected if None
    summary = await run_batch(prepare(job, settings), listener)

Formats (the judges join on exact fields, so these are written exactly):

    alpaca   in:  a JSON list (or JSONL) of {"instruction", ...}
             out: a JSON list of the input objects plus "output" and "generator", in input
                  order (alpaca_eval inner-joins on "instruction": it is copied unchanged)
    mtbench  in:  FastChat's question.jsonl: {"question_id", "category", "turns": [...]}
             out: FastChat's answer JSONL, sorted by question_id: {"question_id", "answer_id",
                  "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}; the second
                  turn is asked with the first turn and its answer in the conversation
    flask    in:  FLASK's evaluation JSONL: {"question_id" or "idx", "text" or "instruction"}
             out: one {"question_id", "text", "model_id"} per item, as FLASK's model_output
                  files; its review script joins on question_id
    jsonl    in:  one {"id"?, "prompt"} or {"id"?, "messages": [...]} per line
             out: one {"id", "answer", "error", ...} per line, with proposals and usage

Every output is JSON with ASCII escapes (`json.dumps` defaults, as FastChat writes), so a
judge that opens it without naming an encoding reads the same strings.

Resuming. Each finished item is appended to a sidecar next to OUTPUT
(`OUTPUT.moa-progress`, JSON lines, flushed and fsynced), so a crash or a signal loses at
most the items in flight. Its first line holds a fingerprint of what decides the answers
(line-up, sampling, system and aggregator prompts, format, input file): a rerun with the
same fingerprint skips the answered items and retries the failed ones; a different one is
refused (exit 2) unless `restart`. The output file itself is written once, atomically
(temporary file, fsync, rename), when every selected item has an answer, or with
`allow_failures`; a short file would silently skew a judge. An item answered without the
whole line-up (a reference failed, `select` fell back: `Outcome.degraded`) counts as
answered, but the output waits for `allow_degraded` as well: a judge would score a mixture
that was not one; a rerun asks those items again. `OUTPUT.moa-manifest.json` records the
run, with the degraded items counted per member. Neither side file ends in `.jsonl`: FastChat loads every `*.jsonl` in its
answer directory as a model.

Re-aggregating (`reuse_proposals`, what the original MoA's `--reference-paths` did): the
proposals an earlier run of the same input kept (its jsonl output, or its progress file for
any format, which holds every turn's) are read, every selected item must have them, and
only the aggregator runs over them (`MoA.aaggregate`). The fingerprint then includes that
file's hash, so a re-aggregation and a full run never share a sidecar.

No terminal code here: progress goes to a `Listener` (the command draws it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Protocol

from moa_cli import __version__
from moa_cli.api import MoA
from moa_cli.errors import ConfigError, MoaError, TurnFailed
from moa_cli.files import check_output, read_file
from moa_cli.providers.base import Gated, Provider
from moa_cli.providers.registry import split
from moa_cli.redact import mask_url, redact
from moa_cli.settings import SPECS, Settings
from moa_cli.types import Message, Proposal, Usage

FORMATS = ("alpaca", "mtbench", "flask", "jsonl")
#: FastChat's llm_judge/common.py `temperature_config`: per MT-Bench category.
FASTCHAT_TEMPERATURES: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
FASTCHAT_ERROR = "$ERROR$"  # FastChat's API_ERROR_OUTPUT: what its judges expect for a failed answer
SIDECAR_SUFFIX = ".moa-progress"
MANIFEST_SUFFIX = ".moa-manifest.json"
_SIDECAR_VERSION = 1
# Line-up settings that do not change an answer (every other one, and the system prompt, does).
_NOT_FINGERPRINTED = frozenset({"num_proc", "aggregator_prompt"})  # the prompt goes in as its hash
# Settings only the references' calls use: a re-aggregation (--reuse-proposals) ignores them.
_REFERENCES_ONLY = ("references", "rounds", "quorum", "layer_deadline")
_REUSE_PART = "reuse_proposals_sha256"  # in the fingerprint of a re-aggregation only


class BatchInputError(ConfigError):
    """The input file, the selection or the sidecar cannot be used (exit 2)."""


# ---------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class Item:
    """One benchmark item: the user turns to ask, after `prefix` (earlier messages)."""

    id: str  # as the user names it in --ids, and in the sidecar
    key: Any  # the id as the input spells it (an int for MT-Bench and FLASK)
    turns: tuple[str, ...]
    record: Mapping[str, Any]  # the input object, unchanged
    prefix: tuple[Message, ...] = ()
    category: str | None = None


@dataclass(frozen=True, slots=True)
class Input:
    format: str
    items: list[Item]
    sha256: str


def read_input(path: Path, fmt: str | None = None) -> Input:
    """Parse a benchmark file; `fmt` None detects it. BatchInputError (exit 2) if unusable."""
    data = _read(path, "input file")
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    records = _parse_records(path, text)
    if not records:
        raise BatchInputError(f"{path}: no items")
    if fmt is None:
        fmt = detect_format(records[0][1])
        if fmt is None:
            keys = ", ".join(sorted(records[0][1])) or "none"
            raise BatchInputError(
                f"{path}: cannot tell the format from the first item's fields ({keys}); give --format "
                + "|".join(FORMATS)
            )
    elif fmt not in FORMATS:
        raise BatchInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    items = [_item(fmt, path, where, index, record) for index, (where, record) in enumerate(records)]
    seen: dict[str, str] = {}
    for (where, _), item in zip(records, items, strict=True):
        if item.id in seen:
            raise BatchInputError(f"{path}:{where}: id {item.id} appears twice (first at {seen[item.id]})")
        seen[item.id] = where
    return Input(fmt, items, sha)


def _read(path: Path, what: str) -> bytes:
    """A file moa batch reads (files.read_file: regular, bounded); BatchInputError if not."""
    try:
        data = read_file(path, what)
    except ConfigError as exc:
        raise BatchInputError(str(exc)) from None
    assert data is not None
    return data


def _parse_records(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for each item: a JSON list, or one object per non-blank line."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise BatchInputError(f"{path}: not valid JSON ({exc})") from None
        except RecursionError:
            raise BatchInputError(f"{path}: not valid JSON (nested too deeply)") from None
        pairs = [(f"item {i}", v) for i, v in enumerate(value)]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append((f"line {number}", json.loads(line)))
            except ValueError as exc:
                raise BatchInputError(f"{path}:line {number}: not valid JSON ({exc})") from None
            except RecursionError:
                raise BatchInputError(f"{path}:line {number}: not valid JSON (nested too deeply)") from None
    for where, value in pairs:
        if not isinstance(value, dict):
            raise BatchInputError(f"{path}:{where}: expected a JSON object, got {type(value).__name__}")
        try:  # a \ud800 escape alone is valid JSON but no text: no model could be sent it
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            char = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise BatchInputError(f"{path}:{where}: {char} is a lone surrogate, not a character") from None
    return pairs


def detect_format(record: Mapping[str, Any]) -> str | None:
    """The format an input object belongs to, from its fields; None if unclear."""
    if "turns" in record and "question_id" in record:
        return "mtbench"
    if "prompt" in record or "messages" in record:
        return "jsonl"
    if ("idx" in record or "question_id" in record) and ("text" in record or "instruction" in record):
        return "flask"
    if "instruction" in record:
        return "alpaca"
    return None


def _text(path: Path, where: str, record: Mapping[str, Any], *names: str) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise BatchInputError(f"{path}:{where}: {name!r} must be a string")
            if not value.strip():
                raise BatchInputError(f"{path}:{where}: {name!r} is empty")
            return value
    raise BatchInputError(f"{path}:{where}: no {' or '.join(repr(n) for n in names)} field")


def _key(path: Path, where: str, record: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in record:
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
                raise BatchInputError(f"{path}:{where}: {name!r} must be a number or a non-empty string")
            return value
    raise BatchInputError(f"{path}:{where}: no {' or '.join(repr(n) for n in names)} field")


def _item(fmt: str, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
    if fmt == "alpaca":
        prompt = _text(path, where, record, "instruction")
        extra = record.get("input")
        if isinstance(extra, str) and extra.strip():  # alpaca_eval's optional "input"
            prompt = f"{prompt}\n\n{extra}"
        return Item(str(index), index, (prompt,), record)
    if fmt == "mtbench":
        key = _key(path, where, record, "question_id")
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise BatchInputError(f"{path}:{where}: 'turns' must be a list of non-empty strings")
        category = record.get("category")
        return Item(str(key), key, tuple(turns), record, category=category if isinstance(category, str) else None)
    if fmt == "flask":
        key = _key(path, where, record, "question_id", "idx")
        return Item(str(key), key, (_text(path, where, record, "text", "instruction"),), record)
    # jsonl
    key = _key(path, where, record, "id") if "id" in record else index
    if "messages" in record:
        messages = record["messages"]
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict)
                and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            raise BatchInputError(
                f"{path}:{where}: 'messages' must be a list of {{role, content}} ending with a non-empty user message"
            )
        prefix = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
        return Item(str(key), key, (messages[-1]["content"],), record, prefix=prefix)  # type: ignore[arg-type]
    return Item(str(key), key, (_text(path, where, record, "prompt"),), record)


def select(items: Sequence[Item], *, ids: Sequence[str] = (), limit: int | None = None) -> list[Item]:
    """The items `--ids` names (in input order), then the first `limit` of them."""
    chosen = list(items)
    if ids:
        wanted = set(ids)
        unknown = wanted - {item.id for item in items}
        if unknown:
            raise BatchInputError(f"no item with id {', '.join(sorted(unknown))} in the input")
        chosen = [item for item in items if item.id in wanted]
    return chosen if limit is None else chosen[:limit]


# ---------------------------------------------------------------------------- paths and fingerprint


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


def default_generator(output: Path) -> str:
    """The name written into the output: the file's stem (FastChat names a model by it),
    or for alpaca_eval's `results/NAME/model_outputs.json` layout, the directory's name."""
    # Only the extension goes: FastChat takes `llama-3.1-8b.jsonl` as model `llama-3.1-8b`.
    name = output.name
    stem = next((name[: -len(ext)] for ext in (".jsonl", ".json") if name.endswith(ext) and len(name) > len(ext)), name)
    if stem == "model_outputs" and output.resolve().parent.name:
        return output.resolve().parent.name
    return stem


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def answer_settings() -> list[str]:
    """The settings that decide an answer: the system prompt and every line-up setting
    (settings.py marks them) but the concurrency, so a setting added there is covered."""
    return [n for n, spec in SPECS.items() if (spec.lineup or n == "system") and n not in _NOT_FINGERPRINTED]


def fingerprint_parts(settings: Settings, fmt: str, input_sha: str, fastchat_temperatures: bool) -> dict[str, Any]:
    """Everything that decides the answers; two runs with equal parts may share a sidecar."""
    parts: dict[str, Any] = {name: _plain(getattr(settings, name)) for name in answer_settings()}
    parts["aggregator_prompt_sha256"] = _sha(settings.aggregator_prompt)
    parts["routes"] = routes(settings)
    parts.update(format=fmt, input_sha256=input_sha, fastchat_temperatures=fastchat_temperatures)
    return parts


def routes(settings: Settings) -> dict[str, list[str]]:
    """Where each model of the line-up is sent: provider, kind, endpoint (credentials masked)
    and model name. The same `-r m1` through another default provider or base URL is another
    model, so it must not share a sidecar."""
    out: dict[str, list[str]] = {}
    for spec in dict.fromkeys([*settings.references, settings.aggregator]):
        config, model = split(settings, spec)
        endpoint = (settings.env.get("TOGETHER_BASE_URL") if config.kind == "together" else None) or config.base_url
        out[spec] = [config.name, config.kind, mask_url(endpoint or "default"), model]
    return out


def _plain(value: Any) -> Any:
    """A setting's value as JSON keeps it (tuples as lists, anything odd as its text)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def fingerprint(parts: Mapping[str, Any]) -> str:
    return _sha(json.dumps(parts, sort_keys=True))


# ---------------------------------------------------------------------------- outcomes and the sidecar


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


_UUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's 57 characters


def answer_id() -> str:
    """A 22-character id like FastChat's `shortuuid.uuid()`."""
    return "".join(secrets.choice(_UUID_ALPHABET) for _ in range(22))


# ---------------------------------------------------------------------------- stored proposals (--reuse-proposals)


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
    data = _read(path, "--reuse-proposals file")
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
        if first.get("moa_batch") != _SIDECAR_VERSION:
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


class Sidecar:
    """The append-only progress file: a header line, then one outcome per finished item.

    Appends are flushed and fsynced, so whatever a crash leaves is every finished item
    plus at most one torn last line, which `open` drops. A second process on the same
    output is refused (an exclusive lock, where the platform has one).

    `write` (on the event loop) does the fsync on a thread, and outcomes that finish while
    one is under way share the next fsync (a group commit): at 2-3 ms per fsync, one per
    item on the loop would cap a run at a few hundred items a second and stall every stream.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self._file: Any = None
        self._io = threading.Lock()  # one writer at a time; close() waits for a write on a thread
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writing = False

    def open(self, *, restart: bool) -> dict[str, Outcome]:
        """Lock and read the sidecar (or start one); the outcomes it holds, latest per id."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open for the run
        _lock(self._file, self.path)
        self._file.seek(0)
        data = self._file.read()
        outcomes: dict[str, Outcome] = {}
        if data and not restart:
            try:
                outcomes = self._read(data)
            except BaseException:
                self.close()
                raise
        elif data:  # --restart: start over
            self._file.truncate(0)
            data = b""
        if data and not data.endswith(b"\n"):  # a torn last line: drop it before appending
            self._file.truncate(data.rfind(b"\n") + 1)
        if not data:
            self._append(self.header)
        return outcomes

    def _read(self, data: bytes) -> dict[str, Outcome]:
        lines = data.split(b"\n")
        complete, torn = lines[:-1], lines[-1]  # `torn` is b"" when the file ends with a newline
        del torn  # an unfinished last write: that item was in flight
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("moa_batch") != _SIDECAR_VERSION:
            raise BatchInputError(
                f"{self.path} is not a moa batch progress file this version can read; move it away or use --restart"
            )
        if header.get("fingerprint") != self.header["fingerprint"]:
            old, new = header.get("parts") or {}, self.header["parts"]
            if (_REUSE_PART in old) != (_REUSE_PART in new):
                made = "a re-aggregation (--reuse-proposals)" if _REUSE_PART in old else "a full run"
                raise BatchInputError(
                    f"{self.path} holds answers made by {made}; rerun the same command to resume, "
                    "or use --restart to discard them"
                )
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["fingerprint"]
            raise BatchInputError(
                f"{self.path} holds answers made with a different {', '.join(changed)}; "
                "rerun with the same settings and input to resume, or use --restart to discard them"
            )
        outcomes: dict[str, Outcome] = {}
        for number, line in enumerate(complete[1:], 2):
            try:
                outcome = Outcome.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                raise BatchInputError(f"{self.path}:line {number} is damaged; use --restart to start over") from None
            outcomes[outcome.id] = outcome
        return outcomes

    def _append(self, record: Mapping[str, Any]) -> None:
        self._write_durably(json.dumps(record).encode("ascii") + b"\n")

    def _write_durably(self, data: bytes) -> None:
        with self._io:
            if self._file is None:
                raise ValueError("the sidecar is closed")
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def append(self, outcome: Outcome) -> None:
        """Append one outcome now (blocking)."""
        self._append(outcome.to_json())

    async def write(self, outcome: Outcome) -> None:
        """Append one outcome durably without blocking the loop; returns once it is on disk."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((json.dumps(outcome.to_json()).encode("ascii") + b"\n", future))
        if not self._writing:
            self._writing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    try:
                        await asyncio.to_thread(self._write_durably, b"".join(data for data, _ in batch))
                    except Exception as exc:  # noqa: BLE001 - every waiter gets the error (disk full...)
                        for _, waiter in batch:
                            if not waiter.done():
                                waiter.set_exception(exc)
                        continue
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_result(None)
            finally:
                self._writing = False
        await future

    def close(self) -> None:
        """Write what is still queued (items answered while a write was cancelled, by Ctrl-C or
        a signal: they were paid for), then close and release the lock."""
        pending, self._pending = self._pending, []
        if pending and self._file is not None:
            try:
                self._write_durably(b"".join(data for data, _ in pending))
            except (OSError, ValueError):
                pass  # the disk refused: those items are asked again on resume
        with self._io:
            if self._file is not None:
                self._file.close()  # releases the lock
                self._file = None


def _lock(file: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise BatchInputError(f"another moa batch is writing {path}") from None


# ---------------------------------------------------------------------------- writing outputs


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temporary file, fsync, rename.

    ConfigError if `path` is there and is not a regular file (files.check_output)."""
    check_output(path, "output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, **kwargs)  # ASCII escapes: the judges open files without an encoding


def render(fmt: str, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
    """The output file for `items`, each with its outcome (a failed one gets the judge's placeholder)."""
    if fmt == "alpaca":
        records = []
        for item in items:
            outcome = outcomes[item.id]
            answer = outcome.answers[0] if outcome.ok else None
            records.append({**item.record, "output": answer if answer is not None else "", "generator": generator})
        return (_dumps(records, indent=2) + "\n").encode("ascii")
    lines: list[str] = []
    if fmt == "mtbench":
        for item in sorted(items, key=lambda i: (isinstance(i.key, str), i.key)):  # FastChat sorts by question_id
            outcome = outcomes[item.id]
            turns = [a if a is not None else FASTCHAT_ERROR for a in _padded(outcome, item)]
            lines.append(
                _dumps(
                    {
                        "question_id": item.key,
                        "answer_id": outcome.answer_id or answer_id(),
                        "model_id": generator,
                        "choices": [{"index": 0, "turns": turns}],
                        "tstamp": outcome.tstamp or time.time(),
                    }
                )
            )
    elif fmt == "flask":
        for item in items:
            answer = outcomes[item.id].answers[0] if outcomes[item.id].ok else None
            lines.append(
                _dumps({"question_id": item.key, "text": answer if answer is not None else "", "model_id": generator})
            )
    else:
        for item in items:
            lines.append(_dumps(jsonl_record(item, outcomes[item.id], generator)))
    return "".join(line + "\n" for line in lines).encode("ascii")


def _padded(outcome: Outcome, item: Item) -> list[str | None]:
    """One entry per turn of `item` (None where it has no answer)."""
    return list(outcome.answers) + [None] * (len(item.turns) - len(outcome.answers))


def jsonl_record(item: Item, outcome: Outcome, generator: str) -> dict[str, Any]:
    """One line of the jsonl format: the answer (or null and the error), proposals, usage."""
    last = outcome.results[-1] if outcome.results and outcome.ok else None
    return {
        "id": item.key,
        "answer": outcome.answers[-1] if outcome.ok else None,
        "error": None
        if outcome.ok
        else {"message": outcome.error, "kind": outcome.error_kind, "status": outcome.status},
        "generator": generator,
        "aggregator": last["aggregator"] if last else None,
        "finish_reason": last["finish_reason"] if last else None,
        "proposals": last["proposals"] if last else [],
        "usage": last["usage"] if last else None,
        "tokens": outcome.tokens,
        "cost": outcome.cost,  # USD, null unless every call was priced: never invented
        "seconds": round(outcome.seconds, 3),
    }


# ---------------------------------------------------------------------------- rate limit


class RateLimiter:
    """Request starts at most `rate` a second, evenly spaced (a token bucket of depth 1).

    Each caller reserves the next free start time under a lock, then sleeps until it: no
    busy waiting, no retry loop, and first come first served.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("rate must be more than 0")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            start = max(self._next, now)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A call's turn to start (`Gated`'s gate): the limit is on starts, not on calls held."""
        await self.acquire()
        yield


class _LimitedRouter:
    """The batch's provider pool, each provider behind the rate limiter (when there is one)."""

    def __init__(self, pool: Any, limiter: RateLimiter | None) -> None:
        self._pool = pool
        self._limiter = limiter
        self._wrapped: dict[str, Provider] = {}

    def resolve(self, spec: str) -> tuple[Provider, str]:
        provider, model = self._pool.resolve(spec)
        if self._limiter is None:
            return provider, model
        wrapped = self._wrapped.get(provider.name)
        if wrapped is None:
            wrapped = self._wrapped[provider.name] = Gated(provider, self._limiter.slot)
        return wrapped, model

    async def aclose(self) -> None:
        await self._pool.aclose()


class _SharedPoolMoA(MoA):
    """One item's MoA: its turns go through the batch's router (shared by every item) and
    are logged as one conversation from source "batch" (when the log is on)."""

    source = "batch"

    def __init__(self, settings: Settings, router: Any) -> None:
        super().__init__(settings=settings, router=router)

    async def arun(self, prompt: Any, **kwargs: Any) -> Any:
        # No one reads a batch's calls as they stream: every one is asked for whole.
        kwargs.setdefault("watch_references", False)
        kwargs.setdefault("watch_answer", False)
        try:
            return await super().arun(prompt, **kwargs)
        finally:
            self._continue()

    async def aaggregate(self, prompt: Any, proposals: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("watch_answer", False)
        try:
            return await super().aaggregate(prompt, proposals, **kwargs)
        finally:
            self._continue()

    def _continue(self) -> None:
        recording = getattr(self, "last_recording", None)
        if recording is not None and getattr(recording, "conversation_id", None):
            self.conversation_id = recording.conversation_id  # the next turn continues it


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Job:
    """What `moa batch` was asked to do (every option but the settings)."""

    input: Path
    output: Path
    format: str | None = None
    parallel: int = 4
    rps: float | None = None
    limit: int | None = None
    ids: tuple[str, ...] = ()
    generator: str | None = None
    allow_failures: bool = False
    allow_degraded: bool = False  # write (and exit 0) even if members of the line-up failed on items
    restart: bool = False
    fastchat_temperatures: bool = False
    reuse_proposals: Path | None = None  # run only the aggregator, over the proposals this file kept
    budget: float | None = None  # USD this run may spend, every item in flight at its worst case
    command: str = ""  # the command line that resumes the run, for messages and the manifest


@dataclass(slots=True)
class Summary:
    """How a run ended. `written` is True once the output file is in place."""

    format: str
    total: int  # items selected
    resumed: int  # answered by an earlier run
    done: int = 0  # answered, in all
    failed: list[Outcome] = field(default_factory=list)
    degraded: list[Outcome] = field(default_factory=list)  # answered, but not by the whole line-up
    allow_degraded: bool = False
    tokens: int | None = 0
    cost: float | None = 0.0  # USD; None once any answered item's cost is unknown
    written: bool = False
    interrupted: bool = False
    generator: str = ""
    output: Path | None = None
    sidecar: Path | None = None
    manifest: Path | None = None
    warnings: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    spent: float = 0.0  # USD this run spent (an item of unknown cost counted at its worst case)
    stopped_by_budget: bool = False  # --budget: the next item might have cost more than was left


class Listener(Protocol):
    """Receives progress; the command draws it. Called on the event loop: keep it quick."""

    def started(self, summary: Summary) -> None: ...

    def finished(self, outcome: Outcome, summary: Summary) -> None: ...


class _Quiet:
    def started(self, summary: Summary) -> None:
        pass

    def finished(self, outcome: Outcome, summary: Summary) -> None:
        pass


@dataclass
class Prepared:
    """A job checked and loaded, before any model is called."""

    job: Job
    settings: Settings
    input: Input
    items: list[Item]
    generator: str
    header: dict[str, Any]
    warnings: list[str]
    reuse: Stored | None = None


def prepare(job: Job, settings: Settings) -> Prepared:
    """Read and check everything (input, selection, generator); BatchInputError on a problem."""
    if job.parallel < 1:
        raise BatchInputError("--parallel must be at least 1")
    if job.rps is not None and not job.rps > 0:
        raise BatchInputError("--rps must be more than 0")
    if job.budget is not None and not 0 < job.budget < float("inf"):
        raise BatchInputError("--budget must be a number of USD more than 0")
    if job.limit is not None and job.limit < 1:
        raise BatchInputError("--limit must be at least 1")
    for path, what in ((job.output, "--output"), (sidecar_path(job.output), "the progress file"),
                       (manifest_path(job.output), "the manifest")):  # fmt: skip
        check_output(path, what)  # a FIFO, link or device is never replaced (exit 2)
    if job.output.resolve() == job.input.resolve():
        raise BatchInputError("the output file must not be the input file")
    data = read_input(job.input, job.format)
    items = select(data.items, ids=job.ids, limit=job.limit)
    warnings: list[str] = []
    stem = default_generator(job.output)
    generator = job.generator or stem
    if data.format == "mtbench" and job.generator and job.generator != stem:
        warnings.append(
            f"FastChat names a model by its answer file's name ({stem!r}), not by model_id "
            f"({job.generator!r}): name the output {job.generator}.jsonl to judge it as {job.generator!r}"
        )
    if job.fastchat_temperatures and data.format != "mtbench":
        raise BatchInputError("--fastchat-temperatures applies to MT-Bench input only")
    reuse = _reuse(job, data, items) if job.reuse_proposals is not None else None
    parts = fingerprint_parts(settings, data.format, data.sha256, job.fastchat_temperatures)
    if reuse is not None:  # other answers than a full run's: never mixed with one in a sidecar
        for name in _REFERENCES_ONLY:  # no reference is called: these change nothing
            parts.pop(name, None)
        parts["routes"] = {settings.aggregator: parts["routes"][settings.aggregator]}
        parts[_REUSE_PART] = reuse.sha256
    header = {
        "moa_batch": _SIDECAR_VERSION,
        "fingerprint": fingerprint(parts),
        "parts": parts,
        "input": str(job.input),
        "created": time.time(),
    }
    return Prepared(job, settings, data, items, generator, header, warnings, reuse)


def _reuse(job: Job, data: Input, items: Sequence[Item]) -> Stored:
    """The stored proposals for `--reuse-proposals`, checked to hold every selected item."""
    path = job.reuse_proposals
    assert path is not None
    if path.resolve() in (job.output.resolve(), sidecar_path(job.output).resolve()):
        raise BatchInputError("--reuse-proposals must be an earlier run's file, not this run's output or progress")
    stored = read_stored(path)
    if stored.input_sha256 is not None and stored.input_sha256 != data.sha256:
        raise BatchInputError(
            f"--reuse-proposals {path} was made from another input file than {job.input} (its sha256 differs), "
            "so its proposals answer other prompts"
        )
    missing = [item.id for item in items if not stored.covers(item)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BatchInputError(
            f"--reuse-proposals {path} has no proposals for {len(missing)} of the {len(items)} items selected "
            f"(id {shown}): they failed or were not run there; answer them there first, or leave them out with --ids"
        )
    return stored


def _temperature(prepared: Prepared, item: Item) -> float:
    if prepared.job.fastchat_temperatures:  # as FastChat's gen_api_answer: 0.7 for a category it does not list
        return FASTCHAT_TEMPERATURES.get(item.category or "", 0.7)
    return prepared.settings.temperature


async def answer_item(moa: MoA, item: Item, stored: Sequence[Sequence[Proposal]] | None = None) -> Outcome:
    """Ask every turn of `item`, each with the earlier turns and answers; never raises for a model failure.

    With `stored` (one list of proposals per turn), only the aggregator runs, over them.
    """
    started = time.perf_counter()
    messages: list[Message] = list(item.prefix)
    answers: list[str | None] = []
    results: list[dict[str, Any]] = []
    tokens: int | None = 0
    cost: float | None = 0.0
    for number, turn in enumerate(item.turns):
        messages.append({"role": "user", "content": turn})
        try:
            if stored is None:
                result = await moa.arun(messages)
            else:
                result = await moa.aaggregate(messages, stored[number])
        except TurnFailed as exc:
            return _failed(item, answers, results, redact(str(exc)), exc.kind, exc.status, started)
        except MoaError as exc:
            kind, status = getattr(exc, "kind", "other"), getattr(exc, "status", None)
            return _failed(item, answers, results, redact(str(exc)), kind, status, started)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one item, not the run
            return _failed(
                item, answers, results, f"unexpected error: {type(exc).__name__}: {exc}", "other", None, started
            )
        answers.append(result.answer)
        results.append(result.to_dict())
        total = result.usage.total_tokens
        tokens = None if tokens is None or total is None else tokens + total
        turn_cost = getattr(result, "cost_usd", None)
        cost = None if cost is None or turn_cost is None else cost + turn_cost
        messages.append({"role": "assistant", "content": result.answer})
    return Outcome(
        item.id, True, answers, results, tokens=tokens, cost=cost, seconds=time.perf_counter() - started,
        answer_id=answer_id(), tstamp=time.time(),
    )  # fmt: skip


def _failed(
    item: Item,
    answers: list[str | None],
    results: list[dict[str, Any]],
    error: str,
    kind: str,
    status: int | None,
    started: float,
) -> Outcome:
    answers = answers + [None] * (len(item.turns) - len(answers))
    return Outcome(
        item.id, False, answers, results, error=error, error_kind=kind, status=status, tokens=None,
        seconds=time.perf_counter() - started, answer_id=answer_id(), tstamp=time.time(),
    )  # fmt: skip


async def run_batch(prepared: Prepared, listener: Listener | None = None, *, router: Any = None) -> Summary:
    """Answer every selected item not answered yet, record each as it finishes, then write the output.

    Cancelling it (a signal) keeps every finished item in the sidecar and writes the
    manifest; the output is written only once every selected item has an answer (or with
    `allow_failures`). `router` replaces the provider pool (tests).
    """
    from moa_cli.providers.registry import ProviderPool

    job, listener = prepared.job, listener or _Quiet()
    budget: Budget | None = None
    worst_cases: dict[str, float] = {}
    if job.budget is not None:
        from moa_cli.recorder import price_book

        budget = Budget(job.budget, await price_book(prepared.settings))
        # Every item priced before anything starts (a gap is exit 2). Prices do not depend on
        # the temperature, the one setting an item may change.
        worst_cases = {item.id: budget.worst_case(item, prepared.settings) for item in prepared.items}
    sidecar = Sidecar(sidecar_path(job.output), prepared.header)
    known = sidecar.open(restart=job.restart)

    def kept(item: Item) -> bool:  # answered by an earlier run; a degraded answer is asked again unless allowed
        outcome = known.get(item.id)
        return outcome is not None and outcome.ok and (job.allow_degraded or not outcome.degraded)

    summary = Summary(
        format=prepared.input.format,
        total=len(prepared.items),
        resumed=sum(1 for item in prepared.items if kept(item)),
        generator=prepared.generator,
        output=job.output,
        sidecar=sidecar.path,
        manifest=manifest_path(job.output),
        warnings=list(prepared.warnings),
        started=time.time(),
    )
    summary.done = summary.resumed
    answered = [known[i.id] for i in prepared.items if kept(i)]
    summary.tokens, summary.cost = _sum_tokens(answered), _sum_cost(answered)
    summary.degraded = [o for o in answered if o.degraded]
    summary.allow_degraded = job.allow_degraded
    todo = [item for item in prepared.items if not kept(item)]
    outcomes = dict(known)
    shared = router or _LimitedRouter(ProviderPool(prepared.settings), RateLimiter(job.rps) if job.rps else None)
    settings_at: dict[float, Settings] = {}

    def moa_for(item: Item) -> MoA:
        temperature = _temperature(prepared, item)
        if temperature not in settings_at:
            settings = prepared.settings
            if temperature != settings.temperature:
                settings = settings.with_changes(temperature=temperature)
            settings_at[temperature] = settings
        return _SharedPoolMoA(settings_at[temperature], shared)

    pending = iter(todo)

    async def worker() -> None:
        for item in pending:  # one iterator shared by the workers: each item is taken once
            if summary.stopped_by_budget:
                return
            stored = prepared.reuse.turns[item.id] if prepared.reuse is not None else None
            worst = 0.0
            if budget is not None:
                worst = worst_cases[item.id]
                if not await budget.reserve(worst):
                    summary.stopped_by_budget = True
                    return
            outcome: Outcome | None = None
            try:
                outcome = await answer_item(moa_for(item), item, stored)
            finally:
                if budget is not None:
                    budget.settle(worst, outcome.cost if outcome is not None else None)
                    summary.spent = budget.spent
            await sidecar.write(outcome)
            outcomes[item.id] = outcome
            if outcome.ok:
                summary.done += 1
                if outcome.degraded:
                    summary.degraded.append(outcome)
                summary.tokens = _sum_tokens([outcome], summary.tokens)
                summary.cost = _sum_cost([outcome], summary.cost)
            else:
                summary.failed.append(outcome)
            listener.finished(outcome, summary)

    listener.started(summary)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(job.parallel, len(todo))):
                group.create_task(worker())
        complete = all(item.id in outcomes for item in prepared.items)
        if complete and (not summary.failed or job.allow_failures) and (not summary.degraded or job.allow_degraded):
            write_atomic(job.output, render(summary.format, prepared.items, outcomes, prepared.generator))
            summary.written = True
    except asyncio.CancelledError:
        summary.interrupted = True
        raise
    finally:
        try:
            if router is None:
                await shared.aclose()
        finally:
            sidecar.close()
            summary.ended = time.time()
            write_atomic(summary.manifest, manifest(prepared, summary))  # type: ignore[arg-type]
    return summary


class Budget:
    """`--budget`: what this run spent, plus the worst case of every item in flight, stays under the limit.

    An item starts only if its worst case (every call at max_tokens, pricing.worst_case) fits
    in what is left; while items are in flight it waits for them to settle (their real cost is
    usually far below their worst case), and with none in flight the run stops there. Every
    model of the line-up needs a price, or the budget cannot be kept: ConfigError (exit 2).
    """

    def __init__(self, limit: float, book: Any) -> None:
        self.limit = limit
        self.book = book
        self.spent = 0.0
        self.reserved = 0.0
        self.in_flight = 0
        self._settled = asyncio.Event()  # set when an item settles (the workers share one event loop)

    def worst_case(self, item: Item, settings: Settings) -> float:
        from moa_cli.recorder import estimate

        messages: list[Message] = list(item.prefix)
        total = 0.0
        for number, turn in enumerate(item.turns):
            messages.append({"role": "user", "content": turn})
            worst = estimate(settings, messages, self.book, earlier_answers=number)
            if worst.cost_usd is None:
                raise ConfigError(
                    f"--budget {self.limit:g}: cannot keep it, an item's worst case is {worst.text()}; "
                    'set a price with [pricing."provider:model"] in the config file or run moa models --refresh-prices'
                )
            total += worst.cost_usd
        return total

    async def reserve(self, cost: float) -> bool:
        """Hold `cost` for an item; False when it cannot fit even once nothing is in flight."""
        while self.spent + self.reserved + cost > self.limit:
            if not self.in_flight:
                return False
            self._settled.clear()
            await self._settled.wait()
        self.reserved += cost
        self.in_flight += 1
        return True

    def settle(self, reserved: float, actual: float | None) -> None:
        """An item is done: its real cost replaces its worst case (unknown: the worst case stays)."""
        self.reserved -= reserved
        self.in_flight -= 1
        self.spent += reserved if actual is None else actual
        self._settled.set()


def _sum_tokens(outcomes: Iterable[Outcome], start: int | None = 0) -> int | None:
    total = start
    for outcome in outcomes:
        total = None if total is None or outcome.tokens is None else total + outcome.tokens
    return total


def _sum_cost(outcomes: Iterable[Outcome], start: float | None = 0.0) -> float | None:
    total = start
    for outcome in outcomes:
        total = None if total is None or outcome.cost is None else total + outcome.cost
    return total


def manifest(prepared: Prepared, summary: Summary) -> bytes:
    """The run's record: line-up, settings, prompt hash, version, input hash, times, counts, failures."""
    s, job = prepared.settings, prepared.job
    status = "interrupted" if summary.interrupted else ("failed" if summary.failed else "done")
    if status == "done" and summary.degraded:
        status = "degraded"
    data = {
        "moa_version": __version__,
        "status": status,
        "command": job.command,
        "format": summary.format,
        "input": str(job.input),
        "input_sha256": prepared.input.sha256,
        "output": str(job.output),
        "output_written": summary.written,
        "sidecar": str(summary.sidecar),
        "generator": prepared.generator,
        "fingerprint": prepared.header["fingerprint"],
        "lineup": {"name": s.lineup, "references": list(s.references), "aggregator": s.aggregator, "rounds": s.rounds},
        "settings": {
            **{
                name: _plain(getattr(s, name)) for name in answer_settings() if name not in ("references", "aggregator")
            },
            "fastchat_temperatures": job.fastchat_temperatures,
            "num_proc": s.num_proc,
            "timeout": s.timeout,
            "retries": s.retries,
            "parallel": job.parallel,
            "rps": job.rps,
        },
        "aggregator_prompt_sha256": _sha(s.aggregator_prompt),
        "selection": {"ids": list(job.ids), "limit": job.limit},
        # Only the aggregator ran, over the proposals kept in this file (references not called).
        "reuse_proposals": {
            "path": str(prepared.reuse.path),
            "kind": prepared.reuse.kind,
            "sha256": prepared.reuse.sha256,
        }
        if prepared.reuse is not None
        else None,
        "started": _iso(summary.started),
        "ended": _iso(summary.ended),
        "counts": {
            "items": summary.total,
            "answered": summary.done,
            "resumed": summary.resumed,
            "failed": len(summary.failed),
            "not_run": summary.total - summary.done - len(summary.failed),
        },
        "tokens": summary.tokens,
        "cost_usd": summary.cost,
        "budget": {"limit_usd": job.budget, "spent_usd": summary.spent, "stopped": summary.stopped_by_budget}
        if job.budget is not None
        else None,
        "failures": [{"id": o.id, "error": o.error, "kind": o.error_kind, "status": o.status} for o in summary.failed],
        # Items answered without the whole line-up: how many each member's failure touched,
        # and which items (each with what went wrong).
        "degraded": {
            "items": len(summary.degraded),
            "allowed": job.allow_degraded,
            "by_member": degraded_by_member(summary.degraded),
            "list": [{"id": o.id, "answered_by": o.answered_by, "degraded": o.degraded} for o in summary.degraded],
        },
    }
    return (json.dumps(data, indent=2) + "\n").encode("ascii")


def _iso(timestamp: float) -> str | None:
    if not timestamp:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
