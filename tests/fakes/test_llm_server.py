"""Self-tests of the fake LLM server, driven by the real SDKs and raw httpx."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest
import together

from tests.fakes.fixtures import _fake_server, llm_server  # noqa: F401 - pytest fixtures
from tests.fakes.llm_server import FakeLLMServer, Reply

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
]


def _together(server: FakeLLMServer, max_retries: int = 0) -> together.AsyncTogether:
    return together.AsyncTogether(api_key="test", base_url=server.base_url, max_retries=max_retries)


def test_non_streaming_together(llm_server: FakeLLMServer) -> None:
    llm_server.script("m1", Reply(text="Four, obviously."))

    async def go() -> Any:
        async with _together(llm_server) as client:
            return await client.chat.completions.create(model="m1", messages=MESSAGES)

    resp = asyncio.run(go())
    assert resp.choices[0].message.content == "Four, obviously."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (7, 2, 9)
    (req,) = llm_server.requests_for("m1")
    assert req.system == "Be brief." and req.last_user == "What is two plus two?"
    assert not req.stream and req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer test"
    llm_server.assert_complete()


def test_streaming_together(llm_server: FakeLLMServer) -> None:
    llm_server.set_default("m1", Reply(text="One two  three.\nFour", token_delay=0.001))

    async def go() -> tuple[list[str], Any]:
        pieces: list[str] = []
        usage = None
        async with _together(llm_server) as client:
            stream = await client.chat.completions.create(
                model="m1", messages=MESSAGES, stream=True, extra_body={"stream_options": {"include_usage": True}}
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
        return pieces, usage

    pieces, usage = asyncio.run(go())
    assert pieces == ["One ", "two  ", "three.\n", "Four"]
    assert usage is not None and usage.completion_tokens == 4 and usage.prompt_tokens == 7
    (req,) = llm_server.requests
    assert req.stream and req.body["stream_options"] == {"include_usage": True}
    assert req.finished and not req.disconnected


def test_retry_after_429(llm_server: FakeLLMServer) -> None:
    llm_server.script(
        "m1",
        Reply(status=429, error_message="slow down", headers={"retry-after-ms": "1"}),
        Reply(text="ok now"),
    )

    async def go() -> Any:
        async with _together(llm_server, max_retries=2) as client:
            return await client.chat.completions.create(model="m1", messages=MESSAGES)

    assert asyncio.run(go()).choices[0].message.content == "ok now"
    assert [r.status for r in llm_server.requests_for("m1")] == [429, 200]
    llm_server.assert_complete()


def test_error_body_and_unknown_model(llm_server: FakeLLMServer) -> None:
    llm_server.unknown_models_404 = True
    llm_server.set_default("known", Reply(status=503))

    async def go() -> tuple[BaseException, BaseException]:
        async with _together(llm_server) as client:
            errors: list[BaseException] = []
            for model in ("nope", "known"):
                try:
                    await client.chat.completions.create(model=model, messages=MESSAGES)
                except together.APIStatusError as exc:
                    errors.append(exc)
            return errors[0], errors[1]

    missing, unavailable = asyncio.run(go())
    assert isinstance(missing, together.NotFoundError) and "Unable to access model nope" in str(missing)
    assert isinstance(unavailable, together.InternalServerError) and unavailable.status_code == 503

    async def models() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=llm_server.base_url) as client:
            return (await client.get("/v1/models")).json()

    assert [m["id"] for m in asyncio.run(models())["data"]] == ["known"]


def test_cut_stream_raises(llm_server: FakeLLMServer) -> None:
    llm_server.script("m1", Reply(text="a b c d e f", cut_after=2))
    received: list[str] = []

    async def go() -> None:
        async with _together(llm_server) as client:
            stream = await client.chat.completions.create(model="m1", messages=MESSAGES, stream=True)
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(Exception) as info:
        asyncio.run(go())
    # The SDK does not wrap errors raised while iterating: it is raw httpx.
    assert isinstance(info.value, (httpx.RemoteProtocolError, together.APIError)), repr(info.value)
    assert received == ["a ", "b "]
    (req,) = llm_server.requests
    assert req.cut and not req.disconnected


def test_openai_sdk_streaming(llm_server: FakeLLMServer) -> None:
    llm_server.script("org/model-x", Reply(text="Hello from openai land."))

    async def go() -> str:
        out = ""
        async with openai.AsyncOpenAI(base_url=llm_server.openai_base_url, api_key="x", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="org/model-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    out += chunk.choices[0].delta.content
        return out

    assert asyncio.run(go()) == "Hello from openai land."
    assert llm_server.requests[0].path == "/v1/chat/completions"


def test_concurrent_streams_run_in_parallel(llm_server: FakeLLMServer) -> None:
    latency = 0.2
    llm_server.set_default("slow", Reply(text="x y z", latency=latency, token_delay=0.01))

    async def one(client: together.AsyncTogether) -> str:
        stream = await client.chat.completions.create(model="slow", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def go() -> list[str]:
        async with _together(llm_server) as client:
            return await asyncio.gather(*(one(client) for _ in range(16)))

    start = time.monotonic()
    results = asyncio.run(go())
    elapsed = time.monotonic() - start
    assert results == ["x y z"] * 16
    assert elapsed < 5 * latency, elapsed
    assert len(llm_server.requests) == 16


def test_client_disconnect_is_recorded(llm_server: FakeLLMServer) -> None:
    llm_server.script("m1", Reply(text="w " * 50, token_delay=0.02))

    async def go() -> str:
        async with httpx.AsyncClient(base_url=llm_server.base_url) as client:
            body = {"model": "m1", "messages": MESSAGES, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        return line  # leaving the block closes the connection mid-stream
        raise AssertionError("no data")

    first = asyncio.run(go())
    assert '"content": "w "' in first
    assert llm_server.wait_until_idle(timeout=2.0)
    assert llm_server.active_streams == 0
    (req,) = llm_server.requests
    assert req.disconnected and req.finished and not req.cut
    # It stopped early rather than streaming all 50 chunks (~1 s).
    assert req.finished_at is not None and req.finished_at - req.received_at < 0.5
