"""Stop sequences in streamed text: cut at the first one, holding back only what could start one.

Used by `moa serve` (a request's `stop`) and by the local runtime (a chat template's stop
strings). Stdlib only.
"""

from __future__ import annotations


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back only what could start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that can go out now, whether a stop sequence was met)."""
        if not self.stops:
            return text, False
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer = self.buffer[:cut], ""
            return out, True
        keep = self._possible_start()
        out = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(out) :]
        return out, False

    def _possible_start(self) -> int:
        """Length of the longest end of the buffer that could begin a stop sequence."""
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), keep, -1):
                if self.buffer.endswith(stop[:k]):
                    keep = k
                    break
        return keep

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
