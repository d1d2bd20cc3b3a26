"""Tool calls through the mixture: the references advise in prose, the aggregator alone acts.

    references   see the conversation as text: an assistant's tool calls as a line saying
                 what was called with what, each tool result as a user message, and the
                 tool definitions in their system message (`reference_note`); they answer
                 in prose (which tool to call, with what, or the answer itself)
    aggregator   gets the conversation as it is (OpenAI-shaped, `tool_calls` and `tool`
                 messages), the real `tools` and `tool_choice`, and the references' answers
                 in its system message; it may answer with `tool_calls`

`for_aggregator` turns the engine's aggregator request into that call; `join_tool_calls`
joins a stream's `ToolCallDelta` pieces into calls; `check_tool_calls` says what is wrong
with them (arguments that are not one JSON object, a tool that was not offered).
Stdlib only, besides moa's own value types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from moa_cli.types import AgentSpec, CompletionRequest, Message, ToolCall, ToolCallDelta

__all__ = [
    "check_tool_calls",
    "conversation_as_text",
    "for_aggregator",
    "join_tool_calls",
    "reference_note",
    "tool_names",
]

_NOTE = """\
The assistant that writes the final reply can call the tools below; the tool calls already \
made and their results are in the conversation. Do not write a tool call yourself: say in \
prose whether a tool should be called now, which one and with which arguments (as JSON), and \
why; or, when the results in the conversation are enough, write the answer itself.

Tools:
{tools}"""


def tool_names(tools: Iterable[dict[str, Any]]) -> list[str]:
    return [str((t.get("function") or {}).get("name", "")) for t in tools]


def reference_note(tools: Sequence[dict[str, Any]], tool_choice: Any = None) -> str:
    """The tool definitions as the references read them (an empty string without tools)."""
    if not tools:
        return ""
    lines: list[str] = []
    for tool in tools:
        function = tool.get("function") or {}
        line = f"- {function.get('name')}"
        if function.get("description"):
            line += f": {' '.join(str(function['description']).split())}"
        if function.get("parameters"):
            line += f"\n  parameters (JSON Schema): {json.dumps(function['parameters'], ensure_ascii=False)}"
        lines.append(line)
    note = _NOTE.format(tools="\n".join(lines))
    if tool_choice == "required":
        note += "\n\nThe reply must call a tool."
    elif tool_choice == "none":
        note += "\n\nThe reply must not call a tool: answer in prose."
    elif isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name:
            note += f"\n\nThe reply must call the tool {name}."
    return note


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _call_line(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    return f"[called the tool {function.get('name')} with arguments {function.get('arguments') or '{}'} (call id {call.get('id')})]"


def conversation_as_text(conversation: Sequence[dict[str, Any]], note: str = "") -> list[Message]:
    """The conversation as plain messages the references (and any model) can read.

    An assistant's tool calls become a line each in its text, a tool result a user message
    naming the call it answers; consecutive messages of one role are joined. `note` (the
    tool definitions) is added to the system message, which is put first if there is none.
    """
    names: dict[str, str] = {}
    out: list[Message] = []

    def add(role: str, text: str) -> None:
        if out and out[-1]["role"] == role and role != "system":
            out[-1] = {"role": out[-1]["role"], "content": f"{out[-1]['content']}\n\n{text}"}
        else:
            out.append({"role": role, "content": text})  # type: ignore[typeddict-item]

    for message in conversation:
        role = message.get("role")
        text = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            calls = list(message["tool_calls"])
            for call in calls:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            text = "\n".join([text, *(_call_line(c) for c in calls)]).strip()
            add("assistant", text)
        elif role == "tool":
            call_id = str(message.get("tool_call_id"))
            name = names.get(call_id, "a tool")
            add("user", f"[result of {name} (call id {call_id})]\n{text}")
        elif role in ("system", "developer"):
            add("system", text)
        else:
            add(str(role), text)
    if note:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def for_aggregator(request: CompletionRequest, spec: AgentSpec, note: str = "") -> CompletionRequest:
    """The aggregator's call of an agent's turn: the real conversation, tools and format.

    `request.messages` is the engine's (the text conversation, the references' answers in
    its system message); that system message, less the references' tool `note`, leads the
    real conversation (less its own system message, which the text one already holds).
    """
    messages = request.messages
    wire: list[dict[str, Any]] = []
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"]
        if note:
            system = system.replace(f"\n\n{note}", "").replace(note, "").strip()
        if system:
            wire.append({"role": "system", "content": system})
    wire += [dict(m) for m in spec.conversation if m.get("role") not in ("system", "developer")]
    return replace(
        request,
        wire_messages=tuple(wire),
        tools=spec.tools,
        tool_choice=spec.tool_choice if spec.tools else None,
        response_format=spec.response_format,
    )


def join_tool_calls(pieces: Sequence[ToolCallDelta]) -> list[ToolCall]:
    """A stream's tool-call pieces as whole calls, by index (an id is made up if none came)."""
    calls: dict[int, dict[str, str]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["name"] += piece.name if call["name"] != piece.name else ""
        call["arguments"] += piece.arguments
    return [
        ToolCall(c["id"] or f"call_{index}", c["name"], c["arguments"] or "{}") for index, c in sorted(calls.items())
    ]


def check_tool_calls(calls: Sequence[ToolCall], tools: Sequence[dict[str, Any]]) -> str | None:
    """What is wrong with the calls (one line), or None: each names an offered tool and its
    arguments are one JSON object."""
    offered = set(tool_names(tools))
    for call in calls:
        if call.name not in offered:
            return f"the tool call {call.id} names {call.name!r}, which is not one of the tools ({', '.join(sorted(offered))})"
        try:
            value = json.loads(call.arguments)
        except ValueError as exc:
            return f"the arguments of the tool call {call.id} ({call.name}) are not valid JSON: {exc}"
        if not isinstance(value, dict):
            return f"the arguments of the tool call {call.id} ({call.name}) are not a JSON object"
    return None
