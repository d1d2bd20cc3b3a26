"""What `moa serve` tells its operator on stderr: one line each, never a traceback.

    moa serve: running on http://127.0.0.1:5001/v1 · models moa (alpha, beta -> judge) · auth off
    moa serve: POST /v1/chat/completions 200 1.234s model=moa upstream=3
    moa serve: refused: request headers not complete within 10s (and 41 more in the last 1s)

`--quiet` silences the start-up and access lines; refusals and errors still show, at most
one line a second per kind of refusal (with how many more there were), so a flood of bad
peers cannot flood the log. The `asyncio` and `uvicorn.error` loggers pass through
`OneLine`: a record with a traceback is logged as its message and the exception's one line,
and repeats of one message are held back the same way.
"""

from __future__ import annotations

import logging
import sys
import time

PREFIX = "moa serve: "
#: A kind of refusal, or one repeated log message, is written at most this often.
REPEAT_SECONDS = 1.0


def write(line: str) -> None:
    """One line on stderr; a closed or full stderr costs the line, never the request."""
    try:
        sys.stderr.write(PREFIX + " ".join(line.split()) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Throttle:
    """At most one line per key every REPEAT_SECONDS; the lines held back are counted."""

    def __init__(self, every: float = REPEAT_SECONDS) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(write it now?, how many were held back since the last one written)."""
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        if len(self._last) > 1024:  # keys are few kinds or messages; never let them grow unbounded
            self._last = {key: now}
        return True, self._held.pop(key, 0)


_refusals = Throttle()


def refused(kind: str, reason: str) -> None:
    """One line for a refused connection or request (throttled per kind)."""
    ok, held = _refusals.allow(kind)
    if ok:
        more = f" (and {held} more in the last {_refusals.every:g}s)" if held else ""
        write(f"refused: {reason}{more}")


class AccessLog:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def line(self, method: str, path: str, status: int, seconds: float, model: str | None, calls: int | None) -> None:
        if self.quiet:
            return
        extra = (f" model={model}" if model else "") + (f" upstream={calls}" if calls is not None else "")
        write(f"{method} {path} {status} {seconds:.3f}s{extra}")


class OneLine(logging.Filter):
    """For uvicorn's and asyncio's loggers: no traceback, and no flood of one message."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        ok, held = self._throttle.allow(str(record.msg)[:200])
        if ok and held:
            record.msg = f"{record.getMessage()} (and {held} more in the last {self._throttle.every:g}s)"
            record.args = ()
        return ok


def tame_loggers() -> None:
    """Put OneLine on the loggers a flood of bad peers writes to (once per process)."""
    for name in ("asyncio", "uvicorn.error"):
        log = logging.getLogger(name)
        if not any(isinstance(f, OneLine) for f in log.filters):
            log.addFilter(OneLine())
    # asyncio's own "exception in callback" and "accept() out of system resource" go to the
    # loop's exception handler, which logs to "asyncio": covered above.


def startup(url: str, lineup: str, auth: bool, quiet: bool) -> None:
    if not quiet:
        write(f"running on {url} · models {lineup} · auth {'on' if auth else 'off'}")
