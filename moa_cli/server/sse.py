"""chat.completion and chat.completion.chunk objects, and their Server-Sent Events encoding.

A stream is: a role chunk (`delta: {"role": "assistant", "content": ""}`), content chunks as
the aggregator's tokens arrive, the tool calls once checked (per call, a chunk with its
index, id and name, then its arguments in pieces, as OpenAI streams them), a chunk with `finish_reason`, with `include_usage` one chunk
with `choices: []` and the usage, then `data: [DONE]`. An error after the start is one
`data: {"error": {...}}` event and the end of the body. `: comment` lines keep proxies awake.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from moa_cli.types import ToolCall

#: Characters of a tool call's arguments per streamed piece.
ARGUMENT_PIECE = 24

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(obj).encode() + b"\n\n"


def comment(text: str) -> bytes:
    """An SSE comment: clients ignore it, proxies see bytes flowing."""
    return b": " + " ".join(text.split()).encode() + b"\n\n"


@dataclass(slots=True)
class Completion:
    """One response's identity: the same id and `created` on every chunk."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            obj["usage"] = None
        obj.update(extra)
        return event(obj)

    def role(self) -> bytes:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def content(self, text: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def reasoning(self, text: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}])

    def tool_calls(self, calls: list[ToolCall]) -> list[bytes]:
        """The chunks of the answer's tool calls: each call's head, then its arguments in pieces."""
        chunks: list[bytes] = []
        for index, call in enumerate(calls):
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            chunks.append(self._chunk([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]))
            for start in range(0, len(call.arguments), ARGUMENT_PIECE):
                piece = {"index": index, "function": {"arguments": call.arguments[start : start + ARGUMENT_PIECE]}}
                chunks.append(self._chunk([{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]))
        return chunks

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, usage: dict[str, Any] | None, moa: dict[str, Any]) -> bytes:
        return self._chunk([], usage=usage, moa=moa)

    def whole(
        self,
        text: str,
        finish_reason: str,
        usage: dict[str, Any] | None,
        moa: dict[str, Any],
        tool_calls: list[ToolCall] | None = None,
    ) -> dict[str, Any]:
        """The non-streaming `chat.completion` object."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message = {"role": "assistant", "content": text or None, "tool_calls": [c.to_dict() for c in tool_calls]}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage,
            "moa": moa,
        }
