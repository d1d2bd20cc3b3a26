"""What a line is: an exit word, a command, or a prompt (and `//` to send a leading slash)."""

from __future__ import annotations

import pytest

from moa_cli.repl.slash import Line, read


@pytest.mark.parametrize(
    ("line", "interactive", "piped"),
    [
        ("", Line("empty"), Line("empty")),
        ("  exit ", Line("exit"), Line("exit")),
        ("/help", Line("command", "/help"), Line("command", "/help")),
        ("/quit", Line("command", "/quit"), Line("command", "/quit")),  # an alias is known
        ("/", Line("command", "/"), Line("command", "/")),  # a lone slash is /help
        ("/hepl", Line("command", "/hepl"), Line("prompt", "/hepl")),  # the typo help, at a terminal
        ("/etc is a directory?", Line("command", "/etc is a directory?"), Line("prompt", "/etc is a directory?")),
        ("/usr/bin is what?", Line("prompt", "/usr/bin is what?"), Line("prompt", "/usr/bin is what?")),
        ("//help", Line("prompt", "/help"), Line("prompt", "/help")),
        ("//etc is x", Line("prompt", "/etc is x"), Line("prompt", "/etc is x")),
        ("hello", Line("prompt", "hello"), Line("prompt", "hello")),
    ],
)
def test_read(line: str, interactive: Line, piped: Line) -> None:
    assert read(line) == interactive
    assert read(line, known_only=True) == piped
