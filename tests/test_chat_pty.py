"""`moa chat` on a real pseudo-terminal: the prompt, live turns, Ctrl-C and Ctrl-D.

Every step waits for output (`expect`), never for time: a key sent while the prompt is
not reading (between two prompts) would be lost.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_moa
from tests.fakes.helpers import without_references
from tests.fakes.llm_server import FakeLLMServer, Reply

pexpect = pytest.importorskip("pexpect")

PROMPT = ">>>"  # not ">>> ": the trailing space is drawn as a cursor move
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINEUP = ["-r", "ref-a", "-r", "ref-b", "-a", "agg"]


def spawn_chat(env: dict[str, str], *args: str, **extra_env: str) -> tuple[Any, StringIO]:
    log = StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "moa_cli", "chat", *args],
        env={**env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", **extra_env},
        cwd=str(ROOT),
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=10,
    )
    child.logfile_read = log
    child.expect(PROMPT)
    return child, log


def ctrl_d_exits_cleanly(child: Any, log: StringIO) -> str:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", log.getvalue())
    assert child.exitstatus == 0, screen
    assert "Traceback" not in screen
    return screen


def drawn(text: str) -> str:
    """A regex for `text` as a terminal may draw it: in pieces, with control codes between."""
    return f"(?:{ANSI.pattern})*".join(re.escape(char) for char in text)


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll a condition on the (in-process) fake server."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def user_turns(server: FakeLLMServer, model: str) -> list[list[str]]:
    return [
        [f"{m['role']}: {m['content']}" for m in without_references(r.messages) if m["role"] != "system"]
        for r in server.requests_for(model)
    ]


@pytest.mark.pty
def test_two_turns_with_progress_markdown_and_a_multi_line_prompt(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    llm_server.script("agg", Reply(text="# Paris\n\nThe **capital**."), Reply(text="About 2.1 million."))
    child, log = spawn_chat(moa_env, *LINEUP)
    child.sendline("Capital of France?")
    child.expect("capital")
    child.expect(r"\d+ tokens · 3 calls")  # the footer
    child.expect(PROMPT)
    child.send("And its\x1b\rpopulation?\r")  # Esc-Enter: a new line in the same message
    child.expect("million")
    child.expect("calls")
    child.expect(PROMPT)
    screen = ctrl_d_exits_cleanly(child, log)

    assert "moa · ref-a, ref-b → agg · /help" in screen  # the banner
    assert "**capital**" not in screen and "# Paris" not in screen  # rendered Markdown
    assert user_turns(llm_server, "agg")[1] == [
        "user: Capital of France?",
        "assistant: # Paris\n\nThe **capital**.",
        "user: And its\npopulation?",
    ]


@pytest.mark.pty
def test_ctrl_c_cancels_a_slow_turn_and_never_kills_the_repl(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    llm_server.script("ref-a", Reply(latency=30))
    llm_server.set_default("agg", Reply(text="Fast answer."))
    child, log = spawn_chat(moa_env, *LINEUP)
    child.sendline("slow question")
    child.expect("running")  # the live progress panel
    wait_for(lambda: bool(llm_server.requests_for("ref-a")))  # in flight, not just started
    child.sendintr()
    child.expect("cancelled")
    child.expect(PROMPT)
    for _ in range(2):  # Ctrl-C at the prompt: a hint, and the prompt again
        child.sendintr()
        child.expect("quits")
        child.expect(PROMPT)
    child.sendline("next question")
    child.expect("Fast answer")
    child.expect("calls")
    child.expect(PROMPT)
    ctrl_d_exits_cleanly(child, log)

    llm_server.wait_until_idle()
    assert llm_server.requests_for("ref-a")[0].disconnected  # its stream was closed at once
    for model in ("ref-a", "ref-b", "agg"):
        assert user_turns(llm_server, model)[-1] == ["user: next question"]


def colour_codes(output: str) -> list[str]:
    """SGR sequences that set a foreground or background colour."""
    found = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", output):
        codes = [int(c) for c in params.split(";") if c]
        if any(30 <= c <= 49 or 90 <= c <= 107 for c in codes):
            found.append(params)
    return found


@pytest.mark.pty
def test_tab_completion_exit_words_and_no_color(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    child, log = spawn_chat(moa_env, *LINEUP, NO_COLOR="1")
    child.send("/mod\t")
    child.expect(drawn("/models"))  # the completion is drawn
    child.send("\r")
    child.expect("aggregator: agg")
    child.expect(PROMPT)
    child.sendline("hi")
    child.expect("calls")
    child.expect(PROMPT)
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert len(llm_server.requests) == 3  # "exit" quit, it was not sent
    assert colour_codes(log.getvalue()) == []  # prompt, progress, answer: all without colour


@pytest.mark.pty
@pytest.mark.parametrize(("signum", "code"), [(15, 143), (1, 129)])
def test_sigterm_or_sighup_at_the_prompt_ends_the_session(
    moa_env: dict[str, str], llm_server: FakeLLMServer, signum: int, code: int
) -> None:
    """Not taken for a Ctrl-C at the prompt (which keeps the session): one line, 143 or 129."""
    child, log = spawn_chat(moa_env, *LINEUP)
    child.sendline("hello")
    child.expect("Answer from agg")
    child.expect(PROMPT)
    time.sleep(0.3)  # the prompt is drawn; let it enter its read loop
    child.kill(signum)
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", log.getvalue())
    assert child.exitstatus == code or child.signalstatus == signum, screen
    assert "Traceback" not in screen and "Press ENTER" not in screen and "(Ctrl-D or /exit quits)" not in screen


@pytest.mark.pty
def test_save_writes_what_logs_export_writes_for_the_same_conversation(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path, tmp_path: Path
) -> None:
    """Two turns in the REPL, `/save` as Markdown and JSON, then `moa logs export` of that
    conversation: the same Markdown, byte for byte; the same JSON but for what only the log
    knows, null in the REPL's (when the log last changed, the calls' row numbers)."""
    (moa_home / "config.toml").write_text('[pricing."agg"]\ninput = 1.0\noutput = 2.0\n')  # the rest unpriced
    llm_server.script("agg", Reply(text="# Paris\n\nThe **capital**."), Reply(text="About 2.1 million."))
    child, log = spawn_chat(moa_env, *LINEUP, "-s", "Be brief.")
    for prompt in ("Capital of France?", "And its population?"):
        child.sendline(prompt)
        child.expect(r"\d+ tokens · 3 calls")  # the footer
        child.expect(PROMPT)
    for name in ("t.md", "t.json"):
        child.sendline(f"/save {tmp_path / name}")
        child.expect(f"saved 2 turns to .*{name}")
        child.expect(PROMPT)
    ctrl_d_exits_cleanly(child, log)

    saved_md, saved = (tmp_path / "t.md").read_text(), json.loads((tmp_path / "t.json").read_text())
    exported_md = run_moa(["logs", "export", saved["id"]], moa_env).stdout
    exported = json.loads(run_moa(["logs", "export", saved["id"], "--format", "json"], moa_env).stdout)
    assert saved_md == exported_md
    assert (
        "## Turn 2 · " in saved_md and "**ref-b** (" in saved_md and "at least $" in saved_md
    )  # numbers, proposals, cost
    assert "(not logged)" not in saved_md and "$0 " not in saved_md
    assert saved["updated_at"] is None and isinstance(exported["updated_at"], float)
    calls = [call for turn in saved["turns"] for call in turn["calls"]]
    assert len(calls) == 6 and {call["id"] for call in calls} == {None}
    for data in (saved, exported):
        data["updated_at"] = None
        for turn in data["turns"]:
            for call in turn["calls"]:
                call["id"] = None
    assert saved == exported
    assert [m["content"] for m in saved["messages"]] == [
        "Be brief.", "Capital of France?", "# Paris\n\nThe **capital**.", "And its population?", "About 2.1 million."
    ]  # fmt: skip
