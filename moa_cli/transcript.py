"""Transcripts: a conversation written for people (Markdown) or programs (JSON), one way.

    document(conversation, "md" | "json")    what `moa logs export` prints and `/save` writes
    conversation_markdown / conversation_json   the two forms (`moa logs show` too)
    chat_conversation(turns)                 the REPL's conversation, as the log holds one
    turn_markdown / turn_json                one logged turn (`moa logs show|export N`)

Both sources are the same records: a logged conversation is read from the log, and the
REPL's is made of its turns as the recorder made them (the very records the log's writer
writes), so `/save` and `moa logs export` of one conversation write the same document. They
differ only where the REPL cannot know: a turn not (yet) in the log has no number ("not
logged", and `id`/`seq` null in JSON), its calls no row ids, and the REPL's conversation no
`updated_at` (null). A failed turn, or an answer `/retry` replaced, is in the log but not in
the conversation the REPL kept. Costs are the recorder's: unknown is "unknown", never $0.

Stdlib only (the store and pricing are imported where they are used): the REPL, the CLI and
tests can all use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa_cli.store import ConversationRecord, TurnRecord


#: 2: one shape for `/save` and `moa logs export` (the log's conversation, plus `messages`).
TRANSCRIPT_VERSION = 2
TRANSCRIPT_SUFFIXES = (".md", ".json")
FORMATS = ("md", "json")

NOT_LOGGED = "(not logged)"


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


# ---------------------------------------------------------------------------- one turn


def turn_json(turn: TurnRecord) -> dict[str, Any]:
    data = asdict(turn)
    if not turn.calls:
        data.pop("calls")
    return data


def turn_markdown(turn: TurnRecord, *, proposals: bool = False, heading: str = "##", system: bool | None = None) -> str:
    """A turn under its number, time, status and cost. `system`: show its system prompt
    (default: when it is its conversation's first turn)."""
    number = turn.id if turn.id is not None else NOT_LOGGED
    lines = [f"{heading} Turn {number} · {when(turn.started_at)} · {turn.status} · {cost_line(turn)}", ""]
    if system is None:
        system = bool(turn.system) and turn.seq == 1
    if system:
        lines += system_lines(turn.system or "*(none)*")
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


# ---------------------------------------------------------------------------- a conversation


def chat_conversation(turns: Sequence[TurnRecord]) -> ConversationRecord:
    """The REPL's conversation as the log holds one: its turns as the recorder made them (with
    their number once the log's writer has written them: `store.flush_all()` first), titled,
    started and lined up by the first. `updated_at`, which only the log knows, is None."""
    from moa_cli.store import ConversationRecord, title_of

    if not turns:
        raise ValueError("nothing to write: the conversation has no turn")
    first = turns[0]
    title = title_of(first.prompt)
    # As the log reads them back: each with its conversation's title and source.
    kept = [replace(turn, title=title, source=first.source) for turn in turns]
    return ConversationRecord(first.conversation_id, title, first.source, first.started_at, None, first.lineup, kept)


def conversation_markdown(conversation: ConversationRecord, *, proposals: bool = False) -> str:
    from moa_cli.pricing import cost_text

    turns = conversation.turns
    calls = sum(len(t.calls) for t in turns)
    priced = sum(t.priced_usd for t in turns)
    unpriced = sum(t.unpriced_calls for t in turns)
    lineup = conversation.lineup
    rounds = lineup.get("rounds", 1)
    logged = any(t.id is not None for t in turns)
    lines = [
        f"# {conversation.title}",
        "",
        f"- conversation: {conversation.id}{'' if logged else ' ' + NOT_LOGGED}",
        f"- source: {conversation.source}",
        f"- started: {when(conversation.created_at)}",
        f"- line-up: {', '.join(lineup.get('references', []))} → {lineup.get('aggregator', '?')}"
        + (f" ({rounds} rounds)" if isinstance(rounds, int) and rounds > 1 else ""),
        f"- cost: {cost_text(priced, unpriced, calls or None).removeprefix('cost ')}",
        "",
    ]
    system = None  # each system prompt is shown before the first turn that sent it
    for turn in turns:
        lines.append(turn_markdown(turn, proposals=proposals, system=turn.system != system))
        system = turn.system
    return "\n".join(lines)


def _as_stored(value: Any) -> Any:
    """A JSON column's value as the log reads it back (keys sorted, tuples as lists)."""
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def _turn_data(turn: TurnRecord) -> dict[str, Any]:
    data = asdict(turn)
    data["lineup"], data["settings"] = _as_stored(turn.lineup), _as_stored(turn.settings)
    for call in data["calls"]:
        call["settings"] = _as_stored(call["settings"])
    return data


def conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    """Everything about the conversation; `messages` (the answered turns, a `/retry`'s answer
    in place of the one it replaced) can be sent to any chat API as is."""
    from moa_cli.store import answered_turns

    answered = answered_turns(conversation.turns)
    system = answered[-1].system if answered else None
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for turn in answered:
        messages += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.answer or ""}]
    return {
        "version": TRANSCRIPT_VERSION,
        "id": conversation.id,
        "title": conversation.title,
        "source": conversation.source,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
        "lineup": _as_stored(conversation.lineup),
        "messages": messages,
        "turns": [_turn_data(t) for t in conversation.turns],
    }


def document(conversation: ConversationRecord, fmt: str) -> str:
    """The whole transcript as `moa logs export` prints it and `/save` writes it: "md" (with
    every reference's answer) or "json"."""
    if fmt == "json":
        return json.dumps(conversation_json(conversation), ensure_ascii=False, indent=2) + "\n"
    if fmt == "md":
        return conversation_markdown(conversation, proposals=True).rstrip("\n") + "\n"
    raise ValueError(f"invalid format {fmt!r}: md or json")
