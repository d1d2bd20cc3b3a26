"""The standard streams, made safe before anything is written.

* A closed stdin (`<&-`) reads as empty input, like `</dev/null`.
* A closed stdout (`>&-`) is reported by `prepare()`, so main() stops before any model runs.
* stderr carries only progress, warnings and errors: when it is closed (`2>&-`) or fails
  (`2>/dev/full`, a reader that went away), those are dropped without a word, so the
  answer still reaches stdout. It becomes /dev/null from the first failed write on.

The freed descriptors 0, 1 and 2 are pointed at /dev/null, so a socket or file opened later
can never take their numbers and receive text meant for a terminal.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO


def _point_at_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class QuietStderr(io.TextIOWrapper):
    """stderr that never raises: after a failed write, fd 2 is /dev/null for good."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError:
            self._give_up()
            return len(text)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        try:
            _point_at_devnull(self.fileno())
            super().flush()  # what was pending goes to /dev/null, so the final flush succeeds
        except (OSError, ValueError):
            pass


def quiet_stderr(original: TextIO | io.TextIOBase | None) -> QuietStderr:
    """A line-buffered text stream on fd 2 that never raises on write or flush."""
    encoding = getattr(original, "encoding", None) or "utf-8"
    errors = getattr(original, "errors", None) or "backslashreplace"
    raw = io.FileIO(2, "w", closefd=False)
    return QuietStderr(io.BufferedWriter(raw), encoding=encoding, errors=errors, line_buffering=True)


def prepare() -> bool:
    """Make the three streams safe (see the module docstring); False when stdout is closed."""
    if sys.stdin is None and not _fd_is_open(0):
        _point_at_devnull(0)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    elif isinstance(sys.stdin, io.TextIOWrapper):
        # Bytes that are not text become U+FFFD, as `moa ask` reads them: a stray Latin-1 byte
        # in piped chat input must not end the session or fail every call of its turn.
        sys.stdin.reconfigure(errors="replace")
    if sys.stderr is None and not _fd_is_open(2):
        _point_at_devnull(2)
    if _fd_is_open(2):
        sys.stderr = quiet_stderr(sys.stderr)
    if sys.stdout is None:
        if not _fd_is_open(1):
            _point_at_devnull(1)
        return False
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        # PYTHONIOENCODING=ascii (or a C locale): an answer's é is written as \xe9, not a crash.
        sys.stdout.reconfigure(errors="backslashreplace")
    return True


def silence_stdout() -> None:
    """After stdout failed: point fd 1 at /dev/null, so the interpreter's final flush succeeds."""
    try:
        _point_at_devnull(sys.stdout.fileno() if sys.stdout is not None else 1)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass
