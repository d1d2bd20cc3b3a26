"""Careless input is a usage error (exit 2, one line), never "unexpected error" (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha", "-a", "judge"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n", "nested too deeply"),
        ('{"id": 1, "prompt": "bad \\ud800 one"}\n', "\\ud800 is a lone surrogate"),
    ],
)
def test_unusable_batch_input_is_exit_2(
    moa, llm_server: FakeLLMServer, tmp_path: Path, text: str, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(text)
    proc = moa(["batch", str(source), "-o", str(tmp_path / "out.jsonl"), *LINEUP])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert llm_server.requests == []


@pytest.mark.parametrize("ids", [",", " , ", ""])
def test_batch_ids_naming_nothing_is_refused(moa, llm_server: FakeLLMServer, tmp_path: Path, ids: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "prompt": "hi"}) + "\n")
    proc = moa(["batch", str(source), "-o", str(tmp_path / "out.jsonl"), *LINEUP, "--ids", ids])
    assert proc.returncode == 2, proc.stderr
    assert "names no item" in proc.stderr and llm_server.requests == []


def test_a_base_url_with_a_del_character_is_exit_2(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", "hi", *LINEUP], env={"TOGETHER_BASE_URL": llm_server.base_url + "/\x7f"})
    assert proc.returncode == 2, proc.stderr
    assert "control character" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("json_output", [False, True])
def test_an_ascii_only_stdout_does_not_crash(cli, llm_server: FakeLLMServer, json_output: bool) -> None:
    llm_server.set_default("judge", Reply(text="Café ✓ done"))
    proc = cli(["ask", "héllo", *LINEUP, *(["--json"] if json_output else [])], env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert "Caf" in proc.stdout and "done" in proc.stdout
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
