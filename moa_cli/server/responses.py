"""The Responses API subset agents use (`POST /v1/responses`), on top of chat completions.

    to_chat(body)                   a Responses request as the chat-completions body it means
    Reply(model, body)              the `response` object and its stream events for one turn

What is served: `input` as a string or as items (`message` with text parts, `function_call`,
`function_call_output`; `reasoning` items are skipped), `instructions`, function `tools`,
`tool_choice`, `text.format` (`text`, `json_object`, `json_schema`), `max_output_tokens`,
`temperature`, `top_p`, `stream`. Nothing is stored: `previous_response_id` and
`conversation` are refused (send the whole input, as openai-agents does by default), and so
are hosted tools (web search, file search, ...), non-text input and `background`.

The turn itself is the chat-completions one (turns.py): the body is translated, parsed and
checked by schema.py, and its outcome written back as a `response`. A stream is
`response.created`, `response.in_progress`, the message item (`output_item.added`,
`content_part.added`, `output_text.delta`s, `output_text.done`, `content_part.done`,
`output_item.done`) as the aggregator writes, each function call item with its arguments,
then `response.completed` holding the whole response (`response.incomplete`, with
`incomplete_details.reason` "max_output_tokens", when the answer was cut at the limit). A failure after the start is one
`error` event, then `response.failed`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from moa_cli.server.errors import ApiError, bad_request
from moa_cli.types import ToolCall

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
                shown = f" ({kind})" if isinstance(kind, str) else ""
                raise bad_request(f"{where}.content[{j}]: only text parts are supported{shown}", f"{where}.content[{j}]", "unsupported_value")  # fmt: skip
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("instructions must be a string", "instructions")
        if instructions.strip():
            messages.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise bad_request("input is required: a string or a non-empty list of items", "input")
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise bad_request(f"{where}.role must be user, system, developer or assistant", f"{where}.role")
            messages.append({"role": role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise bad_request(f"{where}: a function_call needs call_id and name", where)
            arguments = item.get("arguments", "")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one assistant turn, several calls
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, where)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # a model's own reasoning summary: nothing for the mixture to read
        else:
            raise bad_request(f"{where}: input items of type {kind!r} are not supported", f"{where}.type", "unsupported_value")  # fmt: skip
    return messages


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_request("tools must be a list", "tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise bad_request(f"tools[{i}]: only function tools are served (not {kind!r})", f"tools[{i}]", "unsupported_value")  # fmt: skip
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    return raw


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_request("text must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad_request("text.format must be an object", "text.format")
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    return {"type": fmt.get("type")}


def to_chat(body: Any) -> dict[str, Any]:
    """The chat-completions body a Responses request means (ApiError 400 for what is not served)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name in ("previous_response_id", "conversation"):
        if body.get(name):
            raise bad_request(f"{name}: moa stores no responses; send the whole conversation as input", name, "unsupported_value")  # fmt: skip
    if body.get("background"):
        raise bad_request("background responses are not supported", "background", "unsupported_value")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body), "stream": body.get("stream")}
    for source, target in (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens")):
        if body.get(source) is not None:
            chat[target] = body[source]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    return chat


class Reply:
    """One response's identity and the objects and events that describe it."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self.body = body
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self._sequence = 0
        self._text: list[str] = []
        self._open = False  # the message item has been announced

    # ------------------------------------------------------------------ objects

    def _message(self, text: str, status: str) -> dict[str, Any]:
        return {
            "type": "message", "id": self.message_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else [],
        }  # fmt: skip

    @staticmethod
    def _function_call(call: ToolCall, status: str, arguments: str | None = None) -> dict[str, Any]:
        return {
            "type": "function_call", "id": f"fc_{call.id}", "call_id": call.id, "name": call.name,
            "arguments": call.arguments if arguments is None else arguments, "status": status,
        }  # fmt: skip

    def response(
        self,
        status: str,
        text: str = "",
        tool_calls: list[ToolCall] | None = None,
        usage: dict[str, Any] | None = None,
        moa: dict[str, Any] | None = None,
        error: ApiError | None = None,
    ) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if text:
            output.append(self._message(text, "completed"))
        output += [self._function_call(c, "completed") for c in tool_calls or []]
        b = self.body
        obj: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": output, "error": None, "incomplete_details": None,
            "instructions": b.get("instructions"), "metadata": b.get("metadata") or {},
            "parallel_tool_calls": b.get("parallel_tool_calls", True), "temperature": b.get("temperature"),
            "top_p": b.get("top_p"), "tool_choice": b.get("tool_choice", "auto"), "tools": b.get("tools") or [],
            "max_output_tokens": b.get("max_output_tokens"), "text": b.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "store": False, "usage": _usage(usage),
        }  # fmt: skip
        if status == "incomplete":  # the aggregator stopped at max_output_tokens
            obj["incomplete_details"] = {"reason": "max_output_tokens"}
        if error is not None:
            obj["error"] = {"code": error.code or "server_error", "message": error.message}
        if moa is not None:
            obj["moa"] = moa
        return obj

    # ------------------------------------------------------------------ events

    def event(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: ".encode() + _dumps(obj).encode() + b"\n\n"

    def start(self) -> list[bytes]:
        started = self.response("in_progress")
        return [self.event("response.created", response=started), self.event("response.in_progress", response=started)]

    def text(self, delta: str) -> list[bytes]:
        out: list[bytes] = []
        if not self._open:
            self._open = True
            out.append(self.event("response.output_item.added", output_index=0, item=self._message("", "in_progress")))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self.event("response.content_part.added", item_id=self.message_id, output_index=0, content_index=0, part=part))  # fmt: skip
        self._text.append(delta)
        out.append(self.event("response.output_text.delta", item_id=self.message_id, output_index=0, content_index=0, delta=delta, logprobs=[]))  # fmt: skip
        return out

    def finish(
        self, status: str, tool_calls: list[ToolCall], usage: dict[str, Any] | None, moa: dict[str, Any]
    ) -> list[bytes]:
        out: list[bytes] = []
        text = "".join(self._text)
        index = 0
        if self._open:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(self.event("response.output_text.done", item_id=self.message_id, output_index=0, content_index=0, text=text, logprobs=[]))  # fmt: skip
            out.append(self.event("response.content_part.done", item_id=self.message_id, output_index=0, content_index=0, part=part))  # fmt: skip
            out.append(self.event("response.output_item.done", output_index=0, item=self._message(text, "completed")))
            index = 1
        for n, call in enumerate(tool_calls, start=index):
            item_id = f"fc_{call.id}"
            out.append(self.event("response.output_item.added", output_index=n, item=self._function_call(call, "in_progress", "")))  # fmt: skip
            out.append(self.event("response.function_call_arguments.delta", item_id=item_id, output_index=n, delta=call.arguments))  # fmt: skip
            out.append(self.event("response.function_call_arguments.done", item_id=item_id, output_index=n, name=call.name, arguments=call.arguments))  # fmt: skip
            out.append(self.event("response.output_item.done", output_index=n, item=self._function_call(call, "completed")))  # fmt: skip
        done = self.response(status, text, tool_calls, usage, moa)
        out.append(self.event(f"response.{status}", response=done))
        return out

    def failed(self, error: ApiError) -> list[bytes]:
        return [
            # With its "error" object, which makes the openai client raise it as an APIError.
            self.event("error", code=error.code, message=error.message, param=error.param, error=error.body()["error"]),
            self.event("response.failed", response=self.response("failed", "".join(self._text), error=error)),
        ]


def status_of(finish_reason: str) -> str:
    """A response's status for the aggregator's finish reason."""
    return "incomplete" if finish_reason == "length" else "completed"


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.get("prompt_tokens") or 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.get("completion_tokens") or 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens") or 0,
    }
