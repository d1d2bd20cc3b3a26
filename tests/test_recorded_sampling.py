"""The log records what each call sent, as sent: the aggregator's own sampling (a server
request's, `MoA.arun(aggregator_sampling=...)`) included, not the settings rebuilt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moa_cli.api import MoA
from moa_cli.store import Store, flush_all
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.serve_process import ServeProcess

SENT = ("temperature", "max_tokens", "seed")


def _logged_calls(home: Path) -> dict[str, dict[str, Any]]:
    """Each call of the latest turn, by model spec: the settings the log says it sent."""
    flush_all()
    with Store(home / "logs.db") as store:
        cid = store.latest_conversation_id()
        assert cid is not None
        turn = store.conversation(cid, with_calls=True).turns[-1]
    return {call.spec: call.settings for call in turn.calls}


def _wire(server: FakeLLMServer, model: str) -> tuple[Any, ...]:
    (request,) = server.requests_for(model)
    return tuple(request.body.get(name) for name in SENT)


def test_the_log_records_the_aggregators_own_sampling_as_sent(
    moa_env: dict[str, str], moa_home: Path, llm_server: FakeLLMServer
) -> None:
    moa = MoA(["alpha", "beta"], "judge", env=moa_env, temperature=0.7, max_tokens=512, seed=3)
    asyncio.run(moa.arun("hi", aggregator_sampling={"temperature": 0.0, "max_tokens": 9, "seed": 42}))
    assert _wire(llm_server, "judge") == (0.0, 9, 42)
    assert _wire(llm_server, "alpha") == (0.7, 512, 3) and _wire(llm_server, "beta") == (0.7, 512, 4)
    logged = _logged_calls(moa_home)
    assert tuple(logged["judge"][k] for k in SENT) == (0.0, 9, 42)
    assert tuple(logged["alpha"][k] for k in SENT) == (0.7, 512, 3)
    assert tuple(logged["beta"][k] for k in SENT) == (0.7, 512, 4)


@pytest.fixture
def served(moa_env: dict[str, str]) -> Iterator[ServeProcess]:
    process = ServeProcess(["-r", "alpha", "-a", "judge", "--seed", "3"], moa_env)
    yield process
    process.stop()
    assert "Traceback" not in process.log, process.log


def test_a_serve_request_that_sets_sampling_is_logged_as_sent(
    served: ServeProcess, moa_home: Path, llm_server: FakeLLMServer
) -> None:
    body = {
        "model": "moa",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.1,
        "max_tokens": 7,
        "seed": 99,
        "top_p": 0.5,
    }
    reply = httpx.post(f"{served.base_url}/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    (judge,) = llm_server.requests_for("judge")
    assert (judge.body["temperature"], judge.body["max_tokens"], judge.body["seed"], judge.body["top_p"]) == (
        0.1,
        7,
        99,
        0.5,
    )
    served.stop()  # the server's writer has written the turn once it has stopped
    logged = _logged_calls(moa_home)
    assert {k: logged["judge"].get(k) for k in (*SENT, "top_p")} == {
        "temperature": 0.1,
        "max_tokens": 7,
        "seed": 99,
        "top_p": 0.5,
    }
    assert logged["alpha"]["seed"] == 3 and "top_p" not in logged["alpha"]
    assert json.dumps(logged)  # stored as JSON
