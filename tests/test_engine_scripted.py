"""Engine semantics on the in-process ScriptedProvider: no SDK, no sockets, microseconds each.

Layer wiring, typed failures, finish reasons, the piece cap, deadlines, cancellation, seeds
and concurrency. The wire format itself is proven by tests/test_engine.py (real SDK, fake
server); these pin what the engine does with what a provider says.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from moa_cli.engine import Plan, piece_limit, run_turn
from moa_cli.errors import (
    AuthenticationError,
    EmptyAnswer,
    ProviderError,
    RateLimitError,
    StreamCutOff,
    TurnFailed,
)
from moa_cli.events import AnswerDelta, CallFailed, CallFinished, Event
from moa_cli.prompts import AGGREGATOR_PROMPT
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
from moa_cli.types import Message, Usage

Q: list[Message] = [{"role": "user", "content": "q"}]


class Run:
    """One turn on a scripted provider, with the events it emitted."""

    def __init__(self, provider: ScriptedProvider | None = None) -> None:
        self.provider = provider or ScriptedProvider("fake")
        self.events: list[Event] = []

    def __call__(self, plan: Plan, messages: list[Message] = Q):
        return asyncio.run(run_turn(messages, plan, ScriptedRouter(self.provider), self.events.append))

    def failed(self) -> list[CallFailed]:
        return [e for e in self.events if isinstance(e, CallFailed)]


def plan(**kwargs) -> Plan:
    return Plan(**{"references": ("alpha", "beta"), "aggregator": "judge", **kwargs})


def block(answers: list[str]) -> str:
    numbered = "\n\n".join(f"<response_{n}>\n{a}\n</response_{n}>" for n, a in enumerate(answers, 1))
    return f"{AGGREGATOR_PROMPT}\n\n{numbered}"


# ---------------------------------------------------------------------------- wiring


def test_each_layer_sees_the_previous_layers_answers() -> None:
    run = Run()
    for model in ("alpha", "beta"):
        run.provider.enqueue(model, f"{model} one", f"{model} two")
    run.provider.enqueue("judge", "final")
    result = run(plan(rounds=2))
    alpha = run.provider.calls_for("alpha")
    assert alpha[0].messages == Q
    # The default layout: after the conversation, at the end of its last message.
    assert alpha[1].messages == [{"role": "user", "content": "q\n\n" + block(["alpha one", "beta one"])}]
    (judge,) = run.provider.calls_for("judge")
    assert judge.messages == [{"role": "user", "content": "q\n\n" + block(["alpha two", "beta two"])}]
    assert result.answer == "final"
    assert [(p.model, p.layer) for p in result.proposals] == [("alpha", 1), ("beta", 1), ("alpha", 2), ("beta", 2)]
    run.provider.assert_complete()


def test_answer_deltas_come_only_from_the_aggregator_in_order() -> None:
    run = Run()
    run.provider.enqueue("judge", Step(["The ", "answer", "."]))
    run(plan())
    assert [e.text for e in run.events if isinstance(e, AnswerDelta)] == ["The ", "answer", "."]
    assert run.events[-1].type == "turn_done"


def test_seeds_are_distinct_per_sample_and_the_aggregator_gets_the_base() -> None:
    run = Run()
    run(plan(references=("alpha",) * 3, rounds=2, seed=100))
    seeds = [c.seed for c in run.provider.calls_for("alpha")]
    assert len(set(seeds)) == 6
    assert run.provider.calls_for("judge")[0].seed == 100


def test_num_proc_caps_the_calls_in_flight() -> None:
    run = Run()
    for i in range(6):
        run.provider.set_default(f"m{i}", Step("x", delay=0.01))
    run(plan(references=tuple(f"m{i}" for i in range(6)), num_proc=2))
    assert run.provider.peak == 2


# ---------------------------------------------------------------------------- typed failures


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("auth", 401),
        ("rate_limit", 429),
        ("not_found", 404),
        ("timeout", None),
        ("connection", None),
        ("cut_off", None),
        ("bad_response", None),
        ("other", 500),
        ("cancelled", None),
    ],
)
def test_a_failed_reference_keeps_its_kind_and_status(kind: str, status: int | None) -> None:
    run = Run()
    run.provider.enqueue("alpha", Step(error=kind, status=status, reason=f"a {kind} failure"))
    result = run(plan())
    alpha = result.proposals[0]
    assert (alpha.text, alpha.error, alpha.error_kind, alpha.status) == (None, f"a {kind} failure", kind, status)
    assert alpha.timed_out == (kind == "timeout")
    (event,) = run.failed()
    assert (event.kind, event.status, event.error) == (kind, status, f"a {kind} failure")
    assert alpha.to_dict()["error_kind"] == kind and alpha.to_dict()["status"] == status
    assert "a " + kind not in (run.provider.calls_for("judge")[0].messages[0]["content"])


def test_a_cut_off_reference_is_dropped_even_after_streaming() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("one two three four", error="cut_off", error_after=2))
    result = run(plan())
    assert result.proposals[0].error_kind == "cut_off"
    assert "one two" not in run.provider.calls_for("judge")[0].messages[0]["content"]
    assert result.usage.total_tokens is None  # it streamed tokens nobody counted


def test_turn_failed_holds_the_original_exceptions() -> None:
    run = Run()
    first, second = AuthenticationError("alpha", "bad key", status=401), RateLimitError("beta", "slow down", status=429)
    run.provider.enqueue("alpha", Step(raises=first))
    run.provider.enqueue("beta", Step(raises=second))
    with pytest.raises(TurnFailed, match="every reference model failed in layer 1") as caught:
        run(plan())
    assert caught.value.failures[0] is first and caught.value.failures[1] is second
    assert (caught.value.kind, caught.value.status, caught.value.aggregator) == ("other", None, False)
    assert run.provider.calls_for("judge") == []


def test_turn_failed_summarises_a_shared_kind() -> None:
    run = Run()
    for model in ("alpha", "beta"):
        run.provider.enqueue(model, Step(error="auth", status=401))
    with pytest.raises(TurnFailed) as caught:
        run(plan())
    assert (caught.value.kind, caught.value.status) == ("auth", 401)
    assert all(isinstance(f, AuthenticationError) for f in caught.value.failures)


def test_a_failing_aggregator_fails_the_turn_with_its_own_exception() -> None:
    run = Run()
    run.provider.enqueue("judge", Step("The answer is", error="cut_off", error_after=2))
    with pytest.raises(TurnFailed, match="the aggregator judge failed") as caught:
        run(plan())
    (failure,) = caught.value.failures
    assert isinstance(failure, StreamCutOff) and caught.value.kind == "cut_off" and caught.value.aggregator
    assert "".join(e.text for e in run.events if isinstance(e, AnswerDelta)) == "The answer "


def test_an_empty_answer_is_a_failure_of_kind_empty() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("   "))
    result = run(plan())
    assert result.proposals[0].error_kind == "empty" and result.proposals[0].error == "returned an empty answer"


def test_an_empty_answer_from_a_busy_openai_server_suggests_max_concurrency() -> None:
    run = Run(ScriptedProvider("llamacpp", kind="openai"))
    run.provider.enqueue("alpha", Step("", delay=0.01))
    run.provider.enqueue("beta", Step("fine", delay=0.01))
    result = run(plan())
    error = result.proposals[0].error or ""
    assert "another call to provider 'llamacpp' was in flight" in error
    assert "max_concurrency = 1 under [providers.llamacpp]" in error


@pytest.mark.parametrize("kind,max_concurrency", [("scripted", None), ("openai", 1)])
def test_no_concurrency_hint_for_other_kinds_or_a_capped_provider(kind: str, max_concurrency: int | None) -> None:
    provider = ScriptedProvider("p", kind=kind)
    provider.max_concurrency = max_concurrency  # type: ignore[attr-defined]
    run = Run(provider)
    run.provider.enqueue("alpha", Step("", delay=0.01))
    result = run(plan())
    assert result.proposals[0].error == "returned an empty answer"


def test_a_provider_bug_is_a_failure_of_kind_other_with_its_cause() -> None:
    run = Run()
    bug = KeyError("choices")
    run.provider.enqueue("alpha", Step(raises=bug))
    run.provider.enqueue("beta", Step(raises=ValueError("nope")))
    with pytest.raises(TurnFailed) as caught:
        run(plan())
    failure = caught.value.failures[0]
    assert type(failure) is ProviderError and failure.kind == "other" and failure.__cause__ is bug
    assert "unexpected error: KeyError" in failure.reason


def test_an_event_handler_error_is_not_blamed_on_the_model() -> None:
    def broken(event: Event) -> None:
        if isinstance(event, AnswerDelta):
            raise BrokenPipeError("reader went away")

    provider = ScriptedProvider()
    with pytest.raises(BrokenPipeError):
        asyncio.run(run_turn(Q, plan(), ScriptedRouter(provider), broken))
    assert len(provider.cancelled) == 1  # the aggregator's stream was closed


# ---------------------------------------------------------------------------- finish reasons, caps


def test_finish_reasons_are_recorded() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("cut short", finish_reason="length"))
    run.provider.enqueue("beta", Step("unknown end", finish_reason=None))
    run.provider.enqueue("judge", Step("final, cut", finish_reason="length"))
    result = run(plan(max_tokens=7))
    assert [p.finish_reason for p in result.proposals] == ["length", None]
    assert result.proposals[0].text == "cut short"  # kept: a length stop is not a failure
    assert (result.finish_reason, result.max_tokens) == ("length", 7)
    assert result.to_dict()["finish_reason"] == "length"
    finished = [e for e in run.events if isinstance(e, CallFinished)]
    assert [e.finish_reason for e in finished] == ["length", None, "length"]


def test_a_stream_far_past_max_tokens_is_cut() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("la", endless=True))
    result = run(plan(max_tokens=5))
    alpha = result.proposals[0]
    assert alpha.error_kind == "bad_response" and "far past max_tokens" in (alpha.error or "")
    assert f"({piece_limit(5) + 1} pieces for max_tokens 5)" in (alpha.error or "")
    assert run.provider.cancelled and run.provider.cancelled[0].model == "alpha"  # its stream was closed


def test_usage_is_summed_and_unknown_when_one_call_did_not_report() -> None:
    run = Run()
    run.provider.set_default("alpha", Step("a", usage=Usage(1, 2, 3)))
    run.provider.set_default("beta", Step("b", usage=Usage(4, 5, 9)))
    run.provider.set_default("judge", Step("c", usage=Usage(10, 1, 11)))
    assert run(plan()).usage == Usage(15, 8, 23)
    run.provider.set_default("beta", Step("b", report_usage=False))
    assert run(plan()).usage.total_tokens is None


# ---------------------------------------------------------------------------- deadlines, cancellation


def test_the_layer_deadline_cuts_the_straggler_with_kind_deadline() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("fast"))
    run.provider.enqueue("beta", Step("slow", delay=5))
    result = run(plan(layer_deadline=0.02))
    beta = result.proposals[1]
    assert (beta.error_kind, beta.timed_out) == ("deadline", True)
    assert "layer deadline" in (beta.error or "")
    assert run.provider.cancelled[0].model == "beta"
    assert [e.kind for e in run.failed()] == ["deadline"]


def test_a_deadline_with_no_answer_yet_waits_for_the_first() -> None:
    run = Run()
    run.provider.enqueue("alpha", Step("first", delay=0.05))
    run.provider.enqueue("beta", Step("never", delay=5))
    result = run(plan(layer_deadline=0.001))
    assert result.proposals[0].text == "first" and result.proposals[1].error_kind == "deadline"


def test_cancelling_the_turn_closes_every_stream() -> None:
    provider = ScriptedProvider()
    for model in ("alpha", "beta"):
        provider.enqueue(model, Step("word " * 100, piece_delay=0.01))

    async def main() -> None:
        task = asyncio.create_task(run_turn(Q, plan(), ScriptedRouter(provider)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sorted(c.model for c in provider.cancelled) == ["alpha", "beta"]
    assert provider.active == 0 and provider.calls_for("judge") == []


def test_an_empty_conversation_is_refused() -> None:
    with pytest.raises(ValueError):
        asyncio.run(run_turn([], plan(), ScriptedRouter(ScriptedProvider())))


def test_the_engine_alone_prints_nothing() -> None:
    """Importing the engine and running a turn writes nothing on stdout or stderr."""
    code = (
        "import asyncio\n"
        "from moa_cli.engine import Plan, run_turn\n"
        "from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step\n"
        "p = ScriptedProvider(); p.enqueue('alpha', Step(error='timeout'))\n"
        "r = asyncio.run(run_turn([{'role': 'user', 'content': 'q'}], Plan(('alpha', 'beta'), 'judge'), ScriptedRouter(p)))\n"
        "assert r.answer == 'Answer from judge.'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_empty_answer_error_class() -> None:
    assert EmptyAnswer("m", "x").kind == "empty"
