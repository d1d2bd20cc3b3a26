"""The consoles moa draws on: NO_COLOR as terminal.colour_off reads it; TERM=dumb and TTY detection as rich does."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console

from moa_cli.terminal import colour_off

REFRESH_PER_SECOND = 8


def make_console(*, stderr: bool = False, file: IO[str] | None = None, **kwargs: Any) -> Console:
    """A console that honours NO_COLOR (told, rather than left to rich to read), TERM=dumb and TTY detection."""
    kwargs.setdefault("no_color", colour_off())
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=False, **kwargs)
