"""One decoder for server-sent events, as the WHATWG HTML standard defines the format.

    decoder = SSEDecoder()
    for event in decoder.feed(chunk_of_bytes): ...   # as bytes arrive
    for event in decoder.end(): ...                  # at the end of the body

Lines end in CRLF, LF or CR; a line starting with ":" is a comment; `data:` lines are
joined with "\\n"; `event:`, `id:` and `retry:` are kept; a blank line dispatches the event.
One leniency, as the SDKs have it: an event the body ends in without a blank line is
dispatched too. `saw_sse` says whether any line looked like SSE (a comment or a known
field), so a caller can tell a stream that ended early from a body that is not a stream.
`max_event` bounds the bytes one pending event may hold (`EventTooLarge` past it).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

_BREAK = re.compile(r"\r\n|\r|\n")
_FIELDS = frozenset({"data", "event", "id", "retry"})


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class EventTooLarge(ValueError):
    """One event (or one line) grew past the decoder's `max_event` bytes."""


class SSEDecoder:
    def __init__(self, *, max_event: int | None = None) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False
        self._last_cr = False
        self.max_event = max_event
        self.saw_sse = False

    def feed(self, chunk: bytes) -> Iterator[Event]:
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._last_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        self._last_cr = text.endswith("\r")
        self._buffer += text
        yield from self._lines(final=False)

    def end(self) -> Iterator[Event]:
        self._buffer += self._utf8.decode(b"", final=True)
        yield from self._lines(final=True)
        if self._data:
            yield self._take()

    def _lines(self, *, final: bool) -> Iterator[Event]:
        buffer, self._buffer = self._buffer, ""
        bare_lf = "\r" not in buffer  # the usual case: LF only, no regex needed
        if final:
            complete = buffer
        else:
            cut = (buffer.rfind("\n") if bare_lf else max(buffer.rfind("\n"), buffer.rfind("\r"))) + 1
            complete, self._buffer = buffer[:cut], buffer[cut:]
            if self.max_event is not None and len(self._buffer) > self.max_event:
                raise EventTooLarge(f"an event line longer than {self.max_event} bytes")
        lines = complete.split("\n") if bare_lf else _BREAK.split(complete)
        if not final or complete.endswith(("\n", "\r")):
            lines.pop()  # what follows the last line break: empty, or kept for the next chunk
        for line in lines:
            if not line:
                if self._data:
                    yield self._take()
                else:
                    self._event = ""
                continue
            if line.startswith(":"):
                self.saw_sse = True
                continue
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if name in _FIELDS:
                self.saw_sse = True
            if name == "data":
                self._data.append(value)
                self._size += len(value) + 1
                if self.max_event is not None and self._size > self.max_event:
                    raise EventTooLarge(f"an event larger than {self.max_event} bytes")
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._id = value
            elif name == "retry" and value.isdigit():
                self._retry = int(value)

    def _take(self) -> Event:
        """Dispatch the pending event (there is data): one line of data is the common case."""
        data, event = self._data, self._event
        self._data, self._size, self._event = [], 0, ""
        return Event(data[0] if len(data) == 1 else "\n".join(data), event or "message", self._id, self._retry)
