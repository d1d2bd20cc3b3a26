"""store/ on a tmp database: schema, one transaction per turn, search, deletes, concurrency, overhead."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moa_cli.store import (
    SCHEMA_VERSION,
    CallRecord,
    Store,
    StoreError,
    TurnRecord,
    TurnWriter,
    new_conversation_id,
)
from moa_cli.store.schema import MIGRATIONS, statements
from tests.conftest import ROOT


def _turn(cid: str, prompt: str, answer: str | None = "an answer", status: str = "ok", calls: int = 2) -> TurnRecord:
    return TurnRecord(
        cid, prompt, status, time.time(), answer=answer,
        calls=[CallRecord(1, i, "proposer", f"m{i}", "together", f"m{i}", {"temperature": 0.7}, text="t") for i in range(calls)],
    )  # fmt: skip


def test_wal_busy_timeout_and_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Store(path) as store:
        assert store.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
        assert store._query("PRAGMA journal_mode")[0][0] == "wal"
        assert store._query("PRAGMA busy_timeout")[0][0] == 5000
    with Store(path) as store:  # reopening applies nothing twice
        assert store.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    with pytest.raises(StoreError, match="newer moa"):
        Store(path)


def test_a_log_from_before_tool_calls_is_migrated_and_keeps_its_turns(tmp_path: Path) -> None:
    """A log written at schema 1 (no tool_calls columns) opens, gains them, reads its old turns
    with none, and stores an agent's tool calls (NULL and [] kept apart)."""
    path = tmp_path / "logs.db"
    with sqlite3.connect(path) as db:  # what moa 0.2 left: migration 1 only
        db.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        for statement in statements(MIGRATIONS[0][2]):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (1, 'v1', 0)")
        db.execute("INSERT INTO conversations VALUES ('C1', 't', 'ask', 0, 0, '{}')")
        db.execute(
            "INSERT INTO turns (conversation_id, seq, prompt, answer, status, started_at) VALUES ('C1', 1, 'old', 'a', 'ok', 0)"
        )
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    with Store(path) as store:
        assert store.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
        (old,) = store.conversation("C1").turns
        assert old.prompt == "old" and old.tool_calls is None
        turn = _turn("C1", "weather?", answer="")
        turn.tool_calls = [call]
        turn.calls[1].tool_calls = [call]
        store.write_turn(turn)
        _, new = store.conversation("C1", with_calls=True).turns
        assert new.tool_calls == [call]
        assert [c.tool_calls for c in new.calls] == [None, [call]]


def test_a_turn_and_its_calls_are_one_transaction(tmp_path: Path) -> None:
    with Store(tmp_path / "logs.db") as store:
        cid = new_conversation_id()
        store.write_turn(_turn(cid, "first"))
        bad = _turn(cid, "second")
        bad.calls[1].layer = None  # type: ignore[assignment]  # NOT NULL: the second call fails
        with pytest.raises(sqlite3.IntegrityError):
            store.write_turn(bad)
        assert store.counts() == (1, 1)
        assert len(store._query("SELECT * FROM calls")) == 2  # the failed turn left no call behind
        third = _turn(cid, "third")
        store.write_turn(third)
        assert third.seq == 2  # seq counts the turns that were written


def test_ids_sort_by_time_and_prefixes_resolve(tmp_path: Path) -> None:
    a, b = new_conversation_id(1_700_000_000), new_conversation_id(1_800_000_000)
    assert len(a) == 26 and a < b
    with Store(tmp_path / "logs.db") as store:
        store.write_turn(_turn(a, "old"))
        store.write_turn(_turn(b, "new"))
        assert store.resolve_conversation(a[:12].lower()) == a
        assert store.latest_conversation_id() == b
        with pytest.raises(StoreError, match="no conversation"):
            store.resolve_conversation("ZZZZ")
        with pytest.raises(StoreError, match="more than one"):
            store.resolve_conversation("0")


def test_search_is_keyed_on_the_turn_id_and_survives_vacuum(tmp_path: Path) -> None:
    with Store(tmp_path / "logs.db") as store:
        cid = new_conversation_id()
        ids = [store.write_turn(_turn(cid, f"question {n}", f"answer number{n}")) for n in range(5)]
        store.delete_turns([ids[1], ids[2]])  # holes: implicit rowids would be renumbered by VACUUM
        store._db.execute("VACUUM")
        (hit,) = store.turns(query="number4")
        assert hit.id == ids[4] and hit.answer == "answer number4"
        assert [t.id for t in store.turns(query="question")] and store.turns(query="number1") == []
        assert store.turns(query='"') == [] and store.turns(query="AND OR NOT (") == []  # no query syntax


def test_cost_totals_by_day_model_and_conversation(tmp_path: Path) -> None:
    with Store(tmp_path / "logs.db") as store:
        cid = new_conversation_id()
        turn = _turn(cid, "q")
        turn.calls[0].cost_usd, turn.calls[1].cost_usd = 0.25, None
        turn.priced_usd, turn.unpriced_calls = 0.25, 1
        store.write_turn(turn)
        (line,) = store.cost()
        assert (line.priced_usd, line.unpriced_calls, line.cost_usd, line.calls) == (0.25, 1, None, 2)
        models = {line.key: line for line in store.cost(by="model")}
        assert models["m0"].cost_usd == 0.25 and models["m1"].cost_usd is None
        assert [line.key for line in store.cost(by="conversation")] == [cid]
        assert len(store.cost(by="day")) == 1
        assert store.cost(since=time.time() + 60)[0].turns == 0
        assert store.conversation_cost(cid).cost_usd is None


def test_backup_is_a_consistent_copy(tmp_path: Path) -> None:
    with Store(tmp_path / "logs.db") as store:
        store.write_turn(_turn(new_conversation_id(), "kept"))
        store.backup(tmp_path / "copy.db")
        with pytest.raises(StoreError, match="exists"):
            store.backup(tmp_path / "copy.db")
    with Store(tmp_path / "copy.db") as copy:
        assert copy.turn().prompt == "kept" and copy.integrity() == "ok"


def test_writers_in_threads_and_processes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    Store(path).close()
    script = (
        "import sys, time\nfrom moa_cli.store import Store, TurnRecord, CallRecord, new_conversation_id\n"
        "s = Store(sys.argv[1])\n"
        "for n in range(40):\n"
        "    s.write_turn(TurnRecord(new_conversation_id(), f'proc {n}', 'ok', time.time(), answer='a',"
        " calls=[CallRecord(1, 0, 'proposer', 'm', 'p', 'm')]))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT) for _ in range(2)]

    def write() -> None:
        with Store(path) as store:
            for n in range(40):
                store.write_turn(_turn(new_conversation_id(), f"thread {n}"))

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    with Store(path) as store:
        assert store.counts()[0] == 160 and store.integrity() == "ok"


def test_the_writer_thread_writes_in_order_and_flushes(tmp_path: Path) -> None:
    writer = TurnWriter(tmp_path / "logs.db")
    cid = new_conversation_id()
    futures = [writer.submit(_turn(cid, f"q{n}")) for n in range(20)]
    writer.flush()
    assert [f.result() for f in futures] == list(range(1, 21))
    bad = writer.submit(_turn(cid, "bad", status="bogus"))  # CHECK constraint
    writer.flush()
    assert isinstance(bad.exception(), sqlite3.IntegrityError)
    writer.close()
    with Store(tmp_path / "logs.db") as store:
        assert [t.seq for t in store.turns(limit=100)][:3] == [20, 19, 18]


def _moa_turn(home: Path, log: bool) -> float:
    """Seconds for 30 scripted turns of 4 references + aggregator (no network), logged or not."""
    from moa_cli.api import MoA
    from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter

    moa = MoA(references=["a", "b", "c", "d"], aggregator="j", log=log, router=ScriptedRouter(ScriptedProvider()))

    async def turns() -> list[float]:
        times = []
        for n in range(30):
            started = time.perf_counter()
            await moa.arun(f"prompt {n} " + "word " * 200)
            times.append(time.perf_counter() - started)
        return times

    times = sorted(asyncio.run(turns())[5:])
    return times[len(times) // 2]


def test_logging_adds_less_than_2_ms_to_a_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moa_cli.store import flush_all

    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    _moa_turn(tmp_path, True)  # warm: the writer thread and the database exist
    flush_all()
    off = min(_moa_turn(tmp_path, False) for _ in range(2))
    on = min(_moa_turn(tmp_path, True) for _ in range(2))
    flush_all()
    print(f"median turn: {off * 1000:.2f} ms unlogged, {on * 1000:.2f} ms logged")
    assert on - off < 0.002
    with Store(tmp_path / "logs.db") as store:
        assert store.counts()[0] == 90


def test_nothing_secret_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moa_cli.api import MoA
    from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
    from moa_cli.store import flush_all

    key = "sk-test-supersecret-0042"
    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", key)
    (tmp_path / "config.toml").write_text(
        '[providers.vllm]\nkind = "openai"\nbase_url = "http://user:hunter2pass@localhost:9/v1"\n'
    )
    provider = ScriptedProvider()
    provider.set_default("a", Step("x", error="auth", status=401, reason=f"HTTP 401 bad key {key}"))
    provider.set_default("j", Step(f"echo of {key} and http://user:hunter2pass@localhost:9/v1"))
    moa = MoA(references=["a", "vllm:b"], aggregator="j", router=ScriptedRouter(provider))
    asyncio.run(moa.arun(f"my key is {key}"))
    flush_all()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("logs.db*"))
    assert key.encode() not in raw and b"hunter2pass" not in raw
    with Store(tmp_path / "logs.db") as store:
        turn = store.turn()
    assert turn.prompt == "my key is ****" and "****" in (turn.calls[0].error or "")


def test_turns_waiting_for_the_writer_go_in_one_transaction_and_keep_their_order(tmp_path: Path) -> None:
    writer = TurnWriter(tmp_path / "logs.db")
    cid = new_conversation_id()
    futures = [writer.submit(_turn(cid, f"prompt {i}")) for i in range(40)]
    writer.flush()
    ids = [f.result() for f in futures]
    assert ids == sorted(ids) and len(set(ids)) == 40
    with Store(tmp_path / "logs.db") as store:
        turns = store.conversation(cid).turns
        assert [t.prompt for t in turns] == [f"prompt {i}" for i in range(40)]
        assert [t.seq for t in turns] == list(range(1, 41))
    writer.close()


def test_a_turn_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    writer = TurnWriter(tmp_path / "logs.db")
    cid = new_conversation_id()
    bad = _turn(cid, "bad", status="bogus")  # a CHECK constraint fails the group's transaction
    futures = [writer.submit(_turn(cid, "one")), writer.submit(bad), writer.submit(_turn(cid, "two"))]
    writer.flush()
    assert futures[0].result() and futures[2].result()
    assert isinstance(futures[1].exception(), sqlite3.IntegrityError)
    writer.close()
    with Store(tmp_path / "logs.db") as store:
        assert [t.prompt for t in store.conversation(cid).turns] == ["one", "two"]
