"""Transcripts: a conversation written for people (Markdown) or programs (JSON).

Two sources, one way of writing them:

    markdown(conversation, meta) / json_text(...)   the REPL's conversation (`/save`)
    conversation_markdown(record) / turn_markdown   a logged one (`moa logs show|export`)

Both write a system prompt, a prompt and an answer with the same blocks (`system_lines`,
`exchange_lines`); a logged turn adds what the log knows (its number, time, status, cost,
and with `proposals` what every reference said).

Stdlib only: the REPL, the CLI and tests can all use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from moa_cli.types import Message

if TYPE_CHECKING:
    from moa_cli.store import ConversationRecord, TurnRecord


class Exchange(Protocol):
    """One answered turn of a conversation (conversation.Exchange)."""

    @property
    def prompt(self) -> str: ...

    @property
    def answer(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class Conversation(Protocol):
    """What a transcript is written from (conversation.Conversation, the REPL's)."""

    @property
    def system(self) -> str | None: ...

    @property
    def multi_turn(self) -> bool: ...

    @property
    def exchanges(self) -> Sequence[Exchange]: ...

    def messages(self) -> list[Message]: ...


TRANSCRIPT_VERSION = 1
TRANSCRIPT_SUFFIXES = (".md", ".json")


# ---------------------------------------------------------------------------- the blocks


def system_lines(system: str) -> list[str]:
    return ["**System:**", "", system.strip(), ""]


def prompt_lines(prompt: str) -> list[str]:
    return ["**You:**", "", prompt.strip(), ""]


def answer_lines(answer: str) -> list[str]:
    return ["**moa:**", "", answer.strip(), ""]


def exchange_lines(prompt: str, answer: str) -> list[str]:
    """A prompt under **You**, its answer under **moa**."""
    return prompt_lines(prompt) + answer_lines(answer)


def _meta_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


# ---------------------------------------------------------------------------- the REPL's conversation


def markdown(conversation: Conversation, meta: dict[str, Any] | None = None) -> str:
    """A readable transcript: each prompt under **You**, each answer under **moa**."""
    lines = ["# Conversation with moa", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {_meta_text(value)}")
    if meta:
        lines.append("")
    if conversation.system:
        lines += system_lines(conversation.system)
    for exchange in conversation.exchanges:
        lines += ["---", "", *exchange_lines(exchange.prompt, exchange.answer)]
    return "\n".join(lines)


def json_text(conversation: Conversation, meta: dict[str, Any] | None = None) -> str:
    """A machine-readable transcript; `messages` can be sent to any chat API as is."""
    data: dict[str, Any] = {
        "version": TRANSCRIPT_VERSION,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(meta or {}),
        "system": conversation.system,
        "multi_turn": conversation.multi_turn,
        "messages": conversation.messages(),
        "turns": [exchange.to_dict() for exchange in conversation.exchanges],
    }
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------------------- a logged conversation


def tool_call_lines(calls: Sequence[dict[str, Any]]) -> list[str]:
    """An agent's answer that called tools: each call's name and its JSON arguments."""
    lines: list[str] = []
    for call in calls:
        function = call.get("function") or {}
        lines += [
            f"**Tool call** `{function.get('name')}` ({call.get('id')}):",
            "",
            "```json",
            str(function.get("arguments")),
            "```",
            "",
        ]
    return lines


def cost_line(turn: TurnRecord) -> str:
    from moa_cli.pricing import cost_text

    calls = len(turn.calls) or None
    if turn.unpriced_calls and not turn.priced_usd:
        return "cost unknown"
    return cost_text(turn.priced_usd, turn.unpriced_calls, calls)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def turn_json(turn: TurnRecord) -> dict[str, Any]:
    data = asdict(turn)
    if not turn.calls:
        data.pop("calls")
    return data


def turn_markdown(turn: TurnRecord, *, proposals: bool = False, heading: str = "##") -> str:
    lines = [f"{heading} Turn {turn.id} · {when(turn.started_at)} · {turn.status} · {cost_line(turn)}", ""]
    if turn.system and turn.seq == 1:
        lines += system_lines(turn.system)
    lines += prompt_lines(turn.prompt)
    if turn.answer is not None:
        lines += answer_lines(turn.answer) if turn.answer or not turn.tool_calls else []
        lines += tool_call_lines(turn.tool_calls or [])
    elif turn.error:
        lines += [f"*{turn.status}: {turn.error}*", ""]
    if proposals:
        for layer in sorted({c.layer for c in turn.calls if c.role != "aggregator"}):
            lines += [f"{heading}# Layer {layer}", ""]
            for call in (c for c in turn.calls if c.layer == layer and c.role != "aggregator"):
                info = f"{call.duration or 0:.1f}s"
                if call.completion_tokens is not None:
                    info += f" · {call.completion_tokens} tokens"
                info += f" · {(call.cost_usd and f'${call.cost_usd:.6f}'.rstrip('0')) or ('$0' if call.cost_usd == 0 else 'unpriced')}"
                lines += [f"**{call.spec}** ({info})", ""]
                lines += [
                    call.text.strip() if call.text is not None else f"*failed ({call.error_kind}): {call.error}*",
                    "",
                ]
    return "\n".join(lines)


def conversation_markdown(conversation: ConversationRecord, *, proposals: bool = False) -> str:
    from moa_cli.pricing import cost_text

    calls = sum(len(t.calls) for t in conversation.turns)
    priced = sum(t.priced_usd for t in conversation.turns)
    unpriced = sum(t.unpriced_calls for t in conversation.turns)
    lines = [
        f"# {conversation.title}",
        "",
        f"- conversation: {conversation.id}",
        f"- source: {conversation.source}",
        f"- started: {when(conversation.created_at)}",
        f"- line-up: {', '.join(conversation.lineup.get('references', []))} → {conversation.lineup.get('aggregator', '?')}",
        f"- cost: {cost_text(priced, unpriced, calls or None)}",
        "",
    ]
    for turn in conversation.turns:
        lines.append(turn_markdown(turn, proposals=proposals))
    return "\n".join(lines)


def conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    data = asdict(conversation)
    data["turns"] = [asdict(t) for t in conversation.turns]
    return data
