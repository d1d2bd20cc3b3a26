"""chat.completion and chat.completion.chunk objects, and their Server-Sent Events encoding.

A stream is: a role chunk (`delta: {"role": "assistant", "content": ""}`), content chunks as
the aggregator's tokens arrive, a chunk with `finish_reason`, with `include_usage` one chunk
with `choices: []` and the usage, then `data: [DONE]`. An error after the start is one
`data: {"error": {...}}` event and the end of the body. `: comment` lines keep proxies awake.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, usage: dict[str, Any] | None, moa: dict[str, Any]) -> bytes:
        return self._chunk([], usage=usage, moa=moa)

    def whole(self, text: str, finish_reason: str, usage: dict[str, Any] | None, moa: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming `chat.completion` object."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage,
            "moa": moa,
        }
