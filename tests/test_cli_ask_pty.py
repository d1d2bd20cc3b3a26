"""`moa ask` on a real terminal: Markdown rendering on stdout, live progress on stderr."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT
from tests.fakes.llm_server import FakeLLMServer, Reply

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ANSWER = "# Heading\n\nSome **bold** text.\n\n```python\nprint('hi')\n```\n"


def uses_colour(out: str) -> bool:
    """True if any SGR sequence sets a foreground or background colour."""
    for params in re.findall(r"\x1b\[([0-9;]*)m", out):
        codes = [int(c) for c in params.split(";") if c]
        if any(30 <= c <= 49 or 90 <= c <= 107 for c in codes):
            return True
    return False


def spawn_ask(env: dict[str, str], *args: str) -> str:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "moa_cli", "ask", *args],
        env=env,
        cwd=str(ROOT),
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=20,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


@pytest.mark.pty
def test_tty_answer_is_rendered_markdown(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text=ANSWER, token_delay=0.005))
    out = spawn_ask({**moa_env, "TERM": "xterm-256color"}, "-r", "alpha", "-a", "judge", "hi")
    plain = ANSI.sub("", out)
    assert "Heading" in plain and "# Heading" not in plain  # rendered, not raw
    assert "**bold**" not in plain and "```" not in plain
    assert uses_colour(out)  # colours on a colour terminal
    assert "tokens" in plain  # the footer


@pytest.mark.pty
def test_no_color_on_a_tty_has_no_colour_codes(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text=ANSWER))
    out = spawn_ask({**moa_env, "TERM": "xterm-256color", "NO_COLOR": "1"}, "-r", "alpha", "-a", "judge", "hi")
    assert not uses_colour(out)
    assert "Heading" in ANSI.sub("", out)
