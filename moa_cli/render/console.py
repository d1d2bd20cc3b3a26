"""The consoles moa draws on: NO_COLOR, TERM=dumb and TTY detection as rich does them."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console

REFRESH_PER_SECOND = 8


def make_console(*, stderr: bool = False, file: IO[str] | None = None, **kwargs: Any) -> Console:
    """A console that honours NO_COLOR, TERM=dumb and TTY detection (rich does all three)."""
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=False, **kwargs)
