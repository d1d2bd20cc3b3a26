"""`/save`: unique default names, no silent overwrite, an atomic write, errors that say what failed."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from moa_cli.config import load_settings
from moa_cli.conversation import Conversation, write_new_file
from moa_cli.repl import slash
from moa_cli.repl.loop import Repl
from moa_cli.repl.session import make_session
from moa_cli.repl.slash import ChatState
from moa_cli.store import TurnRecord
from moa_cli.types import TurnResult
from tests.fakes.llm_server import FakeLLMServer, Reply

AGG = "agg"


@pytest.fixture
def server(
    moa_env: dict[str, str], llm_server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> FakeLLMServer:
    monkeypatch.chdir(tmp_path)
    llm_server.set_default(AGG, Reply(text="The answer."))
    return llm_server


def run_repl(keys: str) -> tuple[str, Repl]:
    err = Console(file=StringIO(), width=200, color_system=None)
    out = Console(file=StringIO(), width=200, color_system=None)
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        session = make_session(None, input=pipe, output=DummyOutput())
        repl = Repl(
            ChatState.start(load_settings({"references": ["ref-a"], "aggregator": AGG})), err, out, session=session
        )
        asyncio.run(repl.run())
    return err.file.getvalue(), repl  # type: ignore[attr-defined]


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("moa: error:")]


def no_temporary_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_default_saves_never_share_a_file(server: FakeLLMServer) -> None:
    err, repl = run_repl("q\r/save\r/save\r/save\r/exit\r")
    directory = repl.state.settings.paths.conversations_dir  # type: ignore[union-attr]
    saved = sorted(directory.glob("*.md"))
    assert len(saved) == 3
    assert err.count("saved 1 turn to") == 3 and not errors(err)
    assert no_temporary_files(directory)


def test_default_names_count_up_within_one_second(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Frozen:  # type: ignore[override]
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(slash, "datetime", Frozen)
    _, repl = run_repl("q\r/save\r/save\r/save\r/exit\r")
    directory = repl.state.settings.paths.conversations_dir  # type: ignore[union-attr]
    assert sorted(p.name for p in directory.iterdir()) == [
        "2026-01-02-030405-2.md",
        "2026-01-02-030405-3.md",
        "2026-01-02-030405.md",
    ]


def test_save_onto_an_existing_file_is_refused_unless_forced(server: FakeLLMServer, tmp_path: Path) -> None:
    mine = tmp_path / "notes.md"
    mine.write_text("my own notes\n")
    err, _ = run_repl("q\r/save notes.md\r/exit\r")
    assert mine.read_text() == "my own notes\n"  # unchanged
    assert errors(err) == [
        "moa: error: could not save the transcript to notes.md: the file exists (/save notes.md --force replaces it)"
    ]

    err, _ = run_repl("q\r/save notes.md --force\r/exit\r")
    assert not errors(err) and "saved 1 turn to notes.md" in err
    assert "**moa:**\n\nThe answer." in mine.read_text()
    assert no_temporary_files(tmp_path)


def test_save_json_then_force_it(server: FakeLLMServer, tmp_path: Path) -> None:
    err, _ = run_repl("q\r/save t.json\r/save --force t.json\r/exit\r")
    assert not errors(err) and err.count("saved 1 turn to t.json") == 2
    assert json.loads((tmp_path / "t.json").read_text())["messages"][1]["content"] == "The answer."


def test_save_errors_name_the_file_and_the_reason(server: FakeLLMServer, tmp_path: Path) -> None:
    (tmp_path / "dir.md").mkdir()
    err, _ = run_repl("q\r/save missing/t.md\r/save t.txt\r/save dir.md --force\r/exit\r")
    assert errors(err) == [
        "moa: error: could not save the transcript to missing/t.md: No such file or directory",
        "moa: error: could not save the transcript to t.txt: the file name must end in .md or .json",
        "moa: error: could not save the transcript to dir.md: Is a directory",
    ]
    assert no_temporary_files(tmp_path)


def test_help_shows_how_to_replace_a_file(server: FakeLLMServer) -> None:
    err, _ = run_repl("/help\r/exit\r")
    assert "/save [FILE] [--force]" in err and "//text sends" in err


# ---------------------------------------------------------------------------- the write itself


def test_write_new_file_never_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "t.md"
    write_new_file(path, b"one")
    with pytest.raises(FileExistsError):
        write_new_file(path, b"two")
    assert path.read_bytes() == b"one"
    write_new_file(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.md"
    path.write_text("old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("moa_cli.files.os.replace", broken_replace)
    conversation = Conversation()
    conversation.add("q", TurnResult("a", AGG), TurnRecord("c1", "q", "ok", 0.0, answer="a"))
    with pytest.raises(OSError, match="No space left"):
        conversation.save(path, overwrite=True)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]


def test_split_force() -> None:
    assert slash.split_force("t.md --force") == ("t.md", True)
    assert slash.split_force("--force t.md") == ("t.md", True)
    assert slash.split_force(" t.md ") == ("t.md", False)


def test_an_unlogged_conversation_says_so_and_invents_nothing(
    cli: Any, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """With the log off, `/save` writes the document `moa logs export` would, with what only the
    log knows shown as unknown: no turn number, no cost of $0 (the fake's models have no price)."""
    script = f"Why?\n/save {tmp_path / 't.md'}\n/save {tmp_path / 't.json'}\n"
    ran = cli(["chat", "--no-log", "-r", "ref-a", "-a", AGG, "-s", "Be brief."], input=script)
    assert ran.returncode == 0, ran.stderr
    md = (tmp_path / "t.md").read_text()
    assert md.splitlines()[:7] == [
        "# Why?",
        "",
        f"- conversation: {json.loads((tmp_path / 't.json').read_text())['id']} (not logged)",
        "- source: chat",
        md.splitlines()[4],  # started: the time
        f"- line-up: ref-a → {AGG}",
        "- cost: unknown",
    ]
    assert "## Turn (not logged) · " in md and " · ok · cost unknown" in md and "$0" not in md
    assert "**System:**\n\nBe brief." in md and "**ref-a** (" in md and "unpriced" in md
    data = json.loads((tmp_path / "t.json").read_text())
    turn = data["turns"][0]
    assert (data["updated_at"], turn["id"], turn["seq"], turn["cost_usd"]) == (None, None, None, None)
    assert turn["unpriced_calls"] == 2 and data["messages"][0] == {"role": "system", "content": "Be brief."}
    assert not (Path(os.environ["MOA_HOME"]) / "logs.db").exists()
