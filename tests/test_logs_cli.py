"""The conversation log through the CLI: continue, search, show, export, delete, cost, trace, kill -9."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge"]


def _db(home: Path) -> Path:
    return home / "logs.db"


def _history(request) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(m["role"], m["content"]) for m in request.messages]


def test_continue_across_two_processes_sends_the_first_turn(cli, llm_server: FakeLLMServer, moa_home: Path) -> None:
    llm_server.script("judge", Reply(text="Bonjour is hello."))
    first = cli(["ask", *LINEUP, "How do I say hello?"])
    assert first.returncode == 0, first.stderr
    second = cli(["ask", "-c", "and in French?"])  # no line-up flags: the conversation keeps its own
    assert second.returncode == 0, second.stderr
    requests = llm_server.requests_for("alpha")
    assert len(requests) == 2
    assert _history(requests[1]) == [
        ("user", "How do I say hello?"),
        ("assistant", "Bonjour is hello."),
        ("user", "and in French?"),
    ]
    assert len(llm_server.requests_for("judge")) == 2  # the stored aggregator, not the default one
    listed = json.loads(cli(["logs", "--json"]).stdout)["turns"]
    assert [t["prompt"] for t in listed] == ["and in French?", "How do I say hello?"]
    assert listed[0]["conversation_id"] == listed[1]["conversation_id"]
    assert [t["seq"] for t in listed] == [2, 1]


def test_cid_continues_a_given_conversation_and_flags_override_its_lineup(moa, llm_server: FakeLLMServer) -> None:
    assert moa(["ask", *LINEUP, "first conversation"]).returncode == 0
    assert moa(["ask", *LINEUP, "second conversation"]).returncode == 0
    turns = json.loads(moa(["logs", "--json"]).stdout)["turns"]
    old = next(t["conversation_id"] for t in turns if t["prompt"] == "first conversation")
    llm_server.reset()
    ran = moa(["ask", "--cid", old[:20], "-a", "beta", "more"])
    assert ran.returncode == 0, ran.stderr
    assert [r.model for r in llm_server.requests].count("beta") == 2  # beta is now also the aggregator
    assert _history(llm_server.requests_for("alpha")[0])[0] == ("user", "first conversation")


def test_continue_with_nothing_logged_is_a_usage_error(moa) -> None:
    ran = moa(["ask", "-c", "hello"])
    assert ran.returncode == 2
    assert "nothing logged yet" in ran.stderr


def test_chat_continue_reopens_the_conversation(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="Paris."), Reply(text="About two million."))
    assert moa(["ask", *LINEUP, "Capital of France?"]).returncode == 0
    ran = moa(["chat", "-c"], input="How many people live there?\n")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "About two million.\n"
    assert _history(llm_server.requests_for("beta")[1]) == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "How many people live there?"),
    ]
    turns = json.loads(moa(["logs", "--json"]).stdout)["turns"]
    assert turns[0]["conversation_id"] == turns[1]["conversation_id"] and turns[0]["seq"] == 2


def test_a_retried_exchange_is_continued_as_the_repl_showed_it(moa, llm_server: FakeLLMServer) -> None:
    """/retry replaces the last answer: `-c` continues with the new answer, once, not both."""
    llm_server.script("judge", Reply(text="First try."), Reply(text="Second try."), Reply(text="Next."))
    ran = moa(["chat", *LINEUP], input="Question one\n/retry\n")
    assert ran.returncode == 0, ran.stderr
    assert moa(["ask", *LINEUP, "-c", "Question two"]).returncode == 0
    assert _history(llm_server.requests_for("beta")[-1]) == [
        ("user", "Question one"),
        ("assistant", "Second try."),
        ("user", "Question two"),
    ]


def test_search_finds_a_word_from_an_old_answer(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="Photosynthesis turns light into sugar."), Reply(text="Unrelated."))
    assert moa(["ask", *LINEUP, "How do plants eat?"]).returncode == 0
    for n in range(3):
        assert moa(["ask", *LINEUP, f"filler question {n}"]).returncode == 0
    found = json.loads(moa(["logs", "-q", "photosynthesis", "--json"]).stdout)["turns"]
    assert [t["prompt"] for t in found] == ["How do plants eat?"]
    text = moa(["logs", "-q", "PHOTOSYNTHESIS"])
    assert "How do plants eat?" in text.stdout
    assert json.loads(moa(["logs", "-q", 'no-such-word "quoted', "--json"]).stdout)["turns"] == []
    assert len(json.loads(moa(["logs", "-m", "alpha", "-n", "2", "--json"]).stdout)["turns"]) == 2
    assert json.loads(moa(["logs", "-m", "nobody", "--json"]).stdout)["turns"] == []


def test_show_and_export_round_trip(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    from moa_cli.store import Store, flush_all

    llm_server.script("alpha", Reply(status=500))
    assert moa(["ask", *LINEUP, "Tell me about tides"]).returncode == 0
    assert moa(["ask", "-c", "And waves?"]).returncode == 0
    flush_all()  # in-process: the writer thread may still hold the last turn
    with Store(_db(moa_home)) as store:
        cid = store.latest_conversation_id()
        assert cid is not None
        original = store.conversation(cid, with_calls=True)
    shown = moa(["logs", "show", cid, "--proposals"])
    assert shown.returncode == 0, shown.stderr
    assert "Tell me about tides" in shown.stdout and "### Layer 1" in shown.stdout and "**alpha**" in shown.stdout
    assert "failed (other)" in shown.stdout  # the 500
    exported = moa(["logs", "export", cid, "--format", "json"])
    data = json.loads(exported.stdout)
    assert data["id"] == cid and len(data["turns"]) == 2
    # Every stored value comes back: the round trip loses nothing.
    from moa_cli.store import CallRecord, TurnRecord

    turns = [TurnRecord(**{**t, "calls": [CallRecord(**c) for c in t["calls"]]}) for t in data["turns"]]
    assert turns == original.turns
    md = moa(["logs", "export", str(original.turns[0].id), "--format", "md"]).stdout
    assert md.startswith("# Turn") and "Tell me about tides" in md
    assert moa(["logs", "export", cid, "--format", "pdf"]).returncode == 2


def test_rm_really_deletes_search_included(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    llm_server.script("judge", Reply(text="The zyxwvutword is secret."))
    assert moa(["ask", *LINEUP, "remember qwertyzzz please"]).returncode == 0
    assert moa(["ask", *LINEUP, "keep this one"]).returncode == 0
    found = json.loads(moa(["logs", "-q", "zyxwvutword", "--json"]).stdout)["turns"]
    assert len(found) == 1
    ran = moa(["logs", "rm", str(found[0]["id"])])
    assert ran.returncode == 0, ran.stderr
    assert json.loads(moa(["logs", "-q", "zyxwvutword", "--json"]).stdout)["turns"] == []
    with sqlite3.connect(_db(moa_home)) as db:
        db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, turns_fts, row)")
        terms = {row[0] for row in db.execute("SELECT term FROM temp.vocab")}
        assert "zyxwvutword" not in terms and "qwertyzzz" not in terms and "keep" in terms
        assert db.execute("SELECT count(*) FROM calls WHERE text LIKE '%zyxwvutword%'").fetchone()[0] == 0
    raw = b"".join(p.read_bytes() for p in moa_home.glob("logs.db*"))
    assert b"zyxwvutword" not in raw and b"qwertyzzz" not in raw  # not even in free pages or the WAL
    assert moa(["logs", "rm", "--before", "2000-01-01"]).returncode == 0
    assert moa(["logs", "rm", "--before", "1d", "--json"]).stdout.strip() == '{"deleted_turns": 0}'
    assert moa(["logs", "rm"]).returncode == 2


def test_ask_json_says_where_the_turn_is_in_the_log(cli, llm_server: FakeLLMServer) -> None:
    """A script can go from `--json` to `moa logs show`, `moa trace` and `-c --cid`."""
    first = json.loads(cli(["ask", *LINEUP, "--json", "Tell me about tides"]).stdout)
    assert isinstance(first["turn_id"], int) and first["conversation_id"]
    shown = json.loads(cli(["logs", "show", str(first["turn_id"]), "--json"]).stdout)
    assert "Tell me about tides" in json.dumps(shown)
    assert cli(["trace", str(first["turn_id"]), "--json"]).returncode == 0
    second = json.loads(cli(["ask", "--cid", first["conversation_id"], "--json", "And waves?"]).stdout)
    assert second["conversation_id"] == first["conversation_id"] and second["turn_id"] > first["turn_id"]
    unlogged = json.loads(cli(["ask", *LINEUP, "--no-log", "--json", "Off the record"]).stdout)
    assert (unlogged["conversation_id"], unlogged["turn_id"]) == (None, None)


def test_backup_cost_status_off_and_no_log(moa, llm_server: FakeLLMServer, moa_home: Path, tmp_path: Path) -> None:
    assert moa(["ask", *LINEUP, "one"]).returncode == 0
    assert moa(["ask", *LINEUP, "--no-log", "two"]).returncode == 0
    assert len(json.loads(moa(["logs", "--json"]).stdout)["turns"]) == 1
    off = json.loads(moa(["logs", "off", "--json"]).stdout)
    assert off["logging"] is False
    assert moa(["ask", *LINEUP, "three"]).returncode == 0
    assert moa(["ask", *LINEUP, "--log", "four"]).returncode == 0  # the flag wins over the switch
    assert [t["prompt"] for t in json.loads(moa(["logs", "--json"]).stdout)["turns"]] == ["four", "one"]
    assert json.loads(moa(["logs", "on", "--json"]).stdout)["logging"] is True
    assert moa(["ask", *LINEUP, "five"], env={"MOA_LOG": "0"}).returncode == 0
    assert json.loads(moa(["logs", "status", "--json"]).stdout)["turns"] == 2
    target = tmp_path / "backup.db"
    assert moa(["logs", "backup", str(target)]).returncode == 0
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == 2
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert moa(["logs", "backup", str(target)]).returncode == 2  # never overwrites
    # The fake server's models have no price: unknown, never $0.
    cost = json.loads(moa(["logs", "cost", "--json"]).stdout)["lines"][0]
    assert cost["cost_usd"] is None and cost["unpriced_calls"] == 6 and cost["turns"] == 2
    assert "cost unknown" in moa(["logs", "cost"]).stdout
    assert moa(["logs", "path"]).stdout.strip() == str(_db(moa_home))


def test_cost_from_config_prices_in_footer_json_and_logs(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text(
        '[pricing."alpha"]\ninput = 1.0\noutput = 2.0\n'
        '[pricing."together:beta"]\ninput = 0.5\noutput = 0.5\n'
        '[pricing."judge"]\ninput = 3\noutput = 4\n'
    )
    ran = moa(["ask", *LINEUP, "--json", "price me"])
    data = json.loads(ran.stdout)
    calls = [*data["proposals"], {"usage": data["usage"]}]
    assert all(c["usage"] is not None for c in calls)
    expected = 0.0
    for p in data["proposals"]:
        rate = {"alpha": (1.0, 2.0), "beta": (0.5, 0.5)}[p["model"]]
        expected += (p["usage"]["prompt_tokens"] * rate[0] + p["usage"]["completion_tokens"] * rate[1]) / 1e6
    turn = json.loads(moa(["logs", "-n", "1", "--json"]).stdout)["turns"][0]
    assert turn["unpriced_calls"] == 0 and data["cost_usd"] == pytest.approx(turn["cost_usd"])
    assert data["cost_usd"] > expected > 0  # the aggregator's share is on top
    footer = moa(["ask", *LINEUP, "again"]).stderr
    assert "$0.0" in footer and "unpriced" not in footer
    by_model = json.loads(moa(["logs", "cost", "--by", "model", "--json"]).stdout)["lines"]
    assert {line["key"] for line in by_model} == {"alpha", "beta", "judge"}


def test_unknown_price_reads_at_least_and_is_null_in_json(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text('[pricing."alpha"]\ninput = 1.0\noutput = 2.0\n')
    ran = moa(["ask", *LINEUP, "--json", "partly priced"])
    assert json.loads(ran.stdout)["cost_usd"] is None
    footer = moa(["ask", *LINEUP, "partly priced again"]).stderr
    assert "at least $0.0" in footer and "(2 calls unpriced)" in footer


def test_max_cost_refuses_a_turn(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text(
        '[pricing."alpha"]\ninput = 10\noutput = 30\n[pricing."beta"]\ninput = 10\noutput = 30\n'
        '[pricing."judge"]\ninput = 10\noutput = 30\n'
    )
    ran = moa(["ask", *LINEUP, "--max-tokens", "1000", "--max-cost", "0.01", "expensive?"])
    assert ran.returncode == 2
    assert "--max-cost 0.01" in ran.stderr and "at most $0.1" in ran.stderr and "3 calls" in ran.stderr
    assert llm_server.requests == []  # nothing was sent
    ok = moa(["ask", *LINEUP, "--max-tokens", "10", "--max-cost", "0.01", "cheap?"])
    assert ok.returncode == 0, ok.stderr
    unknown = moa(["ask", "-r", "alpha,gamma", "-a", "judge", "--max-cost", "5", "unknown?"])
    assert unknown.returncode == 2 and "no price for gamma" in unknown.stderr


def test_trace_command_draws_the_latest_turn(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    llm_server.script("beta", Reply(status=429, error_message="slow down"))
    assert moa(["ask", *LINEUP, "trace me"]).returncode == 0
    ran = moa(["trace", "--svg", str(tmp_path / "t.svg")], env={"COLUMNS": "100"})
    assert ran.returncode == 0, ran.stderr
    assert "layer 1" in ran.stdout and "aggregator" in ran.stdout
    assert "✗" in ran.stdout and "rate limited" in ran.stdout
    assert (tmp_path / "t.svg").read_text().startswith("<svg")
    data = json.loads(moa(["trace", "--json"]).stdout)
    assert [lane["title"] for lane in data["lanes"]] == ["layer 1", "aggregator"]
    assert moa(["trace", "999"]).returncode == 2


SLOW_TURN = """
import sys
from moa_cli.cli.app import main
sys.argv = ["moa", "ask", "-r", "alpha", "-a", "judge", "the slow one"]
main()
"""


def test_kill_9_mid_turn_loses_only_that_turn(
    cli, llm_server: FakeLLMServer, moa_env: dict[str, str], moa_home: Path
) -> None:
    assert cli(["ask", *LINEUP, "kept turn"]).returncode == 0
    llm_server.script("alpha", Reply(text="slow", latency=30))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TURN], env=moa_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not llm_server.requests_for("alpha")[1:] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert llm_server.requests_for("alpha")[1:], "the slow turn never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(_db(moa_home)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in db.execute("SELECT prompt FROM turns")] == ["kept turn"]
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 3
    assert cli(["ask", *LINEUP, "after the crash"]).returncode == 0
    assert len(json.loads(cli(["logs", "--json"]).stdout)["turns"]) == 2


def test_a_signal_while_the_turn_is_being_logged_finishes_the_write(
    moa, llm_server: FakeLLMServer, moa_home: Path, moa_env: dict[str, str]
) -> None:
    """The answer is out, the log row waits for a lock another process holds, SIGTERM comes:
    the row is still written, no traceback, and the exit code says the signal (143)."""
    from moa_cli.store import flush_all

    assert moa(["ask", "-r", "alpha", "-a", "judge", "first"]).returncode == 0  # logs.db exists
    flush_all()  # the in-process run's row is written before the lock is taken
    holder = sqlite3.connect(moa_home / "logs.db", isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    child = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "ask", "-r", "alpha", "-a", "judge", "signalled while logging"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=moa_env, cwd=ROOT,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    answer = child.stdout.read()  # stdout reaches end-of-file once the answer is out
    assert answer == b"Answer from judge.\n", child.stderr.read() if child.poll() is not None else "still running"
    time.sleep(0.3)  # the process is now waiting for the lock to write its row
    child.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    holder.execute("COMMIT")
    holder.close()
    assert child.wait(timeout=15) == 143
    err = child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    found = moa(["logs", "-q", "signalled", "--json"])
    assert found.returncode == 0 and "signalled while logging" in found.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "rm", ""],
        ["logs", "rm", "  "],
        ["logs", "show", ""],
        ["logs", "export", ""],
        ["logs", "--cid", ""],
        ["ask", "--cid", "", "again"],
    ],
)
def test_an_empty_id_is_refused_and_deletes_nothing(moa, llm_server: FakeLLMServer, args: list[str]) -> None:
    assert moa(["ask", *LINEUP, "the only conversation"]).returncode == 0
    ran = moa([*args, *LINEUP] if args[0] == "ask" else args)
    assert ran.returncode == 2, ran.stderr
    assert "empty id" in ran.stderr and ran.stderr.count("\n") == 1
    assert len(json.loads(moa(["logs", "--json"]).stdout)["turns"]) == 1


def test_an_ambiguous_prefix_is_refused(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    assert moa(["ask", *LINEUP, "one"]).returncode == 0
    assert moa(["ask", *LINEUP, "two"]).returncode == 0
    ids = [t["conversation_id"] for t in json.loads(moa(["logs", "--json"]).stdout)["turns"]]
    common = next(i for i in range(len(ids[0])) if ids[0][i] != ids[1][i])
    if common == 0:
        pytest.skip("the two ids share no prefix")
    ran = moa(["logs", "rm", ids[0][:common]])
    assert ran.returncode == 2 and "more than one conversation" in ran.stderr
    assert len(json.loads(moa(["logs", "--json"]).stdout)["turns"]) == 2


@pytest.mark.parametrize("count", ["-5", "0", "99999999999999999999999"])
def test_logs_count_out_of_range_is_a_usage_error(moa, llm_server: FakeLLMServer, count: str) -> None:
    assert moa(["ask", *LINEUP, "hello"]).returncode == 0
    ran = moa(["logs", "-n", count])
    assert ran.returncode == 2, ran.stderr
    assert ran.stdout == "" and "Traceback" not in ran.stderr and "unexpected" not in ran.stderr
