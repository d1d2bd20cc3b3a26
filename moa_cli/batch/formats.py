"""The benchmark formats: reading an input file into items, and writing the output its judge reads.

One class per judge format (`Alpaca`, `MtBench`, `Flask`, `Jsonl`) holds its detection, its parse
and its write; `FORMAT_CLASSES` names them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from moa_cli.batch.outcome import Outcome
from moa_cli.errors import ConfigError
from moa_cli.files import read_file
from moa_cli.types import Message

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


class BatchInputError(ConfigError):
    """The input file, the selection or the sidecar cannot be used (exit 2)."""


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
    data = read_bytes(path, "input file")
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
    parser = FORMAT_CLASSES[fmt]
    items = [parser.parse(path, where, index, record) for index, (where, record) in enumerate(records)]
    seen: dict[str, str] = {}
    for (where, _), item in zip(records, items, strict=True):
        if item.id in seen:
            raise BatchInputError(f"{path}:{where}: id {item.id} appears twice (first at {seen[item.id]})")
        seen[item.id] = where
    return Input(fmt, items, sha)


def read_bytes(path: Path, what: str) -> bytes:
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
    return next((fmt.name for fmt in _DETECTION_ORDER if fmt.claims(record)), None)


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


class Format:
    """One judge's format: how an input object becomes an `Item`, and how the answered items
    are written for that judge. Subclasses set `name` and implement all three."""

    name: ClassVar[str]

    @staticmethod
    def claims(record: Mapping[str, Any]) -> bool:
        """Whether an input object looks like this format's (detection, when --format is not given)."""
        raise NotImplementedError

    def parse(self, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
        raise NotImplementedError

    def write(self, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
        """The output file for `items`, each with its outcome (a failed one gets the judge's placeholder)."""
        raise NotImplementedError


def _lines(records: Iterable[Any]) -> bytes:
    return "".join(_dumps(record) + "\n" for record in records).encode("ascii")


class Alpaca(Format):
    """alpaca_eval: a JSON list of the input objects plus "output" and "generator", in input order."""

    name = "alpaca"

    @staticmethod
    def claims(record: Mapping[str, Any]) -> bool:
        return "instruction" in record

    def parse(self, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
        prompt = _text(path, where, record, "instruction")
        extra = record.get("input")
        if isinstance(extra, str) and extra.strip():  # alpaca_eval's optional "input"
            prompt = f"{prompt}\n\n{extra}"
        return Item(str(index), index, (prompt,), record)

    def write(self, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
        records = []
        for item in items:
            outcome = outcomes[item.id]
            answer = outcome.answers[0] if outcome.ok else None
            records.append({**item.record, "output": answer if answer is not None else "", "generator": generator})
        return (_dumps(records, indent=2) + "\n").encode("ascii")


class MtBench(Format):
    """FastChat's MT-Bench: question.jsonl in, its answer JSONL out, sorted by question_id."""

    name = "mtbench"

    @staticmethod
    def claims(record: Mapping[str, Any]) -> bool:
        return "turns" in record and "question_id" in record

    def parse(self, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
        key = _key(path, where, record, "question_id")
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise BatchInputError(f"{path}:{where}: 'turns' must be a list of non-empty strings")
        category = record.get("category")
        return Item(str(key), key, tuple(turns), record, category=category if isinstance(category, str) else None)

    def write(self, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
        records = []
        for item in sorted(items, key=lambda i: (isinstance(i.key, str), i.key)):  # FastChat sorts by question_id
            outcome = outcomes[item.id]
            turns = [a if a is not None else FASTCHAT_ERROR for a in _padded(outcome, item)]
            records.append(
                {
                    "question_id": item.key,
                    "answer_id": outcome.answer_id or answer_id(),
                    "model_id": generator,
                    "choices": [{"index": 0, "turns": turns}],
                    "tstamp": outcome.tstamp or time.time(),
                }
            )
        return _lines(records)


class Flask(Format):
    """FLASK: its evaluation JSONL in, one {"question_id", "text", "model_id"} per item out."""

    name = "flask"

    @staticmethod
    def claims(record: Mapping[str, Any]) -> bool:
        return ("idx" in record or "question_id" in record) and ("text" in record or "instruction" in record)

    def parse(self, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
        key = _key(path, where, record, "question_id", "idx")
        return Item(str(key), key, (_text(path, where, record, "text", "instruction"),), record)

    def write(self, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
        records = []
        for item in items:
            answer = outcomes[item.id].answers[0] if outcomes[item.id].ok else None
            records.append(
                {"question_id": item.key, "text": answer if answer is not None else "", "model_id": generator}
            )
        return _lines(records)


class Jsonl(Format):
    """moa's own: {"id"?, "prompt"} or {"id"?, "messages"} in, answers with proposals and usage out."""

    name = "jsonl"

    @staticmethod
    def claims(record: Mapping[str, Any]) -> bool:
        return "prompt" in record or "messages" in record

    def parse(self, path: Path, where: str, index: int, record: dict[str, Any]) -> Item:
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

    def write(self, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
        return _lines(jsonl_record(item, outcomes[item.id], generator) for item in items)


#: Every format by name, in the order `--format` lists them.
FORMAT_CLASSES: dict[str, Format] = {fmt.name: fmt for fmt in (Alpaca(), MtBench(), Flask(), Jsonl())}
FORMATS = tuple(FORMAT_CLASSES)
#: Detection tries the most specific fields first: MT-Bench's turns, then a prompt or messages, then FLASK's ids.
_DETECTION_ORDER = (
    FORMAT_CLASSES["mtbench"],
    FORMAT_CLASSES["jsonl"],
    FORMAT_CLASSES["flask"],
    FORMAT_CLASSES["alpaca"],
)


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


def default_generator(output: Path) -> str:
    """The name written into the output: the file's stem (FastChat names a model by it),
    or for alpaca_eval's `results/NAME/model_outputs.json` layout, the directory's name."""
    # Only the extension goes: FastChat takes `llama-3.1-8b.jsonl` as model `llama-3.1-8b`.
    name = output.name
    stem = next((name[: -len(ext)] for ext in (".jsonl", ".json") if name.endswith(ext) and len(name) > len(ext)), name)
    if stem == "model_outputs" and output.resolve().parent.name:
        return output.resolve().parent.name
    return stem


_UUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's 57 characters


def answer_id() -> str:
    """A 22-character id like FastChat's `shortuuid.uuid()`: a random 128-bit number in base 57.

    One read of the system's randomness, not one per character (`secrets.choice` 22 times was
    1% of `moa batch`'s CPU)."""
    number = int.from_bytes(secrets.token_bytes(16))
    digits = []
    for _ in range(22):  # 57**22 > 2**128: every number fits
        number, digit = divmod(number, len(_UUID_ALPHABET))
        digits.append(_UUID_ALPHABET[digit])
    return "".join(digits)


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, **kwargs)  # ASCII escapes: the judges open files without an encoding


def render(fmt: str, items: Sequence[Item], outcomes: Mapping[str, Outcome], generator: str) -> bytes:
    """The output file for `items`, each with its outcome (a failed one gets the judge's placeholder)."""
    return FORMAT_CLASSES[fmt].write(items, outcomes, generator)


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
