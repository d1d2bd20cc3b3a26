"""Issue 20.3: `--timeout` bounds each call's whole time, the SDK's retries included.

Through the CLI (in-process) and the real together SDK against the fake server; the bounds
are ratios of the times a server asks for, never tight timings.
"""

from __future__ import annotations

import json
import time

from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge", "--max-tokens", "40"]


def test_a_retry_after_past_the_timeout_ends_the_call_at_once(moa, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(status=429, headers={"retry-after": "30"}))
    started = time.monotonic()
    proc = moa(["ask", *LINEUP, "--timeout", "2", "--json", "q"], env={"MOA_RETRIES": "2"})
    seconds = time.monotonic() - started
    assert seconds < 15, seconds  # under half of Retry-After (it took 30.4 s)
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "rate_limit" and alpha["status"] == 429
    assert "asked to retry after 30s" in alpha["error"] and "not retried" in alpha["error"]
    assert len(llm_server.requests_for("alpha")) == 1  # no retry was paid for


def test_a_short_retry_after_is_still_retried_by_the_sdk(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(status=429, headers={"retry-after-ms": "10"}), Reply(text="fine"))
    proc = moa(["ask", *LINEUP, "--timeout", "5", "--json", "q"], env={"MOA_RETRIES": "2"})
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["text"] == "fine" and len(llm_server.requests_for("alpha")) == 2


def test_a_server_that_never_answers_ends_at_the_timeout_with_the_default_retries(
    moa, llm_server: FakeLLMServer
) -> None:
    llm_server.set_default("alpha", Reply(latency=3600))
    started = time.monotonic()
    proc = moa(["ask", *LINEUP, "--timeout", "2", "--json", "q"], env={"MOA_RETRIES": "2"})
    seconds = time.monotonic() - started
    assert seconds < 5, seconds  # 3 attempts of 2 s and the sleeps between took 9.45 s
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "timeout" and "longer than 2s" in alpha["error"]


def test_retries_of_5xx_stop_at_the_timeout(moa, llm_server: FakeLLMServer) -> None:
    llm_server.set_default("alpha", Reply(status=503, latency=0.6))
    started = time.monotonic()
    proc = moa(["ask", *LINEUP, "--timeout", "1", "--json", "q"], env={"MOA_RETRIES": "5"})
    seconds = time.monotonic() - started
    assert seconds < 3, seconds
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] in ("timeout", "other") and alpha["seconds"] < 2.5
