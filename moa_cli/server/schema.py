"""A chat-completions request body, parsed and checked into moa's types.

Lenient where clients are strict by habit: the fields they always send (`user`, `n: 1`,
`logit_bias: {}`, `metadata`, `store`, `parallel_tool_calls`,
`stream_options`, ...) are accepted, and unknown fields are ignored. Strict where an
answer would not be what the client asked for: `n > 1`, `logprobs`, any tools (tool calling is not supported yet),
a JSON response format, non-text content. Every 400 names the field (`param`).

Sampling fields apply to the aggregator only: stop sequences would cut the proposals
short, and the references keep the line-up's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moa_cli.server.errors import ApiError, bad_request
from moa_cli.settings import INT32_MAX, INT64_MAX, INT64_MIN
from moa_cli.types import Message

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_SEQUENCES = 4
#: The line-up settings a request may change with `{"moa": {...}}` (with --allow-overrides).
OVERRIDABLE = ("references", "aggregator", "rounds", "layer_deadline", "quorum", "aggregation", "reference_max_tokens")


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
    return ChatRequest(
        model=model.strip(),
        messages=parse_messages(body.get("messages")),
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
    for name in ("tools", "functions"):
        if body.get(name):
            # Agents would answer in prose and never call one: say so rather than drop them.
            raise bad_request(
                f"{name}: tool calling is not supported yet; send the request without {name}",
                name,
                "unsupported_value",
            )
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise bad_request(
                "response_format must be text: moa cannot promise JSON output", "response_format", "unsupported_value"
            )


def parse_messages(raw: Any) -> list[Message]:
    if raw is None:
        raise bad_request("messages is required: a non-empty list", "messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object with role and content", where)
        role = item.get("role")
        if role not in _ROLES:
            shown = role if isinstance(role, str) else type(role).__name__
            raise bad_request(
                f"{where}.role {shown!r} is not supported (system, user or assistant)", f"{where}.role", "invalid_role"
            )
        if role == "assistant" and item.get("tool_calls"):
            raise bad_request(f"{where}: tool calls are not supported", f"{where}.tool_calls", "unsupported_value")
        messages.append({"role": _ROLES[role], "content": _content(item.get("content"), where)})  # type: ignore[typeddict-item]
    if messages[-1]["role"] != "user":
        raise bad_request("the last message must be the user's", f"messages[{len(messages) - 1}].role")
    return messages


def _content(content: Any, where: str) -> str:
    return _unicode(_text_of(content, where), where)


def _unicode(text: str, where: str) -> str:
    """JSON may escape a lone surrogate (\\ud800): no upstream can take it; say so here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            f"{where}.content is not valid Unicode (a lone surrogate at character {exc.start})", f"{where}.content"
        ) from None
    return text


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
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


__all__ = ["OVERRIDABLE", "ApiError", "ChatRequest", "parse_chat", "parse_messages", "read_json"]
