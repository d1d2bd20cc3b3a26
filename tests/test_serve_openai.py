"""`moa serve` for real: a subprocess on 127.0.0.1:0, the official `openai` client, the fake LLM server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import run_moa
from tests.fakes.helpers import asked
from tests.fakes.llm_server import FakeLLMServer, Reply, split_pieces
from tests.fakes.serve_process import ServeProcess, wait_for

LINEUP = ["-r", "alpha,beta", "-a", "judge"]
HI = [{"role": "user", "content": "Why is the sky blue?"}]


class Served(ServeProcess):
    """A running `moa serve`, with openai clients that are closed before it stops."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._clients: list[openai.OpenAI] = []
        super().__init__(args, env)

    def client(self, key: str = "none", **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url, api_key=key, **kwargs)
        self._clients.append(client)
        return client

    def stop(self) -> int:
        for client in self._clients:
            client.close()
        return super().stop()


@pytest.fixture
def serve(moa_env: dict[str, str]) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str) -> Served:
        served = Served([*LINEUP, *args], {**moa_env, "NO_PROXY": "127.0.0.1,localhost"})
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
        assert "Traceback" not in served.log, served.log


def test_answers_streams_before_the_aggregator_is_done_and_sums_usage(serve, llm_server: FakeLLMServer) -> None:
    text = " ".join(f"word{i}" for i in range(20))
    llm_server.set_default("judge", Reply(text=text, token_delay=0.05))
    client = serve().client()
    plain = client.chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert plain.choices[0].message.content == text and plain.choices[0].finish_reason == "stop"
    llm_server.reset()
    llm_server.set_default("judge", Reply(text=text, token_delay=0.05))
    first_content = None
    parts: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model="moa",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_content = first_content or time.monotonic()
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == text
    judge = llm_server.requests_for("judge")[0]
    assert first_content is not None and judge.finished_at is not None
    assert first_content < judge.finished_at - 0.5  # streamed as it came, not replayed at the end
    calls = llm_server.requests
    prompt = sum(sum(len(str(m["content"]).split()) for m in r.messages) for r in calls)
    completion = sum(len(split_pieces(r.reply.text_for(r.model))) for r in calls)  # type: ignore[union-attr]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion


def test_models_passthrough_and_errors_through_the_client(serve, llm_server: FakeLLMServer) -> None:
    client = serve("--passthrough", "cheap").client(max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "moa" and "cheap" in ids
    llm_server.script("cheap", Reply(text="Sky title"))
    title = client.chat.completions.create(model="cheap", messages=HI)  # type: ignore[arg-type]
    assert title.choices[0].message.content == "Sky title" and [r.model for r in llm_server.requests] == ["cheap"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="moa", messages=HI, temperature=5)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="moa", messages=HI, n=3)  # type: ignore[arg-type]


def test_auth_and_the_refusal_to_listen_openly_without_a_key(serve, moa_env, llm_server: FakeLLMServer) -> None:
    served = serve("--api-key", "sekrit-key-1")
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong-key", max_retries=0).models.list()
    answer = served.client("sekrit-key-1").chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Answer from judge."
    assert "sekrit-key-1" not in served.log
    refused = run_moa(["serve", "--host", "0.0.0.0", *LINEUP], moa_env)
    assert refused.returncode == 2 and "without an API key" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_502_is_not_retried_503_says_when_and_a_mid_stream_failure_raises(serve, llm_server: FakeLLMServer) -> None:
    served = serve()
    for model in ("alpha", "beta"):
        llm_server.script(model, Reply(status=401))
    with pytest.raises(openai.APIStatusError) as permanent:
        served.client().chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert permanent.value.status_code == 502 and len(llm_server.requests) == 2  # the client did not retry
    for model in ("alpha", "beta"):
        llm_server.script(model, Reply(status=503))
    with pytest.raises(openai.APIStatusError) as transient:
        served.client(max_retries=0).chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert transient.value.status_code == 503 and transient.value.response.headers["retry-after"]
    llm_server.script("judge", Reply(text="one two three four", cut_after=2))
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in served.client().chat.completions.create(model="moa", messages=HI, stream=True):  # type: ignore[arg-type]
            seen += [c.delta.content or "" for c in chunk.choices]
    assert "".join(seen) == "one two "


def test_a_client_that_goes_away_cancels_every_upstream_call(serve, llm_server: FakeLLMServer) -> None:
    served = serve()
    # While the references work: they are cancelled.
    for model in ("alpha", "beta"):
        llm_server.set_default(model, Reply(latency=5))
    with httpx.stream(
        "POST", served.base_url + "/chat/completions", json={"model": "moa", "messages": HI, "stream": True}
    ) as r:
        lines = r.iter_lines()
        next(lines)  # the role chunk
        assert wait_for(lambda: len(llm_server.requests) == 2)
    assert wait_for(lambda: all(q.disconnected for q in llm_server.requests))
    # While the aggregator streams: its stream is closed.
    llm_server.reset()
    llm_server.set_default("judge", Reply(text="more and more ", token_delay=0.02, endless=True))
    stream = served.client().chat.completions.create(model="moa", messages=HI, stream=True)  # type: ignore[arg-type]
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got == 3:
            break
    stream.close()
    assert wait_for(lambda: llm_server.requests_for("judge")[0].disconnected)
    assert llm_server.wait_until_idle(3)


def test_429_at_the_limit(serve, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(latency=1))
    served = serve("--max-concurrent", "1", "--queue", "0")
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(served.client().chat.completions.create(model="moa", messages=HI))
    )  # type: ignore[arg-type]
    thread.start()
    assert wait_for(lambda: len(llm_server.requests) >= 1)
    with pytest.raises(openai.RateLimitError) as refused:
        served.client(max_retries=0).chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert refused.value.response.headers["retry-after"]
    thread.join(10)
    assert results and results[0].choices[0].message.content == "Answer from judge."


def test_sigterm_drains_an_in_flight_stream_to_completion(serve, llm_server: FakeLLMServer) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    llm_server.set_default("judge", Reply(text=text, token_delay=0.04))
    served = serve("--shutdown-timeout", "10")
    parts: list[str] = []
    finishes: list[str | None] = []
    signalled = False
    for chunk in served.client().chat.completions.create(model="moa", messages=HI, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content and not signalled:
            served.proc.send_signal(signal.SIGTERM)
            signalled = True
        parts += [c.delta.content or "" for c in chunk.choices]
        finishes += [c.finish_reason for c in chunk.choices]
    assert "".join(parts) == text and finishes[-1] == "stop"
    try:
        served.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(served.log) from None
    assert served.proc.returncode == 0, served.log
    with pytest.raises(openai.APIConnectionError):
        served.client(max_retries=0).models.list()


def test_fifty_concurrent_streams_are_all_answered(serve, llm_server: FakeLLMServer) -> None:
    llm_server.default_reply = Reply(latency=0.05, token_delay=0.005)
    served = serve("--max-concurrent", "50")

    async def one(client: openai.AsyncOpenAI, n: int) -> tuple[str, str]:
        stream = await client.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": f"question {n}"}], stream=True
        )
        parts, ids = [], set()
        async for chunk in stream:
            ids.add(chunk.id)
            parts += [c.delta.content or "" for c in chunk.choices]
        assert len(ids) == 1
        return ids.pop(), "".join(parts)

    async def run() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key="none", max_retries=0) as client:
            return await asyncio.gather(*(one(client, n) for n in range(50)))

    results = asyncio.run(run())
    assert [text for _, text in results] == ["Answer from judge."] * 50
    assert len({id_ for id_, _ in results}) == 50
    judged = sorted(asked(r) for r in llm_server.requests_for("judge"))
    assert judged == sorted(f"question {n}" for n in range(50))


def test_workers_share_the_load_and_stop_together(serve, llm_server: FakeLLMServer) -> None:
    """`--workers 2`: uvicorn's own processes, each building the app from the options it was
    handed (the key included); every stream answered, and SIGTERM stops both cleanly."""
    llm_server.default_reply = Reply(latency=0.2, token_delay=0.01)
    served = serve("--workers", "2", "--api-key", "worker-secret")
    assert wait_for(lambda: served.log.count("Application startup complete") == 2, 30), served.log

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key="worker-secret", max_retries=0) as client:

            async def one(n: int) -> str:
                reply = await client.chat.completions.create(
                    model="moa", messages=[{"role": "user", "content": f"question {n}"}]
                )
                return reply.choices[0].message.content or ""

            return await asyncio.gather(*(one(n) for n in range(8)))

    assert asyncio.run(run()) == ["Answer from judge."] * 8
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong", max_retries=0).models.list()
    assert served.stop() == 0, served.log
    assert served.log.count("Finished server process") == 2, served.log
    assert "worker-secret" not in served.log
