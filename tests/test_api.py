"""The Python API's own promises: any setting by name, a router someone else owns, and
sampling for the answer's call alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moa_cli.api import MoA
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter


def env(home: Path) -> dict[str, str]:
    return {"MOA_HOME": str(home), "TOGETHER_API_KEY": "k", "MOA_LOG": "false"}


def test_a_router_routes_every_call_and_is_never_closed(tmp_path: Path) -> None:
    provider = ScriptedProvider("fake")
    closed: list[bool] = []

    class Router(ScriptedRouter):
        async def aclose(self) -> None:  # MoA must never call this: the router is not its own
            closed.append(True)

    moa = MoA(["a", "b"], "judge", env=env(tmp_path), router=Router(provider), temperature=0.4, max_tokens=50)

    async def two_turns() -> list[str]:
        async with moa:
            first = await moa.arun("one")
            second = await moa.arun("two")
        return [first.answer, second.answer]

    assert asyncio.run(two_turns()) == ["Answer from judge.", "Answer from judge."]
    assert [c.model for c in provider.calls] == ["a", "b", "judge"] * 2
    assert {(c.temperature, c.max_tokens) for c in provider.calls} == {(0.4, 50)}
    assert closed == []


def test_aggregator_sampling_reaches_the_answers_call_alone(tmp_path: Path) -> None:
    provider = ScriptedProvider("fake")
    moa = MoA(["a", "b"], "judge", env=env(tmp_path), router=ScriptedRouter(provider), temperature=0.7, seed=3)
    sampling = {"temperature": 0.0, "max_tokens": 9, "seed": 42}
    asyncio.run(moa.arun("hi", aggregator_sampling=sampling))
    by_model = {c.model: (c.temperature, c.max_tokens, c.seed) for c in provider.calls}
    assert by_model["judge"] == (0.0, 9, 42)
    assert by_model["a"] == (0.7, 512, 3) and by_model["b"] == (0.7, 512, 4)
    asyncio.run(moa.arun("again"))  # the next turn is back to the settings
    assert (provider.calls[-1].temperature, provider.calls[-1].max_tokens) == (0.7, 512)


def test_aggregator_sampling_takes_only_sampling_fields(tmp_path: Path) -> None:
    moa = MoA(["a"], "judge", env=env(tmp_path), router=ScriptedRouter(ScriptedProvider("fake")))
    with pytest.raises(TypeError, match="'model'"):
        asyncio.run(moa.arun("hi", aggregator_sampling={"model": "other"}))


def test_settings_and_single_settings_do_not_mix(tmp_path: Path) -> None:
    moa = MoA(["a"], "judge", env=env(tmp_path))
    with pytest.raises(TypeError, match="not both"):
        MoA(settings=moa.settings, temperature=0.1)


def test_max_cost_counts_the_answers_own_budget(tmp_path: Path) -> None:
    """A turn that sets the aggregator's max_tokens (moa serve's request) is checked with it."""
    from moa_cli.errors import ConfigError

    (tmp_path / "config.toml").write_text(
        '[pricing."judge"]\ninput = 1\noutput = 1\n[pricing."a"]\ninput = 1\noutput = 1\n'
    )
    provider = ScriptedProvider("fake")
    moa = MoA(["a"], "judge", env=env(tmp_path), router=ScriptedRouter(provider), max_tokens=10, max_cost=0.01)
    asyncio.run(moa.arun("hi"))  # a few hundred tokens at $1 a million: well under a cent
    with pytest.raises(ConfigError, match="could cost"):
        asyncio.run(moa.arun("hi", aggregator_sampling={"max_tokens": 1_000_000}))  # $1 of output
    assert [c.model for c in provider.calls] == ["a", "judge"]  # the refused turn sent nothing


def test_rerun_failed_redoes_the_last_layers_failures_over_its_own_input(tmp_path: Path) -> None:
    """Two rounds: layer 2's failed reference runs again over layer 1's answers, with its seed;
    nothing that answered is called again; the usage is the re-run's and the aggregator's."""
    from moa_cli.types import Proposal, Usage

    provider = ScriptedProvider("fake").enqueue("b", "b again").enqueue("judge", "final")
    moa = MoA(["a", "b"], "judge", env=env(tmp_path), router=ScriptedRouter(provider), rounds=2, seed=7)
    kept = [
        Proposal("a", 1, text="a one", usage=Usage(1, 1, 2)),
        Proposal("b", 1, text="b one", usage=Usage(1, 1, 2)),
        Proposal("a", 2, text="a two", usage=Usage(1, 1, 2)),
        Proposal("b", 2, error="HTTP 500", error_kind="server"),
    ]
    result = asyncio.run(moa.aaggregate("hi", kept, rerun_failed=True))
    assert [c.model for c in provider.calls] == ["b", "judge"]
    rerun = provider.calls[0]
    assert "a one" in str(rerun.messages) and "b one" in str(rerun.messages)  # layer 1's answers
    assert rerun.seed == moa.plan.seed_for(2, 1)
    assert [p.text for p in result.proposals] == ["a one", "b one", "a two", "b again"]
    assert "b again" in str(provider.calls[1].messages) and result.answer == "final"
    fresh, aggregator = result.proposals[3].usage, result.aggregator_usage
    assert fresh is not None and aggregator is not None and fresh.total_tokens
    assert result.usage.total_tokens == fresh.total_tokens + aggregator.total_tokens  # not the kept ones'
    # Quorum met by what was kept: nothing is redone.
    provider.calls.clear()
    quorum = MoA(["a", "b"], "judge", env=env(tmp_path), router=ScriptedRouter(provider), rounds=2, quorum=1)
    asyncio.run(quorum.aaggregate("hi", kept, rerun_failed=True))
    assert [c.model for c in provider.calls] == ["judge"]
