"""A chat-completions request body, parsed and checked into moa's types.

Lenient where clients are strict by habit: the fields they always send (`user`, `n: 1`,
`logit_bias: {}`, `metadata`, `store`, `parallel_tool_calls`,
`stream_options`, ...) are accepted, and unknown fields are ignored. Strict where an
answer would not be what the client asked for: `n > 1`, `logprobs`, the legacy `functions`,
non-text content. Every 400 names the field (`param`).

Agents' fields (tools.py, structured.py): `tools` (function tools), `tool_choice`,
`response_format` (`json_object`, `json_schema`; the schema is checked against its
metaschema) and a history with assistant `tool_calls` and `tool` messages. Such a request
keeps its messages as sent in `conversation`; `messages` is then that conversation as text.

Sampling fields apply to the aggregator only: stop sequences would cut the proposals
short, and the references keep the line-up's settings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from moa_cli.server.errors import ApiError, bad_request
from moa_cli.settings import INT32_MAX, INT64_MAX, INT64_MIN, SPECS
from moa_cli.structured import check_response_format
from moa_cli.tools import conversation_as_text
from moa_cli.types import Message

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_SEQUENCES = 4
#: The line-up settings a request may change with `{"moa": {...}}` (with --allow-overrides):
#: settings.py marks them (`Spec.overridable`).
OVERRIDABLE = tuple(name for name, spec in SPECS.items() if spec.overridable)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a client asked for. None means "not given": the line-up's setting applies."""

    model: str
    messages: list[Message]
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # {"moa": {...}}: line-up changes
    # An agent's request: the messages as sent (with tool calls and results), the tools and format.
    conversation: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @property
    def agentic(self) -> bool:
        """Tools, a JSON format or tool calls in the history: the turn goes through structured.py."""
        return bool(self.tools or self.response_format or self.conversation)

    @property
    def with_tools(self) -> bool:
        """Tools offered, or tool calls and results in the history: what a local aggregator cannot do."""
        return bool(self.tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in self.conversation)

    def agent_fields(self) -> dict[str, Any]:
        """What an agent's request adds to the messages (empty for a plain chat request)."""
        if not self.agentic:
            return {}
        return {
            "conversation": list(self.conversation),
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "response_format": self.response_format,
        }


def parse_chat(body: Any) -> ChatRequest:
    """The request, or ApiError(400) naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model is required: a model id from GET /v1/models", "model")
    _reject_what_changes_the_answer(body)
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = options is not None and _bool(options, "include_usage", "stream_options.include_usage")
    max_tokens = _int(body, "max_completion_tokens", 1, INT32_MAX)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, INT32_MAX)
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    try:
        response_format = check_response_format(body.get("response_format"))
    except ValueError as exc:
        raise bad_request(str(exc), "response_format") from None
    raw_messages = body.get("messages")
    with_tool_calls = isinstance(raw_messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in raw_messages
    )
    if tools or response_format is not None or with_tool_calls:
        conversation = parse_conversation(raw_messages)
        messages = conversation_as_text(conversation)
    else:
        conversation, messages = (), parse_messages(raw_messages)
    return ChatRequest(
        model=model.strip(),
        messages=messages,
        stream=stream,
        include_usage=stream and include_usage,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0),
        max_tokens=max_tokens,
        stop=_stop(body.get("stop")),
        seed=_int(body, "seed", INT64_MIN, INT64_MAX),
        overrides=_overrides(body.get("moa")),
        conversation=conversation if with_tool_calls or tools or response_format else (),
        tools=tools,
        tool_choice=tool_choice if tools else None,
        response_format=response_format,
    )


def _reject_what_changes_the_answer(body: dict[str, Any]) -> None:
    n = _int(body, "n", 1, INT32_MAX)
    if n is not None and n > 1:
        raise bad_request("n must be 1: moa writes one answer per request", "n", "unsupported_value")
    if body.get("logprobs"):
        raise bad_request(
            "logprobs are not available: the answer is written by an aggregator", "logprobs", "unsupported_value"
        )
    if body.get("top_logprobs") is not None:
        raise bad_request("top_logprobs are not available", "top_logprobs", "unsupported_value")
    if body.get("functions") or body.get("function_call"):
        name = "functions" if body.get("functions") else "function_call"
        raise bad_request(
            f"{name}: the legacy function-calling fields are not supported; send tools (and tool_choice)",
            name,
            "unsupported_value",
        )


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _tools(raw: Any) -> tuple[dict[str, Any], ...]:
    """Function tools, as sent; [] and null are none."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request("tools must be a list of function tools", "tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f'{where} must be {{"type": "function", "function": {{...}}}} (only function tools are supported)', where, "unsupported_value")  # fmt: skip
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}.function.name is required", f"{where}.function.name")
        if not _NAME.fullmatch(function["name"]):
            raise bad_request(f"{where}.function.name must be 1-64 letters, digits, _ or -", f"{where}.function.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_request(
                f"{where}.function.parameters must be a JSON Schema object", f"{where}.function.parameters"
            )
        tools.append(tool)
    names = [t["function"]["name"] for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise bad_request(f"tools: two tools are named {duplicate!r}", "tools")
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[dict[str, Any], ...]) -> Any:
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if tools and name not in {t["function"]["name"] for t in tools}:
            raise bad_request(f"tool_choice names {name!r}, which is not one of the tools", "tool_choice")
        return raw
    raise bad_request('tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}', "tool_choice")  # fmt: skip


def parse_conversation(raw: Any) -> tuple[dict[str, Any], ...]:
    """An agent's messages, kept as OpenAI shapes them: also assistant `tool_calls` and `tool` results.

    Checked as parse_messages checks them; the last message is the user's or a tool result.
    """
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object with role and content", where)
        role = item.get("role")
        if role == "tool":
            call_id = item.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in ids:
                raise bad_request(f"{where}.tool_call_id must name a tool call of an earlier assistant message", f"{where}.tool_call_id")  # fmt: skip
            out.append({"role": "tool", "tool_call_id": call_id, "content": _content(item.get("content"), where)})
            continue
        if role == "assistant" and item.get("tool_calls"):
            calls = _tool_calls(item["tool_calls"], where)
            ids.update(c["id"] for c in calls)
            content = item.get("content")
            text = "" if content is None else _content(content, where)
            out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
            continue
        out.extend(dict(m) for m in parse_messages([item], where_from=i, last_user=False))
    if out[-1]["role"] not in ("user", "tool"):
        raise bad_request("the last message must be the user's or a tool result", f"messages[{len(out) - 1}].role")
    return tuple(out)


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    calls: list[dict[str, Any]] = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not isinstance(function, dict):
            raise bad_request(f"{at} must have an id and a function", at)
        if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments", ""), str):
            raise bad_request(f"{at}.function needs a name and arguments (a JSON string)", f"{at}.function")
        calls.append(
            {"id": call["id"], "type": "function", "function": {"name": function["name"], "arguments": function.get("arguments", "")}}
        )  # fmt: skip
    return calls


def parse_messages(raw: Any, *, where_from: int = 0, last_user: bool = True) -> list[Message]:
    if raw is None:
        raise bad_request("messages is required: a non-empty list", "messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    messages: list[Message] = []
    for i, item in enumerate(raw, start=where_from):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object with role and content", where)
        role = item.get("role")
        if role not in _ROLES:
            shown = role if isinstance(role, str) else type(role).__name__
            raise bad_request(
                f"{where}.role {shown!r} is not supported (system, user or assistant)", f"{where}.role", "invalid_role"
            )
        messages.append({"role": _ROLES[role], "content": _content(item.get("content"), where)})  # type: ignore[typeddict-item]
    if last_user and messages[-1]["role"] != "user":
        raise bad_request("the last message must be the user's", f"messages[{len(messages) - 1}].role")
    return messages


def _content(content: Any, where: str) -> str:
    return _unicode(text_of(content, where), where)


def _unicode(text: str, where: str) -> str:
    """JSON may escape a lone surrogate (\\ud800): no upstream can take it; say so here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            f"{where}.content is not valid Unicode (a lone surrogate at character {exc.start})", f"{where}.content"
        ) from None
    return text


def text_of(content: Any, where: str, kinds: tuple[str, ...] = ("text",)) -> str:
    """A message's content as one string: a string, or a list of text parts (of `kinds`: the
    Responses API also names them input_text and output_text); anything else is a 400."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in kinds or not isinstance(part.get("text"), str):
                shown = f" ({kind})" if isinstance(kind, str) else ""
                raise bad_request(
                    f"{where}.content[{j}]: only text parts are supported{shown}",
                    f"{where}.content[{j}]",
                    "unsupported_value",
                )
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise bad_request(f"{where}.content is required", f"{where}.content")
    raise bad_request(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{param or name} must be true or false", param or name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number", name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low:g} and {high:g} (got {value:g})", name)
    return float(value)


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be a whole number", name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high} (got {value})", name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    return tuple(s for s in stops if s)


def _overrides(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"moa must be an object: {{{', '.join(OVERRIDABLE)}}}", "moa")
    unknown = sorted(set(value) - set(OVERRIDABLE))
    if unknown:
        raise bad_request(
            f"moa.{unknown[0]} cannot be set by a request (only {', '.join(OVERRIDABLE)})", f"moa.{unknown[0]}"
        )
    return dict(value)


def read_json(raw: bytes) -> Any:
    """The body as JSON, or ApiError(400) saying where it is broken."""
    import json

    if not raw.strip():
        raise bad_request("the request body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise bad_request("the request body nests too deeply") from None


__all__ = ["OVERRIDABLE", "ApiError", "ChatRequest", "parse_chat", "parse_conversation", "parse_messages", "read_json"]
