"""References no one watches (issue 22): asked for whole, with no per-piece events, and every
guarantee of a streamed call kept: cut-off detection, the whole-call timeout, quorum
cancellation, the byte budget, usage and finish reasons. Through the real together SDK
against the fake server on loopback; `moa serve` and `moa batch` ask for them whole.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from moa_cli import MoA
from moa_cli.errors import ProviderError
from moa_cli.events import AnswerDelta, CallDelta, CallFailed, CallFinished, CallFirstToken, Event
from moa_cli.providers import pool
from moa_cli.providers.bounded import CONNECTION_LIMITS
from moa_cli.providers.chat_api import byte_budget
from moa_cli.types import CompletionRequest, Finish, TurnResult, Usage
from tests.fakes.llm_server import FakeLLMServer, Reply, split_pieces
from tests.test_serve import HI, call

REFS = ("alpha", "beta")


def unwatched(events: list[Event] | None = None, **settings: Any) -> TurnResult:
    moa = MoA(references=list(REFS), aggregator="judge", **settings)
    sink = events.append if events is not None else None
    return asyncio.run(moa.arun("q", on_event=sink, watch_references=False))


def test_references_come_whole_and_the_answer_streams(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="alpha says a lot of words"))
    llm_server.script("beta", Reply(text="beta says less", finish_reason="length"))
    llm_server.script("judge", Reply(text="the final answer in pieces"))
    events: list[Event] = []
    result = unwatched(events)
    assert {r.model: r.stream for r in llm_server.requests} == {"alpha": False, "beta": False, "judge": True}
    for request in llm_server.requests_for("alpha"):
        assert "stream_options" not in request.body  # only a stream takes it; a whole answer has its usage
    alpha, beta = result.proposals
    assert (alpha.text, beta.text) == ("alpha says a lot of words", "beta says less")
    assert (alpha.finish_reason, beta.finish_reason) == ("stop", "length")
    assert alpha.usage is not None and alpha.usage.completion_tokens == len(split_pieces("alpha says a lot of words"))
    assert result.usage.known and result.usage.completion_tokens == sum(
        len(split_pieces(t)) for t in ("alpha says a lot of words", "beta says less", "the final answer in pieces")
    )
    # No per-piece events for the references; the answer's pieces all arrive as AnswerDelta.
    assert not [e for e in events if isinstance(e, CallDelta)]
    assert [e.call.role for e in events if isinstance(e, CallFirstToken)] == ["aggregator"]
    answer = [e.text for e in events if isinstance(e, AnswerDelta)]
    assert answer == split_pieces("the final answer in pieces")
    finished = [e for e in events if isinstance(e, CallFinished)]
    references = {(e.call.model, e.text) for e in finished if not e.call.is_aggregator}
    assert references == {(p.model, p.text) for p in result.proposals}  # in whichever order they ended


def test_a_whole_body_that_ends_in_the_middle_is_cut_off(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="one two three four", end_after=2))
    result = unwatched()
    alpha = result.proposals[0]
    assert (alpha.text, alpha.error_kind) == (None, "cut_off")
    assert "stream ended before the answer was complete" in (alpha.error or "")
    assert result.proposals[1].text is not None


def test_a_connection_lost_mid_body_is_a_connection_error(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="one two three four", cut_after=2))
    alpha = unwatched().proposals[0]
    assert (alpha.text, alpha.error_kind) == (None, "connection")


def test_the_timeout_bounds_a_whole_call(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    """The answer is generated for far longer than --timeout: the call ends at the timeout and
    its connection is closed (the server sees the client go)."""
    llm_server.script("alpha", Reply(text="la " * 50, token_delay=1.0))
    events: list[Event] = []
    result = unwatched(events, timeout=0.4)
    alpha = result.proposals[0]
    assert alpha.error_kind == "timeout" and "longer than 0.4s" in (alpha.error or "")
    assert [e.kind for e in events if isinstance(e, CallFailed)] == ["timeout"]
    assert llm_server.wait_until_idle(timeout=5.0)
    assert llm_server.requests_for("alpha")[0].disconnected


def test_the_quorum_cancels_a_whole_call(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    # alpha answers once beta's request is in (so the cut closes a call in flight, not one
    # still waiting to be sent), and beta would take 20 s more.
    llm_server.script("alpha", Reply(text="quick " * 3, token_delay=0.5))
    llm_server.script("beta", Reply(text="slow " * 20, token_delay=1.0))
    result = unwatched(quorum=1)
    beta = result.proposals[1]
    assert (beta.text, beta.error_kind) == (None, "quorum")
    assert llm_server.wait_until_idle(timeout=5.0)
    assert llm_server.requests_for("beta")[0].disconnected
    assert llm_server.requests_for("judge")[0].stream


def test_a_whole_answer_past_its_byte_budget_is_cut(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    text = "x" * (byte_budget(10) + 10)
    llm_server.script("alpha", Reply(text=text))
    llm_server.script("judge", Reply(text="fine"))
    alpha = unwatched(max_tokens=10).proposals[0]
    assert alpha.error_kind == "bad_response" and "byte budget" in (alpha.error or "")


def test_a_server_that_streams_anyway_is_read_as_a_stream(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "streamed anyway"}, "finish_reason": "stop"}]}
    llm_server.script("alpha", Reply(raw=[f"data: {json.dumps(chunk)}\n\n".encode(), b"data: [DONE]\n\n"]))
    alpha = unwatched().proposals[0]
    assert (alpha.text, alpha.finish_reason) == ("streamed anyway", "stop")


def test_an_html_page_is_a_bad_response(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    page = b"<html><head><title>Welcome to nginx</title></head><body>hi</body></html>"
    llm_server.script("alpha", Reply(raw=[page], raw_content_type="text/html"))
    alpha = unwatched().proposals[0]
    assert alpha.error_kind == "bad_response" and "Welcome to nginx" in (alpha.error or "")


def test_watched_references_still_stream(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="a b c"))
    events: list[Event] = []
    asyncio.run(MoA(references=list(REFS), aggregator="judge").arun("q", on_event=events.append))
    assert all(r.stream for r in llm_server.requests)
    assert [e.text for e in events if isinstance(e, CallDelta) and e.call.model == "alpha"] == ["a ", "b ", "c"]


def test_serve_asks_for_its_references_whole(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="the answer"))
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", {**HI, "stream": True}))
    assert response.status_code == 200 and "the answer" not in response.text  # it came in pieces
    assert {r.model: r.stream for r in llm_server.requests} == {"alpha": False, "beta": False, "judge": True}


def test_batch_asks_for_every_call_whole(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "one?"}\n{"id": 2, "prompt": "two?"}\n')
    proc = moa(["batch", str(source), "-o", str(tmp_path / "out.jsonl"), "-r", "alpha,beta", "-a", "judge"])
    assert proc.returncode == 0, proc.stderr
    streams = {(r.model, r.stream) for r in llm_server.requests}
    assert streams == {("alpha", False), ("beta", False), ("judge", False)}  # no one reads the answer either


def test_the_linear_pool_reuses_connections(llm_server: FakeLLMServer) -> None:
    """The pool that replaces httpcore's: 30 requests at once, then 30 more on the same connections."""
    llm_server.set_default("m", Reply(text="hi", latency=0.05))
    transport = pool.transport(httpx.Limits(**CONNECTION_LIMITS))
    assert type(transport._pool) is pool.LinearPool

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=transport, base_url=llm_server.base_url) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

            async def one() -> None:
                response = await client.post("/v1/chat/completions", json=body)
                assert response.json()["choices"][0]["message"]["content"] == "hi"

            await asyncio.gather(*(one() for _ in range(30)))
            first = len(transport._pool.connections)
            await asyncio.gather(*(one() for _ in range(30)))
            return first, len(transport._pool.connections)

    first, second = asyncio.run(go())
    assert first == 30 and second == 30


def test_the_linear_pool_keeps_at_most_the_keepalive_limit_idle(llm_server: FakeLLMServer) -> None:
    llm_server.set_default("m", Reply(text="hi", latency=0.05))
    transport = pool.transport(httpx.Limits(max_connections=100, max_keepalive_connections=5))

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=transport, base_url=llm_server.base_url) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(20)))
            before = len(transport._pool.connections)
            transport._pool._next_sweep = 0.0  # the next request sweeps
            await client.post("/v1/chat/completions", json=body)
            return before, len(transport._pool.connections)

    before, after = asyncio.run(go())
    assert before == 20 and after <= 5


def test_the_openai_sdk_asks_for_a_whole_answer_too(llm_server: FakeLLMServer) -> None:
    from moa_cli.providers.openai_compat import OpenAICompatProvider

    llm_server.script("m", Reply(text="one two three", finish_reason="length"))
    llm_server.script("m", Reply(text="one two three four", end_after=2))
    provider = OpenAICompatProvider("o", api_key="k", base_url=llm_server.base_url + "/v1", timeout=10, retries=0)
    request = CompletionRequest(model="m", messages=[{"role": "user", "content": "q"}], max_tokens=50, stream=False)

    async def go() -> tuple[list[object], BaseException | None]:
        try:
            items = [item async for item in provider.stream(request)]
            try:
                [item async for item in provider.stream(request)]
            except ProviderError as exc:
                return items, exc
            return items, None
        finally:
            await provider.aclose()

    items, error = asyncio.run(go())
    assert items == ["one two three", Finish("length"), Usage(1, 3, 4)]  # the fake counts a word a token
    assert isinstance(error, ProviderError) and error.kind == "cut_off"
    assert [r.stream for r in llm_server.requests] == [False, False]
    assert "stream_options" not in llm_server.requests[0].body


def test_an_answer_no_one_watches_comes_whole_as_one_delta(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="the final answer", finish_reason="length"))
    events: list[Event] = []
    moa = MoA(references=list(REFS), aggregator="judge")
    result = asyncio.run(moa.arun("q", on_event=events.append, watch_references=False, watch_answer=False))
    assert [r.stream for r in llm_server.requests] == [False, False, False]
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["the final answer"]
    assert (result.answer, result.finish_reason) == ("the final answer", "length")
    assert result.aggregator_usage is not None and result.aggregator_usage.completion_tokens == 3
