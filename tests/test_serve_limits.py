"""`moa serve` where it meets the outside (issue 19), through real sockets: a `moa serve`
subprocess, raw sockets, httpx and the official `openai` client, the fake LLM server upstream.

Browser safety (Host, Origin, Content-Type), slow and huge peers (header and body deadlines,
--max-connections, h11's head limit), the caps on a request's fan-out, retries that reuse the
proposals, tools refused by a local aggregator, and what the operator sees on stderr.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.fakes.serve_process import ServeProcess, wait_for

LINEUP = ["-r", "alpha,beta", "-a", "judge"]
HI = [{"role": "user", "content": "Why is the sky blue?"}]
BODY = {"model": "moa", "messages": HI}


@pytest.fixture
def serve(moa_env: dict[str, str]) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str, port: int | None = None) -> ServeProcess:
        served = ServeProcess([*LINEUP, *args], {**moa_env, "NO_PROXY": "127.0.0.1,localhost"}, port=port)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
        assert "Traceback" not in served.log, served.log


def post(served: ServeProcess, body: Any = BODY, **kwargs: Any) -> httpx.Response:
    return httpx.post(served.base_url + "/chat/completions", json=body, timeout=20, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---------------------------------------------------------------------------- browser safety


def test_a_web_page_cannot_drive_the_server(serve, llm_server: FakeLLMServer) -> None:
    """DNS rebinding (a foreign Host), a cross-origin page (Origin), a text/plain "simple" POST."""
    served = serve("--allowed-host", "moa.internal", "--cors-origin", "http://app.example")
    rebound = post(served, headers={"Host": "attacker.example:5001"})
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed"
    foreign = post(served, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "--cors-origin" in foreign.json()["error"]["message"]
    simple = httpx.post(
        served.base_url + "/chat/completions", content=b'{"model":"moa"}', headers={"Content-Type": "text/plain"}
    )
    assert simple.status_code == 415 and simple.json()["error"]["code"] == "unsupported_media_type"
    assert httpx.get(served.base_url + "/models", headers={"Host": "evil.example"}).status_code == 421
    assert llm_server.requests == []  # not one upstream call paid for
    for host in ("localhost:5001", "127.0.0.1", "[::1]:80", "moa.internal"):
        assert post(served, headers={"Host": host}).status_code == 200, host
    allowed = post(served, headers={"Origin": "http://app.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"
    assert len(llm_server.requests) == 5 * 3


def test_allowed_hosts_from_the_environment(serve, moa_env, llm_server: FakeLLMServer) -> None:
    served = ServeProcess([*LINEUP], {**moa_env, "MOA_SERVE_ALLOWED_HOSTS": "a.test,b.test"})
    try:
        assert post(served, headers={"Host": "b.test:80"}).status_code == 200
        assert post(served, headers={"Host": "c.test"}).status_code == 421
    finally:
        served.stop()


# ---------------------------------------------------------------------------- slow and huge peers


def test_half_sent_requests_are_cut_and_the_server_recovers(serve, llm_server: FakeLLMServer) -> None:
    """More half-sent requests than --max-connections: /health is refused while they hold the
    slots (503), every one is closed at the header deadline, then /health answers;
    the log has a few throttled lines for it, no traceback."""
    served = serve("--max-connections", "20", "--header-timeout", "1")
    held = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", served.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append(sock)
    # Every half-sent request is closed by the server, with nothing sent back.
    assert all(closed_by_peer(sock) == b"" for sock in held)
    assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 200)
    for sock in held:
        sock.close()
    assert wait_for(lambda: any("sent no complete request" in line for line in served.lines)), served.log
    cut = [line for line in served.lines if "sent no complete request" in line]
    assert 1 <= len(cut) < 30  # one line a second at most, with the count of the rest
    assert llm_server.requests == []


def test_over_max_connections_gets_503_and_one_line(serve, llm_server: FakeLLMServer) -> None:
    served = serve("--max-connections", "4", "--header-timeout", "30")
    held = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(4)]
    assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 503)
    for sock in held:
        sock.close()
    assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 200)
    assert wait_for(lambda: any("--max-connections" in line for line in served.lines)), served.log


def test_past_max_connections_the_refusal_is_an_openai_error_with_retry_after(serve, llm_server: FakeLLMServer) -> None:
    """Past --max-connections the official client gets an OpenAI-shaped 503 with Retry-After (not
    uvicorn's plain-text one), the connection closes, and the log has one line for the refusal;
    a flood of them after it adds at most one line a second."""
    served = serve("--max-connections", "4", "--header-timeout", "30")
    held = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(4)]
    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=20)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    refused = caught.value.response
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.headers["content-type"] == "application/json" and refused.headers["connection"] == "close"
    assert refused.json() == {
        "error": {
            "message": "the server is at its limit of 4 open connections and requests in flight; retry later",
            "type": "server_unavailable",
            "param": None,
            "code": "too_many_connections",
        }
    }

    def lines() -> list[str]:
        return [line for line in served.lines if "past --max-connections" in line]

    assert wait_for(lambda: len(lines()) == 1), served.log
    assert lines() == ["moa serve: refused: 503 for a request past --max-connections (4 connections and requests)\n"]
    started = time.monotonic()
    flood = [httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=10) for _ in range(50)]
    seconds = time.monotonic() - started
    assert {r.status_code for r in flood} == {503} and {r.json()["error"]["code"] for r in flood} == {
        "too_many_connections"
    }
    assert 1 <= len(lines()) <= 2 + seconds  # throttled: at most one line a second, with the count of the rest
    assert "Exceeded concurrency limit" not in served.log
    for sock in held:
        sock.close()
    assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{served.port}/health").status_code == 200)
    assert llm_server.requests == []  # not one upstream call for a refused request


def test_a_body_sent_too_slowly_gets_408_and_the_connection_is_closed(serve, llm_server: FakeLLMServer) -> None:
    served = serve("--body-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    sent = 1
    sock.settimeout(0.2)
    answer = b""
    while sent < 1000:  # a byte every 0.2 s would take 200 s
        try:
            answer = sock.recv(65536)
            break
        except TimeoutError:
            sock.sendall(b" ")
            sent += 1
    answer += closed_by_peer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code":"body_timeout"' in answer.replace(b" ", b"")
    assert sent < 100  # cut long before the body was complete
    assert llm_server.requests == []


def test_a_huge_head_or_body_is_refused(serve, llm_server: FakeLLMServer) -> None:
    served = serve("--max-header-bytes", "4096")
    # A head still growing past the limit (h11 counts what it holds of an incomplete head).
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000)
    answer = closed_by_peer(sock)
    sock.close()
    assert answer.split(b" ")[1] in (b"400", b"431"), answer
    huge = httpx.post(
        served.base_url + "/chat/completions",
        content=b"x" * (9 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=20,
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert llm_server.requests == []


# ---------------------------------------------------------------------------- caps, tools


def test_caps_on_references_and_upstream_calls_per_request(serve, llm_server: FakeLLMServer) -> None:
    served = serve("--allow-overrides", "--max-references", "3", "--max-upstream-calls", "6")
    many = post(served, {**BODY, "moa": {"references": ["alpha"] * 4}})
    assert many.status_code == 400, many.text
    assert many.json()["error"]["param"] == "moa.references" and "--max-references" in many.text
    deep = post(served, {**BODY, "moa": {"references": ["alpha", "beta", "gamma"], "rounds": 2}})
    assert deep.status_code == 400 and "--max-upstream-calls" in deep.text and "7 upstream calls" in deep.text
    assert llm_server.requests == []
    fits = post(served, {**BODY, "moa": {"references": ["alpha", "beta", "gamma"]}})
    assert fits.status_code == 200 and len(llm_server.requests) == 4


def test_a_local_aggregator_refuses_tools_and_follows_a_json_format(serve, llm_server: FakeLLMServer) -> None:
    """The local (llama.cpp) aggregator does not call tools: a 400 that says so, no model run. A
    JSON format it follows through a grammar: the answer is a JSON object."""
    served = serve("-a", "local:smollm2")
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    with openai.OpenAI(base_url=served.base_url, api_key="none", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as tools:
            client.chat.completions.create(model="moa", messages=HI, tools=[tool])  # type: ignore[arg-type, list-item]
        assert llm_server.requests == []
        # A tight schema: its grammar bounds the answer's length, whatever the model's numerics.
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        answer = client.chat.completions.create(
            model="moa", messages=HI, max_tokens=200,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        )  # fmt: skip
    assert "local (llama.cpp) model" in str(tools.value) and tools.value.param == "tools"  # type: ignore[attr-defined]
    assert "do not call tools" in str(tools.value)
    assert json.loads(answer.choices[0].message.content or "") in ({"ok": True}, {"ok": False})
    assert all("response_format" not in r.body for r in llm_server.requests)  # the references answer in prose


# ---------------------------------------------------------------------------- retries


def calls(llm_server: FakeLLMServer) -> dict[str, int]:
    return {m: len(llm_server.requests_for(m)) for m in ("alpha", "beta", "judge")}


def test_the_openai_clients_retry_pays_only_for_the_aggregator(serve, llm_server: FakeLLMServer) -> None:
    """The issue's case: an aggregator 503; the client retries (same Idempotency-Key) after Retry-After."""
    llm_server.script("judge", Reply(status=503))
    served = serve()
    with openai.OpenAI(base_url=served.base_url, api_key="none", max_retries=1) as client:
        answer = client.chat.completions.create(model="moa", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Answer from judge."
    assert calls(llm_server) == {"alpha": 1, "beta": 1, "judge": 2}  # not 2, 2, 2
    reused = answer.model_extra["moa"]["proposals"]  # type: ignore[index]
    assert [(p["model"], p["status"], p.get("reused")) for p in reused] == [
        ("alpha", "ok", True),
        ("beta", "ok", True),
    ]
    # The access line is written after the response is sent: wait for it rather than race it.
    assert wait_for(lambda: any("upstream=1" in line for line in served.lines)), served.log
    assert any("upstream=3" in line for line in served.lines), served.log


def test_a_retried_body_reruns_only_what_failed(serve, llm_server: FakeLLMServer) -> None:
    """The same body again: the reference that failed runs again, with the same input and seed,
    and the aggregator; the one that answered is not paid for twice."""
    llm_server.script("beta", Reply(status=500), Reply(status=500), Reply(text="beta at last"))
    llm_server.script("judge", Reply(status=503), Reply(status=503))
    served = serve("--retries", "0")
    assert post(served).status_code == 503
    assert calls(llm_server) == {"alpha": 1, "beta": 1, "judge": 1}
    assert post(served).status_code == 503  # beta failed again; the kept proposals are kept again
    assert calls(llm_server) == {"alpha": 1, "beta": 2, "judge": 2}
    again = post(served)
    assert again.status_code == 200, again.text
    assert calls(llm_server) == {"alpha": 1, "beta": 3, "judge": 3}
    first, rerun = llm_server.requests_for("beta")[0].body, llm_server.requests_for("beta")[2].body
    assert rerun["messages"] == first["messages"] and rerun.get("seed") == first.get("seed")
    proposals = again.json()["moa"]["proposals"]
    assert [(p["model"], p["status"], p.get("reused")) for p in proposals] == [
        ("alpha", "ok", True),
        ("beta", "ok", None),
    ]
    judged = llm_server.requests_for("judge")[-1].body["messages"]
    assert "beta at last" in json.dumps(judged)  # the aggregator read the fresh answer
    # Another conversation under the same Idempotency-Key reuses nothing.
    llm_server.script("judge", Reply(status=503))
    assert post(served, headers={"Idempotency-Key": "k1"}).status_code == 503
    other = {**BODY, "messages": [{"role": "user", "content": "Something else?"}]}
    assert post(served, other, headers={"Idempotency-Key": "k1"}).status_code == 200
    assert calls(llm_server) == {"alpha": 3, "beta": 5, "judge": 5}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_an_agents_retry_pays_only_for_what_failed(serve, llm_server: FakeLLMServer) -> None:
    """An agent's request (tools) retried by the openai client after an aggregator 503: the
    references are not paid for twice, the tool call comes back checked; other tools reuse nothing."""
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    llm_server.script("judge", Reply(status=503), Reply(tool_calls=[call]))
    served = serve()
    asked = [{"role": "user", "content": "Weather in Oslo?"}]
    with openai.OpenAI(base_url=served.base_url, api_key="none", max_retries=1) as client:
        answer = client.chat.completions.create(model="moa", messages=asked, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert answer.choices[0].finish_reason == "tool_calls"
    made = answer.choices[0].message.tool_calls
    assert made is not None and [(c.function.name, c.function.arguments) for c in made] == [  # type: ignore[union-attr]
        ("get_weather", '{"city": "Oslo"}')
    ]
    assert calls(llm_server) == {"alpha": 1, "beta": 1, "judge": 2}  # not 2, 2, 2
    assert [p.get("reused") for p in answer.model_extra["moa"]["proposals"]] == [True, True]  # type: ignore[index]
    assert llm_server.requests_for("judge")[-1].body["tools"] == [WEATHER]  # the retry still offers the tools

    # The same messages with another tool list is another request: nothing is reused.
    llm_server.script("judge", Reply(status=503))
    assert post(served, {**BODY, "messages": asked, "tools": [WEATHER]}).status_code == 503
    other = {**WEATHER, "function": {**WEATHER["function"], "name": "get_forecast"}}
    assert post(served, {**BODY, "messages": asked, "tools": [other]}).status_code == 200
    assert calls(llm_server) == {"alpha": 3, "beta": 3, "judge": 4}


def test_without_a_retry_window_a_retry_runs_the_whole_turn(serve, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(status=503))
    served = serve("--retry-window", "0")
    assert post(served).status_code == 503
    assert post(served).status_code == 200
    assert calls(llm_server) == {"alpha": 2, "beta": 2, "judge": 2}


# ---------------------------------------------------------------------------- the operator


def test_the_commands_defaults_are_the_servers() -> None:
    """cli/serve.py repeats the defaults as literals (no server import for `moa --help`)."""
    import inspect

    from moa_cli.cli.serve import serve as command
    from moa_cli.server import options

    defaults = {p.name: p.default for p in inspect.signature(command).parameters.values()}
    assert defaults["max_connections"] == options.MAX_CONNECTIONS
    assert defaults["header_timeout"] == options.HEADER_TIMEOUT == options.ServeOptions().header_timeout
    assert defaults["body_timeout"] == options.BODY_TIMEOUT == options.ServeOptions().body_timeout
    assert defaults["keep_alive_timeout"] == options.KEEP_ALIVE_TIMEOUT
    assert defaults["max_header_bytes"] == options.MAX_HEADER_BYTES
    assert defaults["max_references"] == options.MAX_REFERENCES == options.ServeOptions().max_references
    assert defaults["max_upstream_calls"] == options.MAX_UPSTREAM_CALLS
    assert defaults["retry_window"] == options.RETRY_WINDOW == options.ServeOptions().retry_window


def test_start_up_and_access_lines_and_quiet(serve, llm_server: FakeLLMServer) -> None:
    served = serve("--api-key", "k")
    port = served.port
    start = next(line for line in served.lines if line.startswith("moa serve: running on"))
    assert f"http://127.0.0.1:{port}/v1" in start and "moa (alpha, beta -> judge)" in start and "auth on" in start
    assert post(served, headers={"Authorization": "Bearer k"}).status_code == 200
    assert httpx.get(served.base_url + "/models").status_code == 401
    assert wait_for(lambda: sum("moa serve: POST" in line or "moa serve: GET" in line for line in served.lines) == 2)
    access = [line for line in served.lines if line.startswith("moa serve: POST")]
    assert len(access) == 1 and " 200 " in access[0] and "model=moa upstream=3" in access[0]
    assert any(line.startswith("moa serve: GET /v1/models 401") for line in served.lines)
    quiet = serve("--quiet", port=free_port())
    assert post(quiet).status_code == 200
    assert not any(line.startswith("moa serve:") for line in quiet.lines), quiet.log
