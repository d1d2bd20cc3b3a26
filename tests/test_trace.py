"""The picture of a turn: a real turn with a failed call and a deadline cut, stored, read back, drawn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moa_cli.render_trace import render_text, save_svg
from moa_cli.store import CallRecord, Store, TurnRecord, flush_all
from moa_cli.trace import timeline


def _run_turn(home: Path) -> TurnRecord:
    from moa_cli.api import MoA
    from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
    from moa_cli.types import Usage

    provider = ScriptedProvider()
    provider.set_default("fast-ref", Step("quick answer", piece_delay=0.01, usage=Usage(20, 40, 60)))
    provider.set_default(
        "broken-ref", Step("x", error="rate_limit", status=429, reason="HTTP 429 rate limited: slow down")
    )
    provider.set_default("slow-ref", Step("too late", delay=5))
    provider.set_default(
        "judge", Step("the final answer comes word by word", delay=0.05, piece_delay=0.04, usage=Usage(50, 30, 80))
    )
    moa = MoA(
        references=["fast-ref", "broken-ref", "slow-ref"],
        aggregator="judge",
        layer_deadline=0.3,
        router=ScriptedRouter(provider),
    )
    result = asyncio.run(moa.arun("Where does the time go?"))
    assert result.answer == "the final answer comes word by word"
    flush_all()
    with Store(home / "logs.db") as store:
        return store.turn()


def test_trace_of_a_turn_with_a_failure_and_a_deadline_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[pricing."judge"]\ninput = 1\noutput = 2\n')
    turn = _run_turn(tmp_path)
    picture = timeline(turn)
    assert [lane.title for lane in picture.lanes] == ["layer 1", "aggregator"]
    bars = {b.model: b for b in picture.bars}
    assert bars["broken-ref"].state == "failed" and bars["broken-ref"].what == "rate limited"
    assert bars["slow-ref"].state == "deadline" and bars["slow-ref"].seconds == pytest.approx(0.3, abs=0.15)
    assert bars["fast-ref"].first_token is not None and bars["fast-ref"].tokens == 40
    assert bars["judge"].start >= bars["slow-ref"].end - 0.01  # the aggregator waited for the deadline
    assert picture.lanes[0].held_up_by is bars["slow-ref"]

    screen = render_text(picture, width=100)
    lines = screen.splitlines()
    print(screen)
    assert lines[0].startswith(f"turn {turn.id} · ok")
    assert "at least $0.00011 (3 calls unpriced)" in lines[0]  # judge priced, the references not
    assert lines[1] == "Where does the time go?"
    row = {name: next(line for line in lines if name in line) for name in bars}
    assert row["fast-ref"].startswith("layer 1") and "┃" in row["fast-ref"] and "40 tok" in row["fast-ref"]
    assert "✗" in row["broken-ref"] and "rate limited" in row["broken-ref"]
    assert "✂" in row["slow-ref"] and "cut at the deadline" in row["slow-ref"] and "◀ slowest" in row["slow-ref"]
    assert row["judge"].startswith("aggregator") and "$0.00011" in row["judge"] and "━" in row["judge"]
    # The bars share one time axis: the aggregator starts where layer 1 ended.
    col = lambda line, chars: min(line.index(c) for c in chars if c in line)  # noqa: E731
    assert col(row["judge"], "─┃━") >= col(row["slow-ref"], "✂") - 1
    assert (
        "layer 1 waited for slow-ref" in screen
        and "left out: broken-ref (rate limited), slow-ref (cut at the deadline)" in screen.replace("\n", " ")
    )
    assert all(len(line) <= 100 for line in lines)

    svg = save_svg(picture, tmp_path / "trace.svg")
    text = svg.read_text()
    plain = text.replace("&#160;", " ")
    assert text.startswith("<svg") and "slow" in plain and f"moa trace · turn {turn.id}" in plain


def test_a_failed_turn_and_a_narrow_screen() -> None:
    turn = TurnRecord("C", "q", "failed", 0.0, error="every reference model failed in layer 1", duration=1.0, calls=[
        CallRecord(1, 0, "proposer", "a-very-long-provider:and-a-very-long-model-name", "p", "m",
                   error="HTTP 401 authentication failed", error_kind="auth", status=401, started=0.0, duration=1.0),
    ], id=3)  # fmt: skip
    from moa_cli.errors import KIND_WORDS

    screen = render_text(timeline(turn), width=50)
    assert "turn 3 · failed" in screen and "✗" in screen
    assert "✗  1.0s" in screen.splitlines()[2]  # a narrow screen cuts the label, never the bar
    assert f"({KIND_WORDS['auth']})" in screen.replace("\n", " ")
    assert "every reference model failed" in " ".join(screen.split())
    assert all(len(line) <= 50 for line in screen.splitlines())


def test_a_call_cut_by_the_quorum_is_drawn_as_a_cut() -> None:
    turn = TurnRecord("C", "q", "ok", 0.0, duration=2.0, calls=[
        CallRecord(1, 0, "proposer", "quick", "p", "m", text="a", started=0.0, duration=0.5),
        CallRecord(1, 1, "proposer", "straggler", "p", "m", error="cut by the quorum (1 of 2 answered, quorum 1)",
                   error_kind="quorum", started=0.0, duration=0.5),
        CallRecord(2, 0, "aggregator", "judge", "p", "m", text="b", started=0.5, duration=1.5),
    ], id=4)  # fmt: skip
    picture = timeline(turn)
    bars = {b.model: b for b in picture.bars}
    assert bars["straggler"].state == "quorum" and bars["straggler"].what == "cut by the quorum"
    screen = render_text(picture, width=100)
    row = next(line for line in screen.splitlines() if "straggler" in line)
    assert "✂" in row and "✗" not in row and "cut by the quorum" in row


def test_repl_commands_history_usage_trace_estimate(moa, llm_server, moa_home: Path) -> None:  # type: ignore[no-untyped-def]
    (moa_home / "config.toml").write_text('[pricing."judge"]\ninput = 1\noutput = 2\n')
    ran = moa(
        ["chat", "-r", "alpha,beta", "-a", "judge"], input="first question\n/history\n/usage\n/trace\n/estimate\n"
    )
    assert ran.returncode == 0, ran.stderr
    err = ran.stderr
    assert "1. turn 1" in err and "first question" in err
    assert "last turn (ok)" in err and "judge: $0.0" in err and "alpha: unpriced" in err
    assert "this conversation: 1 turns, at least $0.0" in err
    assert "layer 1" in err and "aggregator" in err and "┃" in err
    flat = " ".join(err.split())
    assert "worst case of the next turn" in flat and "no price for alpha, beta" in flat
