"""`moa serve`'s app in-process (httpx ASGITransport), its models behind the fake LLM server.

The real-port tests with the official `openai` client are in test_serve_openai.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from moa_cli.config import load_settings
from moa_cli.errors import KINDS
from moa_cli.server import errors
from moa_cli.server.app import create_app
from moa_cli.server.limits import Gate
from moa_cli.server.options import ServeOptions
from moa_cli.stops import StopMatcher
from tests.fakes.helpers import references_in
from tests.fakes.llm_server import FakeLLMServer, Reply, split_pieces

LINEUP = {"references": ["alpha", "beta"], "aggregator": "judge"}
HI = {"model": "moa", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


def make_app(env: dict[str, str], overrides: dict[str, Any] | None = None, **options: Any) -> Any:
    settings = load_settings({**LINEUP, **(overrides or {})}, env)
    return create_app(settings, ServeOptions(**options))


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://moa.test", timeout=10) as client:
            yield client


def call(
    env: dict[str, str], *requests: tuple[str, str, Any], headers: dict[str, str] | None = None, **options: Any
) -> list[httpx.Response]:
    """Make requests one after another against a fresh app; returns the responses."""

    async def run() -> list[httpx.Response]:
        async with serving(make_app(env, **options)) as client:
            out = []
            for method, path, body in requests:
                kwargs: dict[str, Any] = {"headers": headers or {}}
                if isinstance(body, bytes):
                    kwargs["content"] = body
                    kwargs["headers"] = {"Content-Type": "application/json", **kwargs["headers"]}
                elif body is not None:
                    kwargs["json"] = body
                out.append(await client.request(method, path, **kwargs))
            return out

    return asyncio.run(run())


def events(response: httpx.Response) -> list[Any]:
    """The SSE events of a response: parsed JSON, "[DONE]", or ": comment" strings."""
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            out.append(block)
        else:
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def fake_usage(record: Any) -> tuple[int, int]:
    """What the fake server reports for one request: (prompt, completion) tokens."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in record.messages)
    text = record.reply.text_for(record.model)
    return prompt, len(split_pieces(text))


# ---------------------------------------------------------------------------- answers


def test_a_turn_answers_with_the_aggregators_text_real_ids_and_summed_usage(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="Rayleigh scattering."), Reply(text="Again."))
    before = int(time.time())
    first, second = call(moa_env, ("POST", "/v1/chat/completions", HI), ("POST", "/v1/chat/completions", HI))
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["object"] == "chat.completion" and data["model"] == "moa"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Rayleigh scattering."}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["id"].startswith("chatcmpl-") and data["id"] != second.json()["id"]
    assert before <= data["created"] <= int(time.time())
    calls = llm_server.requests[:3]
    prompt = sum(fake_usage(r)[0] for r in calls)
    completion = sum(fake_usage(r)[1] for r in calls)
    assert data["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    moa = data["moa"]
    assert [(p["model"], p["layer"], p["status"]) for p in moa["proposals"]] == [("alpha", 1, "ok"), ("beta", 1, "ok")]
    assert moa["aggregator"]["model"] == "judge" and moa["usage_complete"] is True
    assert "Answer from alpha." in references_in(llm_server.requests_for("judge")[0])


def test_a_failing_reference_is_not_an_error(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(status=500, error_message="boom"))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI))
    assert response.status_code == 200
    beta = response.json()["moa"]["proposals"][1]
    assert beta["status"] == "failed" and beta["http_status"] == 500 and beta["usage"] is None


def test_usage_is_null_when_a_call_did_not_report_it(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(usage=False))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI))
    data = response.json()
    assert data["usage"] is None and data["moa"]["usage_complete"] is False
    assert data["moa"]["proposals"][1]["usage"]["total_tokens"] > 0  # what was reported is still shown


def test_the_stream_is_openais_shape(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="one two three"))
    body = {**HI, "stream": True, "stream_options": {"include_usage": True}}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    chunks = [e for e in events(response) if isinstance(e, dict)]
    assert events(response)[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0 and last["moa"]["usage_complete"]


def test_finish_reason_length_is_passed_through(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text="cut", finish_reason="length"))
    plain, streamed = call(
        moa_env, ("POST", "/v1/chat/completions", HI), ("POST", "/v1/chat/completions", {**HI, "stream": True})
    )
    assert plain.json()["choices"][0]["finish_reason"] == "length"
    finishes = [e["choices"][0]["finish_reason"] for e in events(streamed) if isinstance(e, dict)]
    assert finishes[-1] == "length"


def test_a_failed_aggregator_mid_stream_ends_with_an_error_event(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="one two three four", cut_after=2))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", {**HI, "stream": True}))
    items = events(response)
    assert "[DONE]" not in items
    last = items[-1]
    assert set(last) == {"error"} and last["error"]["type"] == "upstream_error"
    finishes = [e["choices"][0]["finish_reason"] for e in items if isinstance(e, dict) and e.get("choices")]
    assert "stop" not in finishes
    text = "".join(
        e["choices"][0]["delta"].get("content", "") for e in items if isinstance(e, dict) and e.get("choices")
    )
    assert text == "one two "


def test_sampling_applies_to_the_aggregator_and_the_references_keep_the_lineups(
    moa_env, llm_server: FakeLLMServer
) -> None:
    body = {
        **HI,
        "temperature": 0.1,
        "top_p": 0.5,
        "max_tokens": 999,
        "seed": 7,
        "presence_penalty": 0.4,
        "frequency_penalty": -0.3,
    }
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    assert response.status_code == 200
    judge = llm_server.requests_for("judge")[0].body
    alpha = llm_server.requests_for("alpha")[0].body
    assert (judge["temperature"], judge["top_p"], judge["max_tokens"], judge["seed"]) == (0.1, 0.5, 999, 7)
    assert (judge["presence_penalty"], judge["frequency_penalty"]) == (0.4, -0.3)
    assert (alpha["temperature"], alpha["max_tokens"]) == (0.7, 512)
    assert not {"top_p", "presence_penalty", "frequency_penalty"} & set(alpha)


def test_a_stop_sequence_ends_the_answer_there(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text="one two STOP three four"))
    plain, streamed = call(
        moa_env,
        ("POST", "/v1/chat/completions", {**HI, "stop": ["STOP"]}),
        ("POST", "/v1/chat/completions", {**HI, "stop": "STOP", "stream": True}),
    )
    assert plain.json()["choices"][0]["message"]["content"] == "one two "
    assert plain.json()["choices"][0]["finish_reason"] == "stop"
    text = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events(streamed) if isinstance(e, dict) and e["choices"]
    )
    assert text == "one two " and events(streamed)[-1] == "[DONE]"


def test_heartbeats_and_reasoning_progress_while_the_references_work(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(latency=0.3))
    llm_server.set_default("beta", Reply(latency=0.5))
    body = {**HI, "stream": True}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body), heartbeat=0.1, progress="reasoning")
    items = events(response)
    assert ": moa layer 1 0/2" in items and ": moa layer 1 1/2" in items
    reasoning = "".join(
        e["choices"][0]["delta"].get("reasoning_content", "") for e in items if isinstance(e, dict) and e["choices"]
    )
    assert "alpha (layer 1) answered" in reasoning and "beta (layer 1) answered" in reasoning
    assert items[-1] == "[DONE]"


# ---------------------------------------------------------------------------- models


def test_models_lists_the_lineups_and_the_passthroughs(moa_env, llm_server: FakeLLMServer, moa_home) -> None:
    (moa_home / "config.toml").write_text('[lineups.fast]\nreference_models = ["f1", "f2"]\naggregator = "fa"\n')
    (listing, one, missing) = call(
        moa_env,
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/cheap", None),
        ("GET", "/v1/models/nope", None),
        passthrough=("cheap",),
    )
    data = listing.json()
    assert data["object"] == "list"
    by_id = {m["id"]: m for m in data["data"]}
    assert next(iter(by_id)) == "moa" and {"fast", "together", "cheap"} <= set(by_id)
    assert by_id["moa"]["moa"] == {
        "lineup": None,
        "references": ["alpha", "beta"],
        "aggregator": "judge",
        "rounds": 1,
        "description": None,
    }
    assert by_id["fast"]["moa"]["references"] == ["f1", "f2"]
    assert all(m["object"] == "model" and m["owned_by"] and m["created"] > 0 for m in data["data"])
    assert by_id["cheap"]["owned_by"] == "together"
    assert one.json()["id"] == "cheap" and missing.status_code == 404


def test_a_passthrough_model_is_one_direct_call(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.script("cheap", Reply(text="A title"))
    body = {**HI, "model": "cheap", "max_tokens": 20}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body), passthrough=("cheap",))
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "A title" and data["model"] == "cheap"
    assert [r.model for r in llm_server.requests] == ["cheap"] and llm_server.requests[0].body["max_tokens"] == 20
    assert data["usage"]["total_tokens"] > 0 and data["moa"]["passthrough"] == "cheap"


def test_a_named_lineup_is_a_model(moa_env, llm_server: FakeLLMServer, moa_home) -> None:
    (moa_home / "config.toml").write_text('[lineups.fast]\nreference_models = ["f1"]\naggregator = "fa"\n')
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", {**HI, "model": "fast"}))
    assert response.json()["choices"][0]["message"]["content"] == "Answer from fa."
    assert sorted(r.model for r in llm_server.requests) == ["f1", "fa"]


def test_overrides_need_the_server_to_allow_them(moa_env, llm_server: FakeLLMServer) -> None:
    body = {**HI, "moa": {"references": ["gamma"], "rounds": 2}}
    (refused,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    assert refused.status_code == 400 and "--allow-overrides" in refused.json()["error"]["message"]
    (allowed,) = call(moa_env, ("POST", "/v1/chat/completions", body), allow_overrides=True)
    assert allowed.status_code == 200
    assert [r.model for r in llm_server.requests] == ["gamma", "gamma", "judge"]


def test_a_request_cannot_make_the_server_load_a_model_file(moa_env, tmp_path: Path) -> None:
    model = tmp_path / "any.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    body = {**HI, "moa": {"references": [f"local:{model}"]}}
    (refused,) = call(moa_env, ("POST", "/v1/chat/completions", body), allow_overrides=True)
    assert refused.status_code == 400 and "not served here" in refused.json()["error"]["message"]


def test_a_request_can_choose_the_aggregation(moa_env, llm_server: FakeLLMServer) -> None:
    """`extra_body={"moa": {"aggregation": "select"}}`: the judge names answer 2, streamed verbatim."""
    llm_server.script("alpha", Reply(text="first answer"))
    llm_server.script("beta", Reply(text="second answer"))
    llm_server.script("judge", Reply(text="2"))
    body = {**HI, "moa": {"aggregation": "select"}}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body), allow_overrides=True)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "second answer"
    judge = llm_server.requests_for("judge")[0]
    assert judge.body["max_tokens"] <= 16  # a choice, not an answer
    (bad,) = call(
        moa_env, ("POST", "/v1/chat/completions", {**HI, "moa": {"aggregation": "vote"}}), allow_overrides=True
    )
    assert bad.status_code == 400 and "invalid aggregation" in bad.json()["error"]["message"]


# ---------------------------------------------------------------------------- errors

BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"[" * 100_000, None, "nests too deeply"),
    (
        b'{"model": "moa", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        "messages[0].content",
        "lone surrogate",
    ),
    (b"", None, "empty"),
    ([1, 2], None, "JSON object"),
    ({"messages": HI["messages"]}, "model", "model is required"),
    ({"model": "moa"}, "messages", "messages is required"),
    ({"model": "moa", "messages": []}, "messages", "non-empty"),
    ({"model": "moa", "messages": "hi"}, "messages", "non-empty list"),
    ({"model": "moa", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "'wizard'"),
    ({"model": "moa", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a list"),
    (
        {"model": "moa", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0]",
        "image_url",
    ),
    (
        {"model": "moa", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "messages[1].role",
        "last message",
    ),
    ({**HI, "temperature": 3}, "temperature", "between 0 and 2"),
    ({**HI, "temperature": "hot"}, "temperature", "number"),
    ({**HI, "top_p": 1.5}, "top_p", "between"),
    ({**HI, "frequency_penalty": 2.5}, "frequency_penalty", "between -2 and 2"),
    ({**HI, "max_tokens": 0}, "max_tokens", "between 1"),
    ({**HI, "max_completion_tokens": 1.5}, "max_completion_tokens", "whole number"),
    ({**HI, "stream": "yes"}, "stream", "true or false"),
    ({**HI, "n": 2}, "n", "n must be 1"),
    ({**HI, "logprobs": True}, "logprobs", "logprobs"),
    ({**HI, "tools": [{"type": "retrieval"}]}, "tools[0]", "only function tools"),
    ({**HI, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "letters"),
    (
        {
            **HI,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
        "not one of the tools",
    ),
    ({**HI, "functions": [{"name": "f"}]}, "functions", "send tools"),
    ({**HI, "response_format": {"type": "xml"}}, "response_format", "json_object or json_schema"),
    (
        {**HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}}},
        "response_format",
        "not valid JSON Schema",
    ),
    (
        {
            "model": "moa",
            "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "r"}],
        },
        "messages[1].tool_call_id",
        "earlier assistant message",
    ),
    ({**HI, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({**HI, "seed": 2**70}, "seed", "between"),
    ({**HI, "moa": {"timeout": 1}}, "moa.timeout", "cannot be set"),
]


@pytest.mark.parametrize(("body", "param", "needle"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_one_clear_400(
    moa_env, llm_server: FakeLLMServer, body: Any, param: str | None, needle: str
) -> None:
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert needle in error["message"] and "Traceback" not in response.text
    assert llm_server.requests == []


def test_fields_clients_always_send_are_accepted(moa_env, llm_server: FakeLLMServer) -> None:
    body = {
        **HI, "user": "u1", "presence_penalty": 0, "frequency_penalty": 0, "n": 1, "metadata": {"a": "b"},
        "store": False, "logit_bias": {}, "parallel_tool_calls": True, "top_p": 1, "logprobs": False,
        "tools": [], "tool_choice": "auto",
        "stream_options": None, "response_format": {"type": "text"}, "max_completion_tokens": 64,
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }  # fmt: skip
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    assert response.status_code == 200, response.text
    assert llm_server.requests_for("alpha")[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_unknown_model_and_paths(moa_env, llm_server: FakeLLMServer) -> None:
    model, legacy, path, method = call(
        moa_env,
        ("POST", "/v1/chat/completions", {**HI, "model": "mao"}),
        ("POST", "/v1/completions", {"model": "moa", "prompt": "x"}),
        ("GET", "/v2/nothing", None),
        ("GET", "/v1/chat/completions", None),
    )
    assert model.status_code == 404 and "did you mean 'moa'" in model.json()["error"]["message"]
    assert model.json()["error"]["code"] == "model_not_found"
    assert legacy.status_code == 404 and "only chat completions" in legacy.json()["error"]["message"]
    assert path.status_code == 404 and path.json()["error"]["type"] == "not_found_error"
    assert method.status_code == 405 and "error" in method.json()


def test_a_body_over_the_limit_is_413(moa_env, llm_server: FakeLLMServer) -> None:
    big = {**HI, "messages": [{"role": "user", "content": "x" * 2000}]}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", big), max_body=1000)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_permanent_upstream_failures_are_502_and_not_to_be_retried(moa_env, llm_server: FakeLLMServer) -> None:
    for model in ("alpha", "beta"):
        llm_server.script(model, Reply(status=401, error_message="bad key {api_key}"))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI))
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "upstream_auth" and "test-key-0123456789" not in response.text


def test_transient_upstream_failures_are_503_with_retry_after(moa_env, llm_server: FakeLLMServer) -> None:
    for model in ("alpha", "beta"):
        llm_server.script(model, Reply(status=429))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI))
    assert response.status_code == 503 and response.headers["retry-after"] == str(errors.RETRY_AFTER_SECONDS)
    assert response.json()["error"]["code"] == "upstream_rate_limit"


def test_the_turn_timeout_is_504(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(latency=2))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI), turn_timeout=0.2)
    assert response.status_code == 504 and response.json()["error"]["code"] == "turn_timeout"
    assert llm_server.wait_until_idle(2) and llm_server.requests_for("alpha")[0].disconnected


def test_every_failure_kind_has_a_status() -> None:
    assert set(KINDS) == errors.PERMANENT_KINDS | errors.TRANSIENT_KINDS


# ---------------------------------------------------------------------------- auth, CORS


def test_auth_when_keys_are_set(moa_env, llm_server: FakeLLMServer) -> None:
    requests = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", HI), ("GET", "/health", None)]
    none = call(moa_env, *requests, api_keys=("k1-secret", "k2-secret"))
    assert [r.status_code for r in none] == [401, 401, 200]
    assert none[0].json()["error"]["type"] == "authentication_error"
    wrong = call(moa_env, *requests[:1], headers={"Authorization": "Bearer nope"}, api_keys=("k1-secret",))
    assert wrong[0].status_code == 401 and "nope" not in wrong[0].text
    right = call(moa_env, *requests, headers={"Authorization": "Bearer k2-secret"}, api_keys=("k1-secret", "k2-secret"))
    assert [r.status_code for r in right] == [200, 200, 200]


def test_cors_for_the_given_origins_only(moa_env, llm_server: FakeLLMServer) -> None:
    preflight = {
        "Origin": "https://chat.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }

    async def run(options: dict[str, Any], origin: str) -> httpx.Response:
        async with serving(make_app(moa_env, **options)) as client:
            return await client.options("/v1/chat/completions", headers={**preflight, "Origin": origin})

    ok = asyncio.run(
        run({"cors_origins": ("https://chat.example",), "api_keys": ("k1-secret",)}, "https://chat.example")
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://chat.example"
    other = asyncio.run(run({"cors_origins": ("https://chat.example",)}, "https://evil.example"))
    assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------------- load and lifecycle


def test_the_limit_and_the_queue_then_429(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(latency=0.4))

    async def run() -> list[httpx.Response]:
        async with serving(make_app(moa_env, max_concurrent=1, queue=1)) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json=HI))
            await asyncio.sleep(0.1)
            queued = asyncio.create_task(client.post("/v1/chat/completions", json=HI))
            await asyncio.sleep(0.1)
            refused = await client.post("/v1/chat/completions", json=HI)
            return [await first, await queued, refused]

    first, queued, refused = asyncio.run(run())
    assert (first.status_code, queued.status_code, refused.status_code) == (200, 200, 429)
    assert refused.headers["retry-after"] == str(errors.RETRY_AFTER_SECONDS)
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_draining_refuses_new_turns_and_ends_the_rest_at_the_deadline(moa_env, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("judge", Reply(text="slow " * 50, token_delay=0.05))

    async def run() -> tuple[httpx.Response, ...]:
        app = make_app(moa_env, shutdown_timeout=0.6)  # drain deadline: 0.3 s
        async with serving(app) as client:
            streaming = asyncio.create_task(client.post("/v1/chat/completions", json={**HI, "stream": True}))
            await asyncio.sleep(0.2)
            app.state.moa.drain.begin()
            ready = await client.get("/health/ready")
            refused = await client.post("/v1/chat/completions", json=HI)
            return ready, refused, await streaming

    ready, refused, streamed = asyncio.run(run())
    assert ready.status_code == 503 and refused.status_code == 503 and "retry-after" in refused.headers
    last = events(streamed)[-1]
    assert last["error"]["code"] == "shutting_down"
    assert llm_server.wait_until_idle(2) and llm_server.requests_for("judge")[0].disconnected


def test_a_request_queued_when_the_drain_begins_is_refused_at_once(moa_env, llm_server: FakeLLMServer) -> None:
    """One slot: the second request waits in the queue; the drain refuses it (503) at once
    instead of starting its turn after the drain's deadline has passed."""
    llm_server.set_default("judge", Reply(text="slow " * 50, token_delay=0.02))

    async def run() -> tuple[httpx.Response, httpx.Response, float]:
        app = make_app(moa_env, max_concurrent=1, queue=5, shutdown_timeout=3)
        async with serving(app) as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json={**HI, "stream": True}))
            await asyncio.sleep(0.2)
            queued = asyncio.create_task(client.post("/v1/chat/completions", json=HI))
            await asyncio.sleep(0.1)
            assert app.state.moa.gate.waiting == 1
            began = time.monotonic()
            app.state.moa.drain.begin()
            refused = await queued
            waited = time.monotonic() - began
            return await first, refused, waited

    first, refused, waited = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert waited < 0.5  # not after the running turn's end
    assert events(first)[-1] == "[DONE]"  # the running turn finished within the drain
    assert len(llm_server.requests_for("judge")) == 1  # the queued turn never started


def test_the_gate_is_first_come_first_served_and_a_cancelled_waiter_passes_its_slot_on() -> None:
    async def run() -> list[str]:
        gate = Gate(1, 5)
        order: list[str] = []
        await gate.enter()

        async def waiter(name: str) -> None:
            await gate.enter()
            order.append(name)
            gate.leave()

        tasks = [asyncio.create_task(waiter(n)) for n in "abc"]
        await asyncio.sleep(0)
        tasks[1].cancel()
        gate.leave()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert gate.running == 0 and gate.waiting == 0
        return order

    assert asyncio.run(run()) == ["a", "c"]


def test_the_stop_matcher_holds_back_only_a_possible_start() -> None:
    m = StopMatcher(("END",))
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dx") == ("", True)
    m = StopMatcher(("xy",))
    assert m.feed("ax") == ("a", False) and m.feed("b") == ("xb", False) and m.flush() == ""


def test_a_call_cut_before_it_got_a_slot_is_listed_not_a_500(moa_env, llm_server: FakeLLMServer) -> None:
    """num_proc 1 and a quorum of 1 over three references: when alpha answers, beta holds the
    slot and gamma has never started; both are cut, and the turn still answers."""
    llm_server.set_default("beta", Reply(latency=2))
    overrides = {"references": ["alpha", "beta", "gamma"], "num_proc": 1, "quorum": 1}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI), overrides=overrides)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Answer from judge."
    assert "gamma" not in [r.model for r in llm_server.requests]  # cut before it was ever sent
    assert response.text.count('"quorum"') >= 2  # beta and gamma, each with its kind
