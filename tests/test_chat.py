"""`moa chat`: the REPL driven in-process through prompt_toolkit's pipe input, and the
line-by-line mode (stdin not a terminal) as a real subprocess. Both talk to the fake
server through the real together SDK, and the assertions look at what the server got.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from moa_cli.config import Settings, load_settings
from moa_cli.conversation import Conversation
from moa_cli.repl import slash
from moa_cli.repl.loop import Repl
from moa_cli.repl.session import make_session
from moa_cli.repl.slash import ChatState
from moa_cli.store import TurnRecord
from moa_cli.types import TurnResult, Usage
from tests.conftest import ROOT
from tests.fakes.helpers import references_in, without_references
from tests.fakes.llm_server import FakeLLMServer, Reply

REFS = ["ref-a", "ref-b"]
AGG = "agg"
LINEUP = ["-r", "ref-a", "-r", "ref-b", "-a", AGG]
UP = "\x1b[A"
CTRL_C, CTRL_D, CTRL_R, ESC_ENTER = "\x03", "\x04", "\x12", "\x1b\r"


def settings(**overrides: Any) -> Settings:
    return load_settings({"references": REFS, "aggregator": AGG, **overrides})


def console() -> Console:
    return Console(file=StringIO(), width=100, color_system=None)


@dataclass
class Run:
    code: int
    err: str
    out: str
    repl: Repl

    @property
    def conversation(self) -> Conversation:
        return self.repl.state.conversation


def run_repl(
    keys: str,
    config: Settings | None = None,
    *,
    history: Path | None = None,
    meanwhile: Callable[[Repl], None] | None = None,
) -> Run:
    """Type `keys` into a REPL (Enter is \\r) and run it to the end."""
    err, out = console(), console()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        session = make_session(history, input=pipe, output=DummyOutput())
        repl = Repl(ChatState.start(config or settings()), err, out, session=session)
        helper = threading.Thread(target=meanwhile, args=(repl,), daemon=True) if meanwhile else None
        if helper:
            helper.start()
        code = asyncio.run(repl.run())
        if helper:
            helper.join(timeout=5)
    return Run(code, err.file.getvalue(), out.file.getvalue(), repl)  # type: ignore[attr-defined]


def turns(server: FakeLLMServer, model: str) -> list[list[dict[str, Any]]]:
    """The messages of each request `model` received, system message and references' answers left out."""
    return [[m for m in without_references(r.messages) if m["role"] != "system"] for r in server.requests_for(model)]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def server(moa_env: dict[str, str], llm_server: FakeLLMServer) -> FakeLLMServer:
    llm_server.set_default(AGG, Reply(text="Final answer."))
    return llm_server


# ---------------------------------------------------------------------------- turns


def test_the_second_turn_carries_the_first_to_every_model(server: FakeLLMServer) -> None:
    server.script(AGG, Reply(text="Paris."), Reply(text="About 2.1 million."))
    run = run_repl("Capital of France?\rAnd its population?\r/exit\r")

    assert run.code == 0
    assert run.out == "Paris.\nAbout 2.1 million.\n"
    first, second = user("Capital of France?"), user("And its population?")
    for model in (*REFS, AGG):
        assert turns(server, model) == [[first], [first, assistant("Paris."), second]]
    # The aggregator also gets the references' answers, after the conversation.
    assert "Answer from ref-a." in references_in(server.requests_for(AGG)[1])
    assert "0.0s" not in run.out and re.search(r"\d+\.\ds · \d+ tokens · 3 calls", run.err)


def test_no_multi_turn_sends_each_prompt_alone(server: FakeLLMServer) -> None:
    run_repl("one\rtwo\r/exit\r", settings(multi_turn=False))
    for model in (*REFS, AGG):
        assert turns(server, model) == [[user("one")], [user("two")]]


def test_rounds_above_one_pass_on_only_the_answers_that_exist(server: FakeLLMServer) -> None:
    server.script("ref-b", Reply(status=500))  # fails in layer 1, answers in layer 2
    run = run_repl("hi\r/exit\r", settings(rounds=2))
    layer2 = [r for r in server.requests if r.model in REFS][2:]
    assert len(layer2) == 2
    for request in layer2:
        assert "Answer from ref-a." in references_in(request)
        assert "None" not in references_in(request)
        assert "<response_2>" not in references_in(request)  # only one answer came through
    assert "3 of 4 reference answers (ref-b failed)" in run.err
    assert run.out == "Final answer.\n"


def test_a_system_prompt_goes_first_to_every_model(server: FakeLLMServer) -> None:
    run_repl("hi\r/exit\r", settings(system="Answer in French."))
    for model in REFS:
        assert server.requests_for(model)[0].messages[0] == {"role": "system", "content": "Answer in French."}
    assert (server.requests_for(AGG)[0].system or "").startswith("Answer in French.")


# ---------------------------------------------------------------------------- cancelling and failing


def cancel_when_requested(server: FakeLLMServer, prompt: str) -> Callable[[Repl], None]:
    """Press Ctrl-C (what the SIGINT handler calls) once `prompt` reached the server."""

    def press(repl: Repl) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(r.last_user == prompt for r in server.requests_for("ref-a")):
                repl.interrupt()
                return
            time.sleep(0.005)

    return press


def test_ctrl_c_cancels_the_turn_closes_its_requests_and_leaves_no_trace(server: FakeLLMServer) -> None:
    server.script("ref-a", Reply(latency=30))
    keys = "slow question\rnext question\r/exit\r"
    started = time.monotonic()
    run = run_repl(keys, meanwhile=cancel_when_requested(server, "slow question"))

    assert time.monotonic() - started < 10  # not the 30 s of the slow model
    assert run.code == 0
    assert "cancelled" in run.err
    server.wait_until_idle()
    slow = server.requests_for("ref-a")[0]
    assert slow.disconnected  # the HTTP stream was closed, not left running
    for model in (*REFS, AGG):
        assert turns(server, model)[-1] == [user("next question")]
    assert [e.prompt for e in run.conversation.exchanges] == ["next question"]


def test_a_failed_turn_keeps_the_repl_and_the_conversation_then_retry_works(server: FakeLLMServer) -> None:
    server.script("ref-a", Reply(status=401, error_message="Invalid API key"))
    server.script("ref-b", Reply(status=401, error_message="Invalid API key"))
    server.script(AGG, Reply(text="One."), Reply(text="Two."))
    run = run_repl("first\r/retry\rsecond\r/exit\r")

    errors = [line for line in run.err.splitlines() if line.startswith("moa: error:")]
    assert len(errors) == 1
    assert "every reference model failed in layer 1" in errors[0] and "/retry" in errors[0]
    assert "Traceback" not in run.err
    assert run.out == "One.\nTwo.\n"
    # The failed "first" left nothing behind: /retry ran it once, then "second" followed.
    assert [e.prompt for e in run.conversation.exchanges] == ["first", "second"]
    assert turns(server, "ref-a") == [
        [user("first")],
        [user("first")],
        [user("first"), assistant("One."), user("second")],
    ]


def test_a_model_that_does_not_exist_is_one_error_line(server: FakeLLMServer) -> None:
    server.unknown_models_404 = True
    server.models = REFS
    run = run_repl("hi\r/exit\r", settings(aggregator="no-such-model"))
    assert run.code == 0
    assert re.search(r"^moa: error: the aggregator no-such-model failed: HTTP 404 .*/retry", run.err, re.MULTILINE)
    assert len(run.conversation) == 0


def test_ctrl_c_and_ctrl_d_at_the_prompt(server: FakeLLMServer) -> None:
    run = run_repl(f"half a line{CTRL_C}{CTRL_C}typed{CTRL_C}hi\r{CTRL_D}")
    assert run.code == 0
    assert turns(server, AGG) == [[user("hi")]]  # the interrupted lines were dropped


@pytest.mark.parametrize("word", ["exit", "quit", "/exit", "/quit"])
def test_exit_words(server: FakeLLMServer, word: str) -> None:
    assert run_repl(f"{word}\rnever sent\r").code == 0
    assert server.requests == []


# ---------------------------------------------------------------------------- input


def test_esc_enter_and_a_bracketed_paste_make_one_multi_line_message(server: FakeLLMServer) -> None:
    paste = "\x1b[200~pasted one\npasted two\x1b[201~"
    run_repl(f"line one{ESC_ENTER}line two\r{paste}\r/exit\r")
    assert [t[-1] for t in turns(server, AGG)] == [user("line one\nline two"), user("pasted one\npasted two")]


def test_history_persists_across_two_runs(server: FakeLLMServer, moa_home: Path) -> None:
    history = moa_home / "history"
    run_repl("remember this question\r/exit\r", history=history)
    assert "remember this question" in history.read_text()

    # Keys typed ahead of a prompt are handled before it loads the history, so each
    # history key goes first to a fresh run (a person sees the prompt first anyway).
    run_repl(f"{UP}{UP}\r/exit\r", history=history)  # Up past /exit to the question
    run_repl(f"{CTRL_R}remember\r\r/exit\r", history=history)  # Ctrl-R finds it
    assert [t[-1] for t in turns(server, AGG)] == [user("remember this question")] * 3


@pytest.mark.parametrize(
    ("typed", "offered"),
    [("/mo", ["/models"]), ("/s", ["/set", "/system", "/save"]), ("/set te", ["temperature"]), ("hello /", [])],
)
def test_the_prompt_completes_commands_and_settings(typed: str, offered: list[str]) -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    with create_pipe_input() as pipe:
        session = make_session(None, input=pipe, output=DummyOutput())
        assert session.completer is not None
        completions = list(session.completer.get_completions(Document(typed), CompleteEvent(completion_requested=True)))
    assert [c.text for c in completions] == offered
    for completion in completions:  # each replaces just the word being typed
        assert completion.start_position == -len(typed.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------------------- slash commands


def test_models_set_and_errors(server: FakeLLMServer) -> None:
    keys = "/models\r/set temperature 0.2\r/set max_tokens 64\r/set temperature 5\r/set tmperature 1\r/set rounds x\rhi\r/exit\r"
    run = run_repl(keys)
    assert "references (2):" in run.err and "1. ref-a" in run.err and "aggregator: agg" in run.err
    assert "temperature = 0.2 from the next turn" in run.err
    assert "moa: error: invalid temperature: 5 is not between 0 and 2" in run.err
    assert "did you mean temperature?" in run.err
    assert "moa: error: /set rounds: expected a whole number, got 'x'" in run.err
    body = server.requests_for("ref-a")[0].body
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64


def test_set_the_line_up_for_the_next_turn(server: FakeLLMServer) -> None:
    run_repl("/set references ref-c, ref-d\r/set aggregator agg-2\r/set layer_deadline 5\rhi\r/exit\r")
    assert {r.model for r in server.requests} == {"ref-c", "ref-d", "agg-2"}


def test_unknown_command_names_the_closest(server: FakeLLMServer) -> None:
    run = run_repl("/hepl\r/xyzzy\r/etc is what?\r/usr/bin is what?\r//etc is what?\r/exit\r")
    assert "moa: error: unknown command /hepl; did you mean /help?" in run.err
    assert "unknown command /xyzzy (/help lists the commands)" in run.err
    assert "unknown command /etc" in run.err  # at a terminal the typo help stays
    # A path is a question, and "//" sends a line that starts with a slash.
    assert turns(server, AGG) == [
        [user("/usr/bin is what?")],
        [user("/usr/bin is what?"), assistant("Final answer."), user("/etc is what?")],
    ]


def test_help_lists_every_command(server: FakeLLMServer) -> None:
    run = run_repl("/help\r/exit\r")
    for name in slash.COMMANDS:
        assert f"/{name}" in run.err
    assert "Esc-Enter" in run.err


def test_system_new_and_retry(server: FakeLLMServer) -> None:
    server.script(AGG, Reply(text="A1"), Reply(text="A1 again"), Reply(text="A2"))
    run = run_repl("/system Be brief.\rq1\r/retry\r/new\rq2\r/system\r/exit\r")
    agg = server.requests_for(AGG)
    assert [without_references(r.messages)[-1]["content"] for r in agg] == ["q1", "q1", "q2"]
    assert turns(server, AGG)[1] == [user("q1")]  # /retry replaced the answer, it did not stack
    assert turns(server, AGG)[2] == [user("q2")]  # /new forgot q1
    assert all((r.system or "").startswith("Be brief.") for r in agg)
    assert "system prompt: 'Be brief.'" in run.err
    assert [(e.prompt, e.answer) for e in run.conversation.exchanges] == [("q2", "A2")]


def test_proposals_show_each_reference_by_layer(server: FakeLLMServer) -> None:
    server.set_default("ref-a", Reply(text="Alpha's view."))
    server.script("ref-b", Reply(status=500))
    run = run_repl("/proposals\rq\r/proposals\r/exit\r")
    assert "no answered turn yet" in run.err
    assert "layer 1" in run.err and "Alpha's view." in run.err
    assert re.search(r"ref-b · [\d.]+s", run.err) and "failed: HTTP 500" in run.err


def test_save_markdown_and_json(server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server.script(AGG, Reply(text="**Bold** answer."))
    run = run_repl("/save early.md\rq\r/save t.md\r/save t.json\r/save t.txt\r/save\r/exit\r")
    assert "nothing to save yet" in run.err
    md = (tmp_path / "t.md").read_text()
    assert "**You:**\n\nq\n\n**moa:**\n\n**Bold** answer." in md
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["messages"] == [user("q"), assistant("**Bold** answer.")]
    assert data["turns"][0]["calls"][0]["text"] == "Answer from ref-a."
    assert data["lineup"]["aggregator"] == AGG
    assert "must end in .md or .json" in run.err
    saved = list((run.repl.state.settings.paths.conversations_dir).glob("*.md"))  # type: ignore[union-attr]
    assert len(saved) == 1


def test_conversation_snapshot_restore_and_messages() -> None:
    conversation = Conversation("sys")
    result = TurnResult("a1", AGG, usage=Usage(1, 1, 2))
    conversation.add("q1", result, TurnRecord("c", "q1", "ok", 0.0, answer="a1"))
    snapshot = conversation.snapshot()
    conversation.add("q2", TurnResult("a2", AGG), TurnRecord("c", "q2", "ok", 0.0, answer="a2"))
    conversation.system = None
    conversation.restore(snapshot)
    assert conversation.messages_for("q3") == [
        {"role": "system", "content": "sys"},
        user("q1"),
        assistant("a1"),
        user("q3"),
    ]
    conversation.multi_turn = False
    assert conversation.messages_for("q3") == [{"role": "system", "content": "sys"}, user("q3")]


# ---------------------------------------------------------------------------- stdin not a terminal


def test_lines_mode_answers_each_line_plainly(moa: Any, server: FakeLLMServer) -> None:
    server.script(AGG, Reply(text="**One.**"), Reply(text="Two."))
    result = moa(["chat", *LINEUP], input="first\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "**One.**\nTwo.\n"  # plain: the Markdown is not rendered
    assert turns(server, AGG)[1] == [user("first"), assistant("**One.**"), user("second")]
    assert "Traceback" not in result.stderr


def test_lines_mode_no_multi_turn_alias(moa: Any, server: FakeLLMServer) -> None:
    result = moa(["chat", "--no_multi_turn", *LINEUP], input="first\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert turns(server, AGG) == [[user("first")], [user("second")]]


def test_lines_mode_a_failing_turn_then_a_good_one(moa: Any, server: FakeLLMServer) -> None:
    server.script("ref-a", Reply(status=500))
    server.script("ref-b", Reply(status=500))
    server.script(AGG, Reply(text="Second answer."))
    result = moa(["chat", *LINEUP], input="first\nsecond\n")
    assert result.returncode == 1  # a turn failed
    assert result.stdout == "Second answer.\n"
    assert result.stderr.endswith("moa: 1 of 2 turns failed\n")
    errors = [line for line in result.stderr.splitlines() if line.startswith("moa: error:")]
    assert len(errors) == 1 and "every reference model failed" in errors[0]
    assert turns(server, AGG) == [[user("second")]]


def test_missing_key_is_a_usage_error_before_any_prompt(moa: Any, server: FakeLLMServer) -> None:
    result = moa(["chat", *LINEUP], input="hi\n", env={"TOGETHER_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("moa: error: no API key") and result.stderr.count("\n") == 1
    assert result.stdout == "" and server.requests == []


def test_lines_mode_ctrl_c_exits_130_and_closes_the_requests(moa_env: dict[str, str], server: FakeLLMServer) -> None:
    server.script("ref-a", Reply(latency=30))
    child = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "chat", *LINEUP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=moa_env,
        cwd=ROOT,
    )
    try:
        assert child.stdin is not None
        child.stdin.write("slow question\n")
        child.stdin.flush()
        deadline = time.monotonic() + 10
        while not server.requests_for("ref-a"):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
    finally:
        child.kill()
    assert child.returncode == 130
    assert err.endswith("moa: interrupted\n") and "Traceback" not in err
    assert out == ""
    server.wait_until_idle()
    assert server.requests_for("ref-a")[0].disconnected


def test_a_lone_slash_shows_help_instead_of_costing_a_turn(server: FakeLLMServer) -> None:
    run = run_repl("/\r/exit\r")
    assert "/proposals" in run.err
    assert server.requests == []


def test_ctrl_c_while_the_first_turn_waits_for_the_warm_up_sends_nothing(server: FakeLLMServer) -> None:
    """The first turn waits for the background imports; a Ctrl-C then cancels it before it sends."""
    release = threading.Event()
    repl = Repl(ChatState.start(settings()), console(), console())
    repl._warm_thread = threading.Thread(target=release.wait, args=(5,), daemon=True)  # a slow warm-up
    repl._warm_thread.start()

    async def ask_then_interrupt() -> Any:
        repl._loop = asyncio.get_running_loop()
        turn = asyncio.create_task(repl.turn("never sent"))
        await asyncio.sleep(0.1)  # the turn is waiting for the warm-up
        repl.interrupt()
        await asyncio.sleep(0.05)
        release.set()
        result = await turn
        await repl.aclose()
        return result

    assert asyncio.run(ask_then_interrupt()) is None
    assert server.requests == [] and len(repl.state.conversation) == 0
    assert repl.state.last_failed and "cancelled" in repl.err.file.getvalue()  # type: ignore[attr-defined]
