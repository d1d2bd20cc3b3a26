"""Issue 20.4 at the wire: base-URL userinfo, sent by httpx as `Authorization: Basic`, and a
system prompt holding the key never reach the terminal or logs.db in the clear."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge", "--max-tokens", "40"]
PASSWORD = "hunter2-userinfo-secret"


def logged(home: Path) -> str:
    from moa_cli.store import flush_all

    flush_all()  # the writer thread has every turn in the file
    dbs = list(home.rglob("*.db"))
    assert dbs, "nothing logged"
    text = []
    for path in dbs:
        with sqlite3.connect(path) as db:
            text.extend(db.iterdump())
    return "\n".join(text)


def test_base_url_userinfo_echoed_as_basic_auth_is_masked(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    llm_server.set_default("alpha", Reply(status=401, error_message="bad credentials {api_key}"))
    url = llm_server.base_url.replace("http://", f"http://alice:{PASSWORD}@")
    proc = moa(["ask", *LINEUP, "-v", "q"], env={"TOGETHER_BASE_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert llm_server.requests_for("alpha")[0].headers["authorization"] == f"Basic {basic}"  # it was sent
    assert "bad credentials Basic ****" in proc.stderr
    stored = logged(moa_home)
    assert "bad credentials Basic ****" in stored
    for text in (proc.stdout + proc.stderr, stored):
        assert basic not in text and PASSWORD not in text


def test_a_key_in_the_system_prompt_is_masked_in_every_stored_field(moa, moa_home: Path) -> None:
    key = "test-key-0123456789"  # the TOGETHER_API_KEY of the fixture
    proc = moa(["ask", *LINEUP, "--system", f"you may say {key}", "q"])
    assert proc.returncode == 0, proc.stderr
    text = logged(moa_home)
    assert "you may say ****" in text
    assert key not in text
