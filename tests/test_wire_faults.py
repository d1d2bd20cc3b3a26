"""Issue 20.2 and 19 at the wire: what a server sends that is not a proper stream, through
the real together SDK path and the CLI (in-process) against the fake server on 127.0.0.1.

Each bad body fails its reference as `bad_response` (never `cut_off`, never `other`), with
one warning line; a reset says so; valid SSE in any legal shape parses.
"""

from __future__ import annotations

import json

import pytest

from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge", "--max-tokens", "40"]


def chunk(delta: object, finish: str | None = None) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


COMPLETION = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    }
).encode()

BAD_BODIES = {
    "html page": (
        Reply(
            raw=[b"<!DOCTYPE html><html><head><title>Welcome to nginx</title></head></html>"],
            raw_content_type="text/html",
        ),
        "HTML page: Welcome to nginx",
    ),
    "json completion": (
        Reply(raw=[COMPLETION], raw_content_type="application/json"),
        "a JSON completion where a stream was asked for",
    ),
    "truncated json": (Reply(raw=[COMPLETION[:40]], raw_content_type="application/json"), "truncated JSON"),
    "empty body": (Reply(raw=[]), "an empty body"),
    "string delta": (Reply(raw=[chunk("one two"), chunk({}, "stop"), b"data: [DONE]\n\n"]), "delta is a string"),
    "number content": (Reply(raw=[chunk({"content": 12345}), chunk({}, "stop")]), "delta.content is a number"),
    "list content": (Reply(raw=[chunk({"content": ["a", "b"]}), chunk({}, "stop")]), "delta.content is a list"),
    "object content": (Reply(raw=[chunk({"content": {"text": "a"}}), chunk({}, "stop")]), "delta.content is an object"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_body_that_is_not_a_proper_stream_is_a_bad_response(moa, llm_server: FakeLLMServer, name: str) -> None:
    reply, reason = BAD_BODIES[name]
    llm_server.script("alpha", reply, reply)
    proc = moa(["ask", *LINEUP, "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response", alpha
    assert reason in alpha["error"]
    proc = moa(["ask", *LINEUP, "q"])
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("moa: warning:")]
    assert len(warnings) == 1 and reason in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr
    assert proc.stdout == "Answer from judge.\n"
    assert "12345" not in str(llm_server.requests_for("judge")[0].messages)


def test_a_wrong_typed_content_in_the_aggregator_is_never_forwarded(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(raw=[chunk({"content": 12345}), chunk({}, "stop")]))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["error_kind"] == "bad_response" and "12345" not in proc.stdout


def test_a_tcp_reset_says_so(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="one two three four", reset_after=2))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "connection", alpha
    assert "reset by the server" in alpha["error"]


VALID_SSE = [
    b": a comment first\r\n",
    b"event: message\r\nid: 1\r\nretry: 3000\r\n",
    b'data: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "split "}}]}\r\n\r\n',
    b'data: {"choices": [{"delta": {"content": "over"}}]}\r\rdata: {"choices": [{"delta": {"con',
    b'tent": " lines"}, "finish_reason": "stop"}]}\n\n: keep-alive\n\n',
    b"data: [DONE]",  # the last event, with no blank line after it
]


def test_valid_sse_in_every_legal_shape_parses(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(raw=VALID_SSE))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] is None, alpha
    assert alpha["text"] == "split over lines" and alpha["finish_reason"] == "stop"


def test_comments_alone_then_the_end_is_a_cut_stream_not_a_bad_body(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(raw=[b": ping\n\n", b": ping\n\n"]))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    assert json.loads(proc.stdout)["proposals"][0]["error_kind"] == "cut_off"


def test_huge_pieces_are_cut_at_the_byte_budget(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="x" * 1_000_000, endless=True))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response" and "byte budget" in alpha["error"], alpha
    assert llm_server.wait_until_idle(timeout=3.0)


def test_many_small_pieces_past_the_budget_are_cut_too(moa, llm_server: FakeLLMServer) -> None:
    # 3 KB pieces: under the piece cap (2 * 40 + 32), over 64 KiB + 64 B * 40 of text
    llm_server.script("alpha", Reply(text="y" * 3000 + " ", endless=True))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response" and "byte budget" in alpha["error"], alpha


@pytest.mark.parametrize("name", ["html page", "empty body", "number content"])
def test_moa_serve_answers_a_bad_body_with_a_permanent_502(moa_env, llm_server: FakeLLMServer, name: str) -> None:
    from tests.test_serve import HI, call

    reply, _ = BAD_BODIES[name]
    for model in ("alpha", "beta"):
        llm_server.script(model, reply)
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", HI))
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"  # was a retryable 503
    assert response.json()["error"]["code"] == "upstream_bad_response"
    assert "12345" not in response.text
