"""Named line-ups end to end: `moa lineups`, `--check`, `--lineup`, `/lineup`, per-provider caps."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from moa_cli.api import MoA
from moa_cli.config import load_settings
from tests.fakes.llm_server import FakeLLMServer, Reply

CONFIG = """
[lineups.duo]
description = "two fakes"
reference_models = ["alpha", "beta"]
aggregator = "judge"
max_tokens = 77

[lineups.stale]
reference_models = ["alpha", "retired-model"]
aggregator = "judge"
"""


def test_lineups_lists_builtins_and_the_config_files(moa: Any, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text(CONFIG)
    proc = moa(["lineups", "--json"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_name = {row["name"]: row for row in data["lineups"]}
    assert list(by_name) == ["together", "local", "duo", "stale"]
    assert data["default"] == "together" and by_name["together"]["default"]
    duo = by_name["duo"]
    assert (duo["references"], duo["aggregator"], duo["settings"]) == (["alpha", "beta"], "judge", {"max_tokens": 77})
    assert duo["source"] == "config file" and duo["description"] == "two fakes"
    text = moa(["lineups"]).stdout
    assert "duo  [config file]  two fakes" in text and "references  alpha, beta" in text


def test_lineups_check_names_the_members_that_are_gone(moa: Any, moa_home: Path, llm_server: FakeLLMServer) -> None:
    (moa_home / "config.toml").write_text(CONFIG)
    llm_server.models = ["alpha", "beta", "judge"]
    proc = moa(["lineups", "--check", "--json"])
    assert proc.returncode == 1, proc.stderr  # a member is gone
    rows = {row["name"]: row for row in json.loads(proc.stdout)["lineups"]}
    assert rows["duo"]["missing"] == [] and rows["duo"]["unchecked"] == []
    assert rows["stale"]["missing"] == ["retired-model"]
    assert rows["local"]["unchecked"] == [] or rows["local"]["missing"] == []
    assert [r.path for r in llm_server.requests] == []  # listing is not a chat call


def test_a_lineup_flag_runs_its_members_and_single_flags_still_win(
    moa: Any, moa_home: Path, llm_server: FakeLLMServer
) -> None:
    (moa_home / "config.toml").write_text(CONFIG)
    proc = moa(["ask", "--lineup", "duo", "--max-tokens", "33", "hi"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.model for r in llm_server.requests) == ["alpha", "beta", "judge"]
    assert {r.body["max_tokens"] for r in llm_server.requests} == {33}
    proc = moa(["ask", "-l", "duo", "hi"])
    assert {r.body["max_tokens"] for r in llm_server.requests[3:]} == {77}


def test_an_unknown_lineup_is_exit_2_naming_the_known(moa: Any) -> None:
    proc = moa(["ask", "--lineup", "tgoether", "hi"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "moa: error: unknown line-up 'tgoether'; did you mean 'together'? (known: together, local; moa lineups lists them)"
    )


def test_lineup_in_the_repl_switches_the_next_turn(moa: Any, moa_home: Path, llm_server: FakeLLMServer) -> None:
    (moa_home / "config.toml").write_text(CONFIG)
    llm_server.set_default("retired-model", Reply())
    proc = moa(["chat", "--lineup", "stale", "-t", "0.1"], input="one\n/lineup duo\ntwo\n/lineup nope\n")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.model for r in llm_server.requests[:3]) == ["alpha", "judge", "retired-model"]
    second = llm_server.requests[3:]
    assert sorted(r.model for r in second) == ["alpha", "beta", "judge"]
    assert {r.body["temperature"] for r in second} == {0.1} and {r.body["max_tokens"] for r in second} == {77}
    assert "line-up duo from the next turn" in proc.stderr and "unknown line-up 'nope'" in proc.stderr


def test_a_provider_cap_holds_calls_in_flight_across_a_turn(moa_home: Path, llm_server: FakeLLMServer) -> None:
    """Four references on one capped provider: never more than one request open at a time."""
    (moa_home / "config.toml").write_text(
        f'[providers.slowbox]\nkind = "openai"\nbase_url = "{llm_server.base_url}/v1"\nmax_concurrency = 1\n'
    )
    for name in ("a", "b", "c", "d", "agg"):
        llm_server.set_default(name, Reply(latency=0.05, token_delay=0.005))
    env = {"MOA_HOME": str(moa_home), "MOA_RETRIES": "0", "NO_PROXY": "127.0.0.1"}
    moa_api = MoA(["slowbox:a", "slowbox:b", "slowbox:c", "slowbox:d"], "slowbox:agg", env=env)
    result = moa_api.run("hi")
    assert result.answer == "Answer from agg."
    spans = sorted((r.received_at, r.finished_at or 0.0) for r in llm_server.requests)
    assert len(spans) == 5
    overlaps = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end - 1e-3)
    assert overlaps == 0, spans


def test_without_a_cap_the_references_overlap(moa_home: Path, llm_server: FakeLLMServer) -> None:
    """The control for the test above: the same line-up, uncapped, runs its references together."""
    (moa_home / "config.toml").write_text(
        f'[providers.slowbox]\nkind = "openai"\nbase_url = "{llm_server.base_url}/v1"\n'
    )
    for name in ("a", "b", "c", "d", "agg"):
        llm_server.set_default(name, Reply(latency=0.05, token_delay=0.005))
    settings = load_settings(
        {"references": ["slowbox:a", "slowbox:b", "slowbox:c", "slowbox:d"], "aggregator": "slowbox:agg"},
        {"MOA_HOME": str(moa_home), "MOA_RETRIES": "0", "NO_PROXY": "127.0.0.1"},
    )
    asyncio.run(MoA(settings=settings).arun("hi"))
    spans = sorted((r.received_at, r.finished_at or 0.0) for r in llm_server.requests)
    overlaps = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end - 1e-3)
    assert overlaps >= 2
