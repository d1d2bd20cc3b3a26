"""An input history file that cannot be used: one warning, then a REPL without saved history.

In-process through prompt_toolkit's pipe input, and once on a real pty, where the old
failure showed ("Press ENTER to continue" swallowed the first line typed).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from io import StringIO
from pathlib import Path

import pytest
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from moa_cli.config import load_settings
from moa_cli.repl.loop import Repl
from moa_cli.repl.session import GuardedFileHistory, make_session, open_history
from moa_cli.repl.slash import ChatState
from tests.conftest import ROOT
from tests.fakes.helpers import asked
from tests.fakes.llm_server import FakeLLMServer, Reply

AGG = "agg"


def run_with_history(keys: str, history: Path) -> tuple[list[str], str, str]:
    """Type `keys` into a REPL whose history file is `history`; (warnings, stderr, stdout)."""
    warnings: list[str] = []
    err, out = (Console(file=StringIO(), width=100, color_system=None) for _ in range(2))
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        session = make_session(history, input=pipe, output=DummyOutput(), warn=warnings.append)
        settings = load_settings({"references": ["ref-a"], "aggregator": AGG})
        asyncio.run(Repl(ChatState.start(settings), err, out, session=session).run())
    return warnings, err.file.getvalue(), out.file.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def server(moa_env: dict[str, str], llm_server: FakeLLMServer) -> FakeLLMServer:
    llm_server.set_default(AGG, Reply(text="Answer."))
    return llm_server


def test_a_history_path_that_is_a_directory_warns_once(server: FakeLLMServer, tmp_path: Path) -> None:
    history = tmp_path / "history"
    history.mkdir()
    warnings, err, out = run_with_history("first\rsecond\r/exit\r", history)

    assert warnings == [f"cannot use the input history file {history}: Is a directory; running without saved history"]
    assert out == "Answer.\nAnswer.\n"  # the first line typed was not swallowed
    assert [asked(r) for r in server.requests_for(AGG)] == ["first", "second"]
    assert "Traceback" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_history_file_warns_once(server: FakeLLMServer, tmp_path: Path) -> None:
    history = tmp_path / "history"
    history.write_text("\n# old\n+secret question\n")
    history.chmod(0)
    try:
        warnings, _, out = run_with_history("first\r/exit\r", history)
    finally:
        history.chmod(0o600)
    assert len(warnings) == 1 and "Permission denied" in warnings[0]
    assert out == "Answer.\n"


def test_open_history_falls_back_to_memory(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert isinstance(open_history(tmp_path, warnings.append), InMemoryHistory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert isinstance(open_history(fifo, warnings.append), InMemoryHistory)  # and did not block
    assert isinstance(open_history(None, warnings.append), InMemoryHistory)
    good = open_history(tmp_path / "sub" / "history", warnings.append)
    assert isinstance(good, GuardedFileHistory) and (tmp_path / "sub" / "history").is_file()
    assert len(warnings) == 2 and "not a regular file" in warnings[1]


def test_a_history_file_that_breaks_later_warns_once_and_is_left_alone(tmp_path: Path) -> None:
    warnings: list[str] = []
    path = tmp_path / "history"
    history = open_history(path, warnings.append)
    history.append_string("kept")
    path.unlink()
    path.mkdir()  # now every write fails
    for text in ("one", "two", "three"):
        history.append_string(text)
    assert len(warnings) == 1 and "Is a directory" in warnings[0]
    assert list(history.load_history_strings()) == []
    assert history.get_strings()[-1] == "three"  # still in memory for Up and Ctrl-R


# ---------------------------------------------------------------------------- on a pty


@pytest.mark.pty
def test_on_a_terminal_a_directory_history_is_one_warning(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path
) -> None:
    pexpect = pytest.importorskip("pexpect")
    (moa_home / "history").mkdir()
    llm_server.set_default(AGG, Reply(text="Fine answer."))
    log = StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "moa_cli", "chat", "-r", "ref-a", "-a", AGG],
        env={**moa_env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"},
        cwd=str(ROOT),
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=10,
    )
    child.logfile_read = log
    child.expect(">>>")
    child.sendline("first question")
    child.expect("Fine answer")
    child.expect("calls")
    child.expect(">>>")
    child.sendline("second question")
    child.expect("calls")
    child.expect(">>>")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.getvalue())
    assert child.exitstatus == 0, screen
    assert screen.count("cannot use the input history file") == 1
    assert "Traceback" not in screen and "Press ENTER" not in screen
    assert [asked(r) for r in llm_server.requests_for(AGG)] == ["first question", "second question"]
