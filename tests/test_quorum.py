"""The quorum (--quorum K): a layer goes on once K references have answered; the rest are cut.

Engine semantics on the ScriptedProvider (microseconds), then the latency claim, the closed
streams and the reporting through the real SDK against the fake server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from moa_cli import MoA
from moa_cli.config import load_settings
from moa_cli.engine import Plan, run_turn
from moa_cli.errors import ConfigError, TurnFailed
from moa_cli.events import CallFailed, CallFinished, Event
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
from moa_cli.render import footer_text
from moa_cli.repl.slash import apply_setting
from moa_cli.types import Message
from tests.fakes.helpers import references_in
from tests.fakes.llm_server import FakeLLMServer, Reply

Q: list[Message] = [{"role": "user", "content": "q"}]
REFS = ("a", "b", "c", "d")


def turn(provider: ScriptedProvider, events: list[Event] | None = None, **plan: object):
    full = Plan(**{"references": REFS, "aggregator": "judge", **plan})  # type: ignore[arg-type]
    sink = events.append if events is not None else None
    return asyncio.run(run_turn(Q, full, ScriptedRouter(provider), sink))


def judge_answers(provider: ScriptedProvider) -> int:
    (judge,) = provider.calls_for("judge")
    return len(re.findall(r"<response_\d+>", judge.messages[0]["content"]))


# ---------------------------------------------------------------------------- engine semantics


def test_the_layer_goes_on_at_the_quorum_and_cuts_the_rest() -> None:
    provider = ScriptedProvider()
    for model in ("a", "b", "c"):
        provider.enqueue(model, Step(f"{model} ok"))
    provider.enqueue("d", Step("never", delay=10))
    events: list[Event] = []
    started = time.perf_counter()
    result = turn(provider, events, quorum=3)
    assert time.perf_counter() - started < 2
    d = result.proposals[3]
    assert (d.text, d.error_kind, d.timed_out) == (None, "quorum", False)
    assert "cut by the quorum (3 of 4 answered, quorum 3)" in (d.error or "")
    assert [c.model for c in provider.cancelled] == ["d"] and provider.active == 0
    assert judge_answers(provider) == 3
    assert [(e.call.model, e.kind) for e in events if isinstance(e, CallFailed)] == [("d", "quorum")]


def test_failures_do_not_count_towards_the_quorum() -> None:
    provider = ScriptedProvider()
    provider.enqueue("a", Step(error="rate_limit", status=429))
    provider.enqueue("b", Step("b ok", delay=0.01))
    provider.enqueue("c", Step("c ok", delay=0.05))
    provider.enqueue("d", Step("d never", delay=10))
    result = turn(provider, quorum=2)
    assert [p.error_kind for p in result.proposals] == ["rate_limit", None, None, "quorum"]
    assert judge_answers(provider) == 2


def test_a_quorum_that_cannot_be_reached_waits_for_every_reference() -> None:
    provider = ScriptedProvider()
    provider.enqueue("a", Step(error="timeout"))
    provider.enqueue("b", Step(error="auth", status=401))
    provider.enqueue("c", Step("c ok", delay=0.02))
    provider.enqueue("d", Step("d ok", delay=0.04))
    result = turn(provider, quorum=3)
    assert [p.text for p in result.proposals] == [None, None, "c ok", "d ok"]
    assert judge_answers(provider) == 2


def test_a_quorum_of_everyone_is_no_cut_and_none_is_off() -> None:
    for quorum in (4, None):
        provider = ScriptedProvider()
        provider.enqueue("d", Step("d slow", delay=0.05))
        result = turn(provider, quorum=quorum)
        assert all(p.text for p in result.proposals) and not provider.cancelled


def test_with_a_deadline_whichever_comes_first() -> None:
    # The deadline first: one answer by then, the quorum of 3 not reached.
    provider = ScriptedProvider()
    provider.enqueue("a", Step("a ok"))
    for model in ("b", "c", "d"):
        provider.enqueue(model, Step("late", delay=10))
    result = turn(provider, quorum=3, layer_deadline=0.05)
    assert [p.error_kind for p in result.proposals] == [None, "deadline", "deadline", "deadline"]
    # The quorum first: two quick answers long before the deadline.
    provider = ScriptedProvider()
    provider.enqueue("a", Step("a ok"))
    provider.enqueue("b", Step("b ok"))
    provider.enqueue("c", Step("late", delay=10))
    provider.enqueue("d", Step("late", delay=10))
    started = time.perf_counter()
    result = turn(provider, quorum=2, layer_deadline=5)
    assert time.perf_counter() - started < 2
    assert [p.error_kind for p in result.proposals] == [None, None, "quorum", "quorum"]


def test_never_zero_answers_with_a_deadline_and_a_quorum() -> None:
    provider = ScriptedProvider()
    provider.enqueue("a", Step("first", delay=0.05))
    for model in ("b", "c", "d"):
        provider.enqueue(model, Step("late", delay=10))
    result = turn(provider, quorum=2, layer_deadline=0.001)
    assert result.proposals[0].text == "first"
    assert judge_answers(provider) == 1
    provider = ScriptedProvider()
    for model in REFS:
        provider.enqueue(model, Step(error="connection"))
    with pytest.raises(TurnFailed, match="every reference model failed"):
        turn(provider, quorum=1, layer_deadline=0.01)


def test_calls_still_waiting_for_a_slot_are_cut_too() -> None:
    provider = ScriptedProvider()
    for model in REFS:
        provider.enqueue(model, Step(f"{model} ok", delay=0.02))
    events: list[Event] = []
    result = turn(provider, events, quorum=2, num_proc=2)
    assert [p.error_kind for p in result.proposals] == [None, None, "quorum", "quorum"]
    # A freed slot may let one start before the layer wakes: it is closed at once.
    assert {r.model for r in provider.calls} - {"a", "b", "judge"} == {r.model for r in provider.cancelled}
    assert provider.active == 0


def test_the_quorum_applies_to_every_layer() -> None:
    provider = ScriptedProvider()
    for model in ("a", "b", "c"):
        provider.set_default(model, Step(f"{model} ok"))
    provider.set_default("d", Step("slow", delay=10))
    result = turn(provider, quorum=3, rounds=2)
    assert [(p.layer, p.error_kind) for p in result.proposals if p.error_kind] == [(1, "quorum"), (2, "quorum")]
    assert "slow" not in provider.calls_for("a")[1].messages[0]["content"]


# ---------------------------------------------------------------------------- the setting


def test_the_quorum_is_checked_against_the_references(tmp_path: Path) -> None:
    env = {"MOA_HOME": str(tmp_path), "TOGETHER_API_KEY": "k"}
    s = load_settings({"references": ["a", "b", "c"], "aggregator": "j", "quorum": 3}, env)
    assert s.quorum == 3
    with pytest.raises(ConfigError, match=r"invalid --quorum: 4 is more than the 3 reference models"):
        load_settings({"references": ["a", "b", "c"], "aggregator": "j", "quorum": 4}, env)
    with pytest.raises(ConfigError, match=r"quorum \(from env MOA_QUORUM\): 5 is more than"):
        load_settings({"references": ["a", "b"], "aggregator": "j"}, {**env, "MOA_QUORUM": "5"})
    with pytest.raises(ConfigError, match="must be at least 1"):
        load_settings({"references": ["a"], "aggregator": "j", "quorum": 0}, env)
    # /set: a quorum above the line-up, or a line-up below the quorum, is refused.
    assert apply_setting(s, "quorum", "2").quorum == 2
    assert apply_setting(s, "quorum", "off").quorum is None
    with pytest.raises(ConfigError, match="more than the 3 reference"):
        apply_setting(s, "quorum", "4")
    with pytest.raises(ConfigError, match=r"more than the 1 reference model$"):
        apply_setting(s, "references", "x")
    # The Python API takes it by name, and the engine's plan carries it.
    moa = MoA(["a", "b"], "j", quorum=1, env=env)
    assert moa.plan.quorum == 1


def test_the_quorum_in_a_config_file_and_a_lineup(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'quorum = 2\nreference_models = ["a", "b", "c"]\naggregator = "j"\n'
        '[lineups.fast]\nreference_models = ["x", "y"]\naggregator = "j"\nquorum = 1\n'
    )
    env = {"MOA_HOME": str(tmp_path), "TOGETHER_API_KEY": "k"}
    assert load_settings({}, env).quorum == 2
    assert load_settings({"lineup": "fast"}, env).quorum == 1


def test_the_footer_names_the_cut() -> None:
    from moa_cli.types import Proposal, TurnResult, Usage

    result = TurnResult(
        "x", "j", [Proposal("a", 1, text="a"), Proposal("d", 1, error="cut", error_kind="quorum")], Usage(), 1.0
    )
    assert footer_text(result).endswith("references (d cut by the quorum)")


# ---------------------------------------------------------------------------- through the SDK and the fake server


def test_a_straggler_costs_nothing_with_a_quorum(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    """4 references, one taking 10 s, quorum 3: about one fast call plus the aggregator."""
    for model in ("a", "b", "c"):
        llm_server.set_default(model, Reply(text=f"{model} says", latency=0.2))
    llm_server.set_default("d", Reply(text="d says", latency=10.0))
    llm_server.set_default("judge", Reply(text="The final answer.", latency=0.2))
    events: list[Event] = []

    async def two_turns() -> tuple[float, object]:
        async with MoA(references=list(REFS), aggregator="judge", quorum=3) as moa:
            await moa.arun("warm-up")  # the SDK's import and connections are not the point
            events.clear()
            started = time.perf_counter()
            result = await moa.arun("q", on_event=events.append)
            return time.perf_counter() - started, result

    wall, result = asyncio.run(two_turns())
    fast = max(e.seconds for e in events if isinstance(e, CallFinished) and not e.call.is_aggregator)
    aggregator = next(e.seconds for e in events if isinstance(e, CallFinished) and e.call.is_aggregator)
    # The turn is one fast call plus the aggregator, give or take the set-up: far from 10 s.
    assert wall < 10.0 / 4
    assert wall / (fast + aggregator) < 1.5
    assert result.answer == "The final answer."
    system = references_in(llm_server.requests_for("judge")[1])
    assert len(re.findall(r"<response_\d+>", system)) == 3 and "d says" not in system
    assert result.proposals[3].error_kind == "quorum"
    # The straggler's stream was closed: the server saw the client go away.
    assert llm_server.wait_until_idle(timeout=3.0)
    assert all(r.disconnected for r in llm_server.requests_for("d"))


def test_the_quorum_in_json_and_the_footer(moa, llm_server: FakeLLMServer) -> None:
    for model in ("a", "b"):
        llm_server.set_default(model, Reply(text=f"{model} says"))
    llm_server.set_default("c", Reply(text="c says", latency=10.0))
    lineup = ["-r", "a,b,c", "-a", "judge"]
    proc = moa(["ask", *lineup, "--quorum", "2", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    c = data["proposals"][2]
    assert (c["model"], c["text"], c["error_kind"]) == ("c", None, "quorum")
    assert "cut by the quorum" in c["error"]
    assert "warning" not in proc.stderr  # asked for: not a warning
    assert llm_server.wait_until_idle(timeout=3.0)
    proc = moa(["ask", *lineup, "--quorum", "2", "q"])
    assert proc.returncode == 0, proc.stderr
    assert "c cut by the quorum)" in proc.stderr
    assert "moa: c (layer 1) cut by the quorum after" in proc.stderr
    proc = moa(["ask", *lineup, "--quorum", "4", "q"])
    assert proc.returncode == 2
    assert "invalid --quorum: 4 is more than the 3 reference models" in proc.stderr
