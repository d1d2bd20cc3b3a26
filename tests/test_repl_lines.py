"""Line mode (`moa chat` with stdin not a terminal): which lines are commands, answers
printed only once a turn succeeded, the exit code, and a reader that goes away.

Most run the real CLI in a subprocess against the fake server; a few drive `run_lines`
in-process with StringIO consoles.
"""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from moa_cli.config import load_settings
from moa_cli.repl.lines import run_lines
from tests.conftest import ROOT
from tests.fakes.helpers import asked, without_references
from tests.fakes.llm_server import FakeLLMServer, Reply

AGG = "agg"
LINEUP = ["-r", "ref-a", "-r", "ref-b", "-a", AGG]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def turns(server: FakeLLMServer, model: str) -> list[list[dict[str, Any]]]:
    return [[m for m in without_references(r.messages) if m["role"] != "system"] for r in server.requests_for(model)]


@pytest.fixture
def server(moa_env: dict[str, str], llm_server: FakeLLMServer) -> FakeLLMServer:
    llm_server.set_default(AGG, Reply(text="Final answer."))
    return llm_server


def test_an_aggregator_cut_mid_answer_prints_no_partial_answer_and_exits_1(moa: Any, server: FakeLLMServer) -> None:
    server.script(
        AGG,
        Reply(text="The first answer looks real but it is cut here and the rest never comes.", cut_after=5),
        Reply(text="Second answer."),
    )
    result = moa(["chat", *LINEUP], input="first\nsecond\n")

    assert result.returncode == 1
    assert result.stdout == "Second answer.\n"  # nothing of the cut answer
    assert "looks real" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("moa: error:")]
    assert len(errors) == 1 and "aggregator" in errors[0]
    assert result.stderr.endswith("moa: 1 of 2 turns failed\n")
    assert "Traceback" not in result.stderr
    # The failed turn left nothing in the conversation.
    assert turns(server, AGG)[1] == [user("second")]
    assert turns(server, "ref-a")[1] == [user("second")]


def test_every_turn_answered_exits_0_and_says_nothing_about_failures(moa: Any, server: FakeLLMServer) -> None:
    server.script(AGG, Reply(text="One."), Reply(text="Two."))
    result = moa(["chat", *LINEUP], input="first\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "One.\nTwo.\n"
    assert "failed" not in result.stderr
    assert turns(server, AGG)[1] == [user("first"), assistant("One."), user("second")]


def test_a_line_that_names_no_command_is_a_prompt(moa: Any, server: FakeLLMServer) -> None:
    result = moa(["chat", *LINEUP], input="/etc is a directory?\n/models\n")
    assert result.returncode == 0, result.stderr
    assert turns(server, AGG) == [[user("/etc is a directory?")]]
    assert "unknown command" not in result.stderr
    assert "aggregator: agg" in result.stderr  # /models is still a command
    assert result.stdout == "Final answer.\n"


def test_a_double_slash_sends_the_line_with_one_slash(moa: Any, server: FakeLLMServer) -> None:
    result = moa(["chat", *LINEUP], input="//help\n")
    assert result.returncode == 0, result.stderr
    assert turns(server, AGG) == [[user("/help")]]
    assert "/proposals" not in result.stderr  # the help was not shown


def test_exit_and_known_commands_still_work(moa: Any, server: FakeLLMServer) -> None:
    result = moa(["chat", *LINEUP], input="/set temperature 0.3\nhi\nexit\nnever sent\n")
    assert result.returncode == 0, result.stderr
    assert [asked(r) for r in server.requests_for(AGG)] == ["hi"]
    assert server.requests_for("ref-a")[0].body["temperature"] == 0.3


def test_a_reader_that_goes_away_leaves_no_traceback(moa_env: dict[str, str], server: FakeLLMServer) -> None:
    """`moa chat < questions | head -1`: the second answer meets a closed pipe."""
    lines = "".join(f"question {n}\n" for n in range(20))
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        chat = subprocess.run(
            [sys.executable, "-m", "moa_cli", "chat", *LINEUP],
            input=lines.encode(),
            stdout=reader.stdin,
            stderr=subprocess.PIPE,
            env=moa_env,
            cwd=ROOT,
            timeout=30,
        )
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=10)
    err = chat.stderr.decode()
    assert "Traceback" not in err and "Task exception" not in err and "BrokenPipeError" not in err, err
    assert chat.returncode != 0  # 141 once the closed pipe is mapped (cli/app.py)
    assert len(server.requests_for(AGG)) < 20  # it stopped


# ---------------------------------------------------------------------------- in-process


def console() -> Console:
    return Console(file=StringIO(), width=100, color_system=None)


def test_run_lines_in_process_counts_failed_turns(server: FakeLLMServer) -> None:
    server.script("ref-a", Reply(status=500), Reply(status=500))
    server.script("ref-b", Reply(status=500), Reply(status=500))
    settings = load_settings({"references": ["ref-a", "ref-b"], "aggregator": AGG})
    err, out = console(), console()
    code = run_lines(settings, StringIO("one\ntwo\nthree\n/retry\n"), err, out)
    assert code == 1
    assert out.file.getvalue() == "Final answer.\nFinal answer.\n"  # type: ignore[attr-defined]
    assert err.file.getvalue().endswith("moa: 2 of 4 turns failed\n")  # type: ignore[attr-defined]
    assert [asked(r) for r in server.requests_for(AGG)] == ["three", "three"]


class ClosedPipe(StringIO):
    """A stdout whose reader has gone away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


def test_a_closed_stdout_ends_the_interactive_repl_with_broken_pipe(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers streamed into a closed pipe (`moa chat | tee` gone): no task keeps the error."""
    import asyncio
    import gc

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from moa_cli.repl.loop import Repl
    from moa_cli.repl.session import make_session
    from moa_cli.repl.slash import ChatState

    # Tasks that earlier tests in this worker left behind are collected now, not during the
    # check below, where their "never retrieved" lines would be blamed on this test.
    gc.collect()
    caplog.clear()
    settings = load_settings({"references": ["ref-a"], "aggregator": AGG})
    err = console()
    out = Console(file=ClosedPipe(), width=100, color_system=None)
    with create_pipe_input() as pipe:
        pipe.send_text("first\rsecond\r/exit\r")
        repl = Repl(ChatState.start(settings), err, out, session=make_session(None, input=pipe, output=DummyOutput()))
        with pytest.raises(BrokenPipeError):
            asyncio.run(repl.run())
    gc.collect()
    assert [asked(r) for r in server.requests_for(AGG)] == ["first"]
    assert "Task exception was never retrieved" not in caplog.text
    assert "moa: error" not in err.file.getvalue()  # type: ignore[attr-defined]


def test_run_lines_lets_a_closed_stdout_through(server: FakeLLMServer) -> None:
    settings = load_settings({"references": ["ref-a"], "aggregator": AGG})
    with pytest.raises(BrokenPipeError):
        run_lines(settings, StringIO("first\nsecond\n"), console(), Console(file=ClosedPipe(), width=100))
    assert [asked(r) for r in server.requests_for(AGG)] == ["first"]
