"""Long inputs fitted to each model's context window (fitting.py), the references' own token
cap, and degraded answers that say so: each fitting step as the fake server receives it."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moa_cli.api import MoA
from moa_cli.errors import ContextOverflow, TurnFailed
from moa_cli.fitting import (
    ANSWER_MARK,
    DEFAULT_CONTEXT,
    Parts,
    Window,
    estimate_tokens,
    fit,
    with_references,
)
from moa_cli.prompts import AGGREGATOR_PROMPT
from moa_cli.types import Message
from tests.conftest import run_moa
from tests.fakes.helpers import asked, references_in, without_references
from tests.fakes.llm_server import FakeLLMServer, RecordedRequest, Reply
from tests.fakes.serve_process import ServeProcess

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
]
MARK = "characters left out here by moa to fit the model's context"


def long_text(tokens: int, seed: int = 1) -> str:
    """About `tokens` tokens of numbered paragraphs (a word and its space is about one token)."""
    rng = random.Random(seed)
    paragraphs = [
        f"Section {n}. " + " ".join(rng.choice(WORDS) for _ in range(200)) + "." for n in range(tokens // 200)
    ]
    return "\n\n".join(paragraphs)


def config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def wire_tokens(request: RecordedRequest) -> int:
    """What fitting's estimate makes of the messages the server received."""
    return estimate_tokens([{"role": m["role"], "content": m["content"]} for m in request.messages])


# ---------------------------------------------------------------------------- the steps, in memory


def build(conversation: list[Message], answers: list[str]) -> list[Message]:
    return with_references(AGGREGATOR_PROMPT)(conversation, answers)


def test_a_prompt_that_fits_is_left_as_it_is() -> None:
    parts = Parts([{"role": "user", "content": "hi"}], ("an answer",), build)
    fitted = fit(parts, Window(4096, "config"), 512, estimate_tokens, estimated=True, model="m")
    assert not fitted.changed and fitted.messages == parts.messages() and fitted.max_tokens == 512


def test_the_steps_go_in_order_and_only_as_far_as_needed() -> None:
    old: list[Message] = [
        {"role": "user", "content": "old question " * 300},
        {"role": "assistant", "content": "old answer " * 300},
    ]
    last: Message = {"role": "user", "content": "x" * 3000}
    system: Message = {"role": "system", "content": "Be brief."}
    # 1. the oldest turns alone are enough: the answers and the input are untouched
    parts = Parts([system, *old, last], ("a" * 600, "b" * 600), build)
    fitted = fit(parts, Window(2048, "config"), 256, estimate_tokens, estimated=True, model="m")
    assert [m["content"] for m in fitted.messages[1:]] == [last["content"]]
    assert fitted.messages[0]["content"].startswith("Be brief.") and "a" * 600 in fitted.messages[0]["content"]
    assert fitted.steps == ["the 2 oldest messages of the conversation left out"]
    # 2. then the answers, evenly: the short one keeps every character, the long ones one length
    parts = Parts([system, last], ("a" * 6000, "b" * 300, "c" * 9000), build)
    fitted = fit(parts, Window(4096, "config"), 256, estimate_tokens, estimated=True, model="m")
    block = fitted.messages[0]["content"]
    assert "b" * 300 in block and block.count(ANSWER_MARK) == 2 and fitted.messages[-1] == last
    assert fitted.steps[0].startswith("the reference answers shortened evenly (2 of 3 cut to")
    assert estimate_tokens(fitted.messages) + 256 <= 4096
    # 3. then the input, in its middle, marked: its start and its end are kept
    text = "START " + "y" * 30000 + " END"
    parts = Parts([system, {"role": "user", "content": text}], ("a" * 600,), build)
    fitted = fit(parts, Window(4096, "config"), 256, estimate_tokens, estimated=True, model="m")
    sent = fitted.messages[-1]["content"]
    assert (
        sent.startswith("START ")
        and sent.endswith(" END")
        and MARK in sent
        and "a" * 600 in fitted.messages[0]["content"]
    )
    assert estimate_tokens(fitted.messages) + 256 <= 4096


def test_max_tokens_over_half_the_window_is_lowered() -> None:
    fitted = fit(
        Parts([{"role": "user", "content": "hi"}]),
        Window(1024, "config"),
        4000,
        estimate_tokens,
        estimated=True,
        model="m",
    )
    assert fitted.max_tokens == 512 and fitted.steps == ["max_tokens lowered from 4,000 to 512"]


def test_a_system_prompt_longer_than_the_window_cannot_fit() -> None:
    parts = Parts([{"role": "system", "content": "s" * 30000}, {"role": "user", "content": "hi"}])
    with pytest.raises(ContextOverflow, match=r"cannot fit .*\(2,048 tokens, moa.s default") as caught:
        fit(parts, Window(2048, "default"), 256, estimate_tokens, estimated=True, model="m")
    assert caught.value.kind == "context"


# ---------------------------------------------------------------------------- on the wire


@pytest.fixture
def moa_for(moa_env: dict[str, str], moa_home: Path) -> Callable[..., MoA]:
    def make(contexts: str = "", **settings: Any) -> MoA:
        config(moa_home, contexts)
        return MoA(env={**moa_env, "MOA_LOG": "false"}, **settings)

    return make


def test_the_oldest_turns_go_first(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    llm_server.model_fields = {"alpha": {"context_length": 131072}}
    history: list[Message] = [{"role": "system", "content": "You are terse."}]
    for n in range(6):
        history += [
            {"role": "user", "content": f"question {n} " * 400},
            {"role": "assistant", "content": f"answer {n} " * 400},
        ]
    history.append({"role": "user", "content": "And now?"})
    moa = moa_for("[models.judge]\ncontext = 4096\n", references=["alpha"], aggregator="judge")
    result = asyncio.run(moa.arun(history))
    (alpha,) = llm_server.requests_for("alpha")
    (judge,) = llm_server.requests_for("judge")
    assert alpha.messages == history  # 131,072 tokens, as /v1/models says: all of it
    assert judge.messages[0]["content"].startswith("You are terse.") and asked(judge) == "And now?"
    kept = [m["content"] for m in without_references(judge.messages)[1:-1]]
    assert kept and all(text in [m["content"] for m in history] for text in kept)
    assert "question 0" not in json.dumps(judge.messages)  # the oldest went first
    assert "answer 5" in json.dumps(judge.messages)  # the latest stayed
    assert wire_tokens(judge) + 512 <= 4096
    (entry,) = result.fitted
    assert entry["model"] == "judge" and entry["window"] == 4096 and entry["window_source"] == "config"
    assert entry["estimated"] is True and entry["steps"][0].endswith("oldest messages of the conversation left out")


def test_the_answers_are_shortened_evenly_before_the_input(
    moa_for: Callable[..., MoA], llm_server: FakeLLMServer
) -> None:
    llm_server.set_default("alpha", Reply(text="alpha " * 3000))
    llm_server.set_default("beta", Reply(text="short beta answer"))
    llm_server.set_default("gamma", Reply(text="gamma " * 5000))
    moa = moa_for(
        "[models.judge]\ncontext = 4096\n",
        references=["alpha", "beta", "gamma"],
        aggregator="judge",
        reference_max_tokens=4000,  # long answers (at most half the default window), a short final one
    )
    question = "Compare these. " * 50
    result = asyncio.run(moa.arun(question))
    (judge,) = llm_server.requests_for("judge")
    system = references_in(judge)
    assert asked(judge) == question  # the input is whole
    assert "short beta answer" in system and system.count(ANSWER_MARK.strip()) == 2
    alpha_kept = system.split("<response_1>")[1].split("</response_1>")[0].count("alpha")
    gamma_kept = system.split("<response_3>")[1].split("</response_3>")[0].count("gamma")
    assert 0 < alpha_kept < 3000 and abs(alpha_kept - gamma_kept) <= 1  # one length for both
    assert wire_tokens(judge) + 512 <= 4096
    assert [e["model"] for e in result.fitted] == ["judge"]


def test_the_input_is_cut_in_its_middle_and_marked(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    text = "FIRST LINE\n" + long_text(12000) + "\nLAST LINE"
    moa = moa_for(
        "[models.alpha]\ncontext = 4096\n[models.judge]\ncontext = 4096\n", references=["alpha"], aggregator="judge"
    )
    result = asyncio.run(moa.arun(text))
    for request in (*llm_server.requests_for("alpha"), *llm_server.requests_for("judge")):
        sent = asked(request) or ""
        assert sent.startswith("FIRST LINE") and sent.endswith("LAST LINE") and MARK in sent
        assert wire_tokens(request) + 512 <= 4096
    assert "Answer from alpha." in references_in(llm_server.requests_for("judge")[0])  # the answer was kept
    assert [e["model"] for e in result.fitted] == ["alpha", "judge"]
    assert all(e["steps"][-1].startswith("the input cut in its middle") for e in result.fitted)


def test_a_request_that_cannot_fit_is_never_sent(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    moa = moa_for("[models.judge]\ncontext = 1024\n", references=["alpha"], aggregator="judge", system="rule " * 2000)
    with pytest.raises(TurnFailed) as caught:
        asyncio.run(moa.arun("hi"))
    assert caught.value.kind == "context" and "cannot fit" in str(caught.value)
    assert [r.model for r in llm_server.requests] == ["alpha"]  # nothing went to judge


def test_the_window_comes_from_the_model_list_asked_once(
    moa_for: Callable[..., MoA], llm_server: FakeLLMServer
) -> None:
    llm_server.model_fields = {"alpha": {"max_model_len": 4096}, "judge": {"meta": {"n_ctx_train": 3000}}}
    moa = moa_for("", references=["alpha", "alpha"], aggregator="judge")
    result = asyncio.run(moa.arun(long_text(6000)))
    assert llm_server.model_lists == 1
    windows = {(e["model"], e["window"], e["window_source"]) for e in result.fitted}
    assert windows == {("alpha", 4096, "provider"), ("judge", 3000, "provider")}
    assert all(wire_tokens(r) + 512 <= (4096 if r.model == "alpha" else 3000) for r in llm_server.requests)


def test_a_short_turn_asks_for_no_window(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    result = asyncio.run(moa_for("", references=["alpha"], aggregator="judge").arun("hi"))
    assert llm_server.model_lists == 0 and result.fitted == [] and result.to_dict()["fitted"] == []


def test_an_unknown_window_is_the_default_and_says_so(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    result = asyncio.run(moa_for("", references=["alpha"], aggregator="judge").arun(long_text(12000)))
    assert {(e["window"], e["window_source"]) for e in result.fitted} == {(DEFAULT_CONTEXT, "default")}


def test_reference_max_tokens_is_the_references_alone(moa_for: Callable[..., MoA], llm_server: FakeLLMServer) -> None:
    moa = moa_for("", references=["alpha", "beta"], aggregator="judge", max_tokens=700, reference_max_tokens=90)
    asyncio.run(moa.arun("hi"))
    assert {r.model: r.body["max_tokens"] for r in llm_server.requests} == {"alpha": 90, "beta": 90, "judge": 700}


# ---------------------------------------------------------------------------- the front ends


def test_a_20000_token_stdin_through_a_hosted_line_up(cli, moa_home: Path, llm_server: FakeLLMServer) -> None:
    """The issue's case: the aggregator declared with an 8k window, the references' windows from
    their provider; each shortening said once on stderr, and in --json."""
    config(moa_home, "[models.judge]\ncontext = 8192\n")
    llm_server.model_fields = {"alpha": {"context_length": 131072}, "beta": {"context_length": 16384}}
    llm_server.set_default("alpha", Reply(text="alpha " * 2500))
    llm_server.set_default("beta", Reply(text="beta " * 2500))
    text = long_text(20000)
    proc = cli(
        ["ask", "--json", "--reference-max-tokens", "3000", "-r", "alpha,beta", "-a", "judge", "Summarise this."],
        input=text,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "Answer from judge." and out["references"]["summary"] == "2 of 2 references"
    (alpha,) = llm_server.requests_for("alpha")
    (beta,) = llm_server.requests_for("beta")
    (judge,) = llm_server.requests_for("judge")
    assert asked(alpha) == text + "\n\nSummarise this."  # 131,072 tokens: sent whole
    assert MARK in (asked(beta) or "") and wire_tokens(beta) + 512 <= 16384
    assert MARK in (asked(judge) or "") and wire_tokens(judge) + 512 <= 8192
    assert (asked(judge) or "").endswith("Summarise this.")  # the question at the end is kept
    assert references_in(judge).count(ANSWER_MARK.strip()) == 2
    fitted = {e["model"]: e for e in out["fitted"]}
    assert set(fitted) == {"beta", "judge"}
    assert (fitted["beta"]["window"], fitted["beta"]["window_source"]) == (16384, "provider")
    assert (fitted["judge"]["window"], fitted["judge"]["window_source"]) == (8192, "config")
    said = [line for line in proc.stderr.splitlines() if "shortened the prompt" in line]
    assert len(said) == 2 and any("for judge" in line and "8,192 tokens, from the config file" in line for line in said)
    shown = cli(["logs", "show", str(out["turn_id"]), "--json"])  # the log keeps it, per call
    assert shown.returncode == 0, shown.stderr
    logged = {c["spec"]: c["settings"].get("fitted") for c in json.loads(shown.stdout)["calls"]}
    assert logged["alpha"] is None and logged["beta"]["window"] == 16384 and logged["judge"]["window"] == 8192
    assert logged["judge"]["steps"] == fitted["judge"]["steps"]


def test_a_degraded_answer_says_so(cli, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(status=500))
    proc = cli(["ask", "-r", "alpha,beta,gamma", "-a", "judge", "q"])
    assert proc.returncode == 0 and proc.stdout == "Answer from judge.\n"
    assert proc.stderr.splitlines()[-1].endswith("2 of 3 references (beta failed)")
    llm_server.script("beta", Reply(status=500))
    out = json.loads(cli(["ask", "--json", "-r", "alpha,beta,gamma", "-a", "judge", "q"]).stdout)
    assert out["references"] == {
        "asked": 3,
        "answered": 2,
        "degraded": True,
        "summary": "2 of 3 references (beta failed)",
    }


def test_serve_says_a_degraded_answer_in_a_field_and_a_header(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    import openai

    args = ["-r", "alpha,beta", "-a", "judge", "--allow-overrides"]
    served = ServeProcess(args, {**moa_env, "NO_PROXY": "127.0.0.1,localhost"})
    client = openai.OpenAI(base_url=served.base_url, api_key="none")
    try:
        llm_server.script("beta", Reply(status=500))
        raw = client.chat.completions.with_raw_response.create(model="moa", messages=[{"role": "user", "content": "q"}])
        body = json.loads(raw.http_response.text)
        assert raw.headers["x-moa-references"] == "1/2"
        assert raw.headers["x-moa-degraded"] == "1 of 2 references (beta failed)"
        assert body["moa"]["references"]["summary"] == "1 of 2 references (beta failed)"
        raw = client.chat.completions.with_raw_response.create(model="moa", messages=[{"role": "user", "content": "q"}])
        assert raw.headers["x-moa-references"] == "2/2" and "x-moa-degraded" not in raw.headers
        llm_server.requests.clear()
        client.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": "q"}], extra_body={"moa": {"reference_max_tokens": 40}}
        )
        assert {r.model: r.body["max_tokens"] for r in llm_server.requests} == {"alpha": 40, "beta": 40, "judge": 512}
    finally:
        client.close()
        served.stop()


@pytest.mark.local
def test_a_20000_token_stdin_through_the_offline_line_up(moa_home: Path) -> None:
    """No key: the offline line-up (local:smollm2). Its window is llama.cpp's (8,192 here, which
    takes minutes on a busy 2-core machine); the config declares 1,024 to keep the test short.
    The count is the model's own tokenizer: llama.cpp's prompt tokens are the ones fitting counted."""
    pytest.importorskip("llama_cpp")
    config(moa_home, '[models."local:smollm2"]\ncontext = 1024\n')
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("TOGETHER_", "MOA_"))}
    env.update({"MOA_HOME": str(moa_home), "MOA_LOG": "false"})
    proc = run_moa(["ask", "--json", "--max-tokens", "16", "Summarise this."], env, input=long_text(20000), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"].strip() and out["references"]["answered"] == 3
    fitted = out["fitted"]
    assert len(fitted) == 3 and {e["window_source"] for e in fitted} == {"config"}
    assert all(e["estimated"] is False and e["prompt_tokens"] + 3 * 16 <= 1024 for e in fitted)
    used = {p["usage"]["prompt_tokens"] for p in out["proposals"] if p["usage"]}
    assert used == {fitted[0]["prompt_tokens"]}  # llama.cpp evaluated exactly what fitting counted
    said = [line for line in proc.stderr.splitlines() if "shortened the prompt" in line]
    assert len(said) == 1 and "shared by 3 calls" in said[0]  # three samples, said once


# ---------------------------------------------------------------------------- refused by the provider

VLLM_REFUSAL = (
    "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens "
    "(8488 in the messages, 512 in the completion). Please reduce the length of the messages or completion."
)


def fake_ai(llm_server: FakeLLMServer) -> str:
    """Config text for an OpenAI-compatible provider `fakeai` on the fake server."""
    return f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'


@pytest.mark.parametrize(
    ("fields", "message", "window"),
    [
        ({}, VLLM_REFUSAL, 4096),  # vLLM, and OpenAI's older text
        ({"code": "context_length_exceeded"}, "Your input exceeds the context window of this model.", None),
        (
            {"type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096},
            "request (4476 tokens) exceeds the available context size (4096 tokens)",
            4096,
        ),  # llama.cpp's server, now
        (
            {"type": "exceed_context_size_error"},
            "the request exceeds the available context size, try increasing it",
            None,
        ),  # llama.cpp's server, before it said n_ctx
        ({}, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8193. Given: 9000", 8193),
        ({}, "Prompt contains 40000 tokens, too large for model with 32768 maximum context length", 32768),
    ],
)
def test_a_refusal_as_too_long_is_read_with_its_window(
    fields: dict[str, Any], message: str, window: int | None
) -> None:
    from moa_cli.errors import ContextRefused
    from moa_cli.providers.chat_api import _error_chunk, context_refusal

    refused = context_refusal("m", fields, message, "why", 400)
    assert isinstance(refused, ContextRefused) and refused.kind == "context" and refused.window == window
    mid_stream = _error_chunk("m", {"message": message, **fields})  # an error object in a stream or a body
    assert isinstance(mid_stream, ContextRefused) and mid_stream.window == window


def test_other_bad_requests_are_not_refusals_for_length() -> None:
    from moa_cli.providers.chat_api import context_refusal

    assert context_refusal("m", {"code": "invalid_value"}, "temperature must be at most 2", "why", 400) is None


def test_the_window_a_refit_takes() -> None:
    """The stated window when the refused request did not fit it; else half the refused request
    (also when the request was short enough that it was sent uncounted, with no window)."""
    from moa_cli.fitting import REFUSED_SHRINK, Fit, refit_call

    parts = Parts([{"role": "user", "content": "word " * 3000}])
    sent = parts.messages()
    size = estimate_tokens(sent) + 512
    uncounted = Fit(sent, 512, None, None, True)
    for stated, window, source in [
        (2048, 2048, "refused"),
        (None, int(size * REFUSED_SHRINK), "refused_guess"),
        (size + 100, int(size * REFUSED_SHRINK), "refused_guess"),  # moa's count erred short: not the same again
    ]:
        fitted = asyncio.run(refit_call(object(), "m", "m", parts, 512, uncounted, stated))
        assert fitted.window == Window(window, source) and fitted.changed
        assert (fitted.prompt_tokens or 0) + fitted.max_tokens <= window < size


def test_a_reference_refused_as_too_long_is_fitted_to_the_stated_window_and_sent_again(
    moa_for: Callable[..., MoA], llm_server: FakeLLMServer
) -> None:
    """vLLM through the openai SDK: the window moa assumed (its default) was too large; the
    second request fits the window the refusal states, and the reference answers."""
    llm_server.script("alpha", Reply(status=400, error_message=VLLM_REFUSAL))
    text = "FIRST LINE\n" + long_text(5000) + "\nLAST LINE"
    moa = moa_for(fake_ai(llm_server), references=["fakeai:alpha", "fakeai:beta"], aggregator="fakeai:judge")
    events: list[Any] = []
    result = asyncio.run(moa.arun(text, on_event=events.append))
    first, second = llm_server.requests_for("alpha")
    assert asked(first) == text and wire_tokens(first) + 512 > 4096  # sent whole: 8,192 assumed
    assert MARK in (asked(second) or "") and (asked(second) or "").endswith("LAST LINE")
    assert wire_tokens(second) < wire_tokens(first) and wire_tokens(second) + 512 <= 4096
    assert [p.error_kind for p in result.proposals] == [None, None]  # both references answered
    assert "Answer from alpha." in references_in(llm_server.requests_for("judge")[0])
    (entry,) = result.fitted
    assert (entry["model"], entry["window"], entry["window_source"]) == ("fakeai:alpha", 4096, "refused")
    said = [e.message for e in events if e.type == "context_fitted"]
    assert len(said) == 1 and "for fakeai:alpha" in said[0] and "(4,096 tokens, as its provider said when it" in said[0]
    assert not [e for e in events if e.type == "call_failed"]
    llm_server.assert_complete()


def test_an_aggregator_refused_without_a_window_is_fitted_to_half_and_sent_again(
    moa_for: Callable[..., MoA], llm_server: FakeLLMServer
) -> None:
    """llama.cpp's server (through together's SDK here) before it said its n_ctx: no window in the
    refusal, so the second request fits REFUSED_SHRINK of the first one's tokens."""
    from moa_cli.fitting import REFUSED_SHRINK

    refusal = "the request exceeds the available context size, try increasing it"
    llm_server.script(
        "judge", Reply(status=400, error_message=refusal, error_fields={"type": "exceed_context_size_error"})
    )
    llm_server.set_default("alpha", Reply(text="alpha " * 1200))
    llm_server.set_default("beta", Reply(text="beta " * 1200))
    moa = moa_for("", references=["alpha", "beta"], aggregator="judge", reference_max_tokens=2000)
    result = asyncio.run(moa.arun("Compare these answers."))
    first, second = llm_server.requests_for("judge")
    assert first.body["max_tokens"] == second.body["max_tokens"] == 512
    assert wire_tokens(second) + 512 <= int((wire_tokens(first) + 512) * REFUSED_SHRINK)
    assert references_in(second).count(ANSWER_MARK.strip()) == 2 and asked(second) == "Compare these answers."
    assert result.answer == "Answer from judge."
    (entry,) = result.fitted
    assert (entry["model"], entry["window_source"]) == ("judge", "refused_guess")
    llm_server.assert_complete()


def test_a_provider_that_refuses_again_fails_the_call_once_as_context(
    moa_for: Callable[..., MoA], llm_server: FakeLLMServer
) -> None:
    """One refit, never a loop: the second refusal is the call's failure (kind context), said once."""
    refused = Reply(status=400, error_message=VLLM_REFUSAL, error_fields={"code": "context_length_exceeded"})
    llm_server.script("judge", refused, refused, Reply(text="never asked for"))
    moa = moa_for(fake_ai(llm_server), references=["fakeai:alpha"], aggregator="fakeai:judge")
    events: list[Any] = []
    with pytest.raises(TurnFailed) as caught:
        asyncio.run(moa.arun(long_text(5000), on_event=events.append))
    assert caught.value.kind == "context" and caught.value.status == 400 and caught.value.aggregator
    assert len(llm_server.requests_for("judge")) == 2
    failed = [e for e in events if e.type == "call_failed"]
    assert [(e.call.model, e.kind) for e in failed] == [("fakeai:judge", "context")]
    assert "too long for the model's context window" in failed[0].error
