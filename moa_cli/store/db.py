"""The conversation log: one SQLite file (`logs.db` under the data dir), stdlib `sqlite3` only.

    conversations    id (time-sortable text), title, source, created/updated, line-up
      turns          id (INTEGER), conversation, seq, system, prompt, answer, status, error,
                     line-up and settings, usage and cost totals, start, first token, duration,
                     the answer's tool calls (an agent's turn; NULL: none)
        calls        one per model call (references and aggregator): layer, slot, provider,
                     model, settings sent, text or error (kind, HTTP status), finish_reason,
                     tokens, the price used and where it came from, cost, start, first token,
                     tool calls (an aggregator's, as written)
    turns_fts        FTS5 over prompt and answer, keyed on turns.id (an explicit INTEGER
                     PRIMARY KEY: implicit rowids may change on VACUUM)
    prices           the providers' published catalogues, with their fetch time
    schema_migrations  the migrations applied, by version

Writing: the database is in WAL mode with a busy timeout, so `serve`, `batch` and a REPL
can write at once. A turn and its calls are written in one transaction when the turn ends
(`write_turn`): a process killed mid-turn loses only that turn. `TurnWriter` does the writes
on a thread of its own, so the event loop only puts a record on a queue.

Nothing here knows about terminals, settings or providers: records in, records out.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moa_cli.store.records import (
    BUSY_TIMEOUT_MS,
    RANK_WINDOW,
    TITLE_CHARS,
    CallRecord,
    CatalogueEntry,
    ConversationRecord,
    CostLine,
    StoreError,
    TurnRecord,
    fts_query,
    title_of,
)
from moa_cli.store.schema import MIGRATIONS, SCHEMA_VERSION, statements


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _dumps_or_null(value: Any) -> str | None:
    """JSON text, or NULL for None (a column where "none" and "empty" differ)."""
    return None if value is None else _dumps(value)


def _loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_TURN_COLUMNS = (
    "id, conversation_id, seq, system, prompt, answer, status, error, error_kind, lineup, settings, "
    "prompt_tokens, completion_tokens, total_tokens, cost_usd, priced_usd, unpriced_calls, started_at, "
    "first_token, duration, tool_calls"
)


_CALL_FIELDS = (
    "layer", "slot", "role", "spec", "provider", "model", "settings", "text", "error", "error_kind", "status",
    "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens", "price_input", "price_output",
    "price_source", "cost_usd", "started", "first_token", "duration", "tool_calls",
)  # fmt: skip


class Store:
    """One connection to the log. Thread-safe: calls are serialised by a lock."""

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"no log at {self.path} yet")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crashed process loses nothing committed
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")  # deleted text is zeroed, not left in free pages
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the log {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): writers queue on the busy timeout."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write the log {self.path}: {exc}") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    # -------------------------------------------------------------- migrations

    def migrate(self) -> None:
        """Apply the migrations this file has not seen, each in its own transaction."""
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in self._db.execute("SELECT version FROM schema_migrations")}
            if done and max(done) > SCHEMA_VERSION:
                raise StoreError(f"the log {self.path} was written by a newer moa (schema {max(done)})")
            for version, name, sql in MIGRATIONS:
                if version in done:
                    continue
                with self.transaction() as db:
                    if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                        continue  # another process got there first
                    for statement in statements(sql):
                        db.execute(statement)
                    db.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )

    def schema_versions(self) -> list[int]:
        return [row[0] for row in self._query("SELECT version FROM schema_migrations ORDER BY version")]

    # -------------------------------------------------------------- writing

    def write_turn(self, turn: TurnRecord) -> int:
        """Write a turn and its calls in one transaction; the turn's id (also set on `turn`)."""
        return self.write_turns([turn])[0]

    def write_turns(self, turns: Sequence[TurnRecord]) -> list[int]:
        """Write turns and their calls in one transaction (all or none); their ids, in order."""
        with self.transaction() as db:
            ids = [self._insert_turn(db, turn) for turn in turns]
        for turn, (turn_id, seq) in zip(turns, ids, strict=True):
            turn.id, turn.seq = turn_id, seq
        return [turn_id for turn_id, _ in ids]

    def _insert_turn(self, db: sqlite3.Connection, turn: TurnRecord) -> tuple[int, int]:
        now = time.time()
        db.execute(
            "INSERT INTO conversations (id, title, source, created_at, updated_at, lineup) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
            (turn.conversation_id, title_of(turn.prompt), turn.source, turn.started_at, now, _dumps(turn.lineup)),
        )
        (seq,) = db.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM turns WHERE conversation_id = ?", (turn.conversation_id,)
        ).fetchone()
        cursor = db.execute(
            f"INSERT INTO turns ({_TURN_COLUMNS.replace('id, ', '', 1)}) VALUES ({', '.join('?' * 20)})",
            (
                turn.conversation_id, seq, turn.system, turn.prompt, turn.answer, turn.status, turn.error,
                turn.error_kind, _dumps(turn.lineup), _dumps(turn.settings), turn.prompt_tokens,
                turn.completion_tokens, turn.total_tokens, turn.cost_usd, turn.priced_usd, turn.unpriced_calls,
                turn.started_at, turn.first_token, turn.duration, _dumps_or_null(turn.tool_calls),
            ),
        )  # fmt: skip
        turn_id = int(cursor.lastrowid or 0)
        db.executemany(
            f"INSERT INTO calls (turn_id, {', '.join(_CALL_FIELDS)}) VALUES (?, {', '.join('?' * len(_CALL_FIELDS))})",
            [(turn_id, *(_call_value(c, name) for name in _CALL_FIELDS)) for c in turn.calls],
        )
        return turn_id, seq

    # -------------------------------------------------------------- reading

    def latest_conversation_id(self) -> str | None:
        rows = self._query("SELECT conversation_id FROM turns ORDER BY id DESC LIMIT 1")
        return rows[0][0] if rows else None

    def resolve_conversation(self, ref: str) -> str:
        """A conversation id from the id or a unique prefix of it (case-insensitive)."""
        ref = ref.strip().upper()
        if not ref:  # "" is a prefix of every id: never "the only one" (a script's unset variable)
            raise StoreError("an empty id names no conversation: give a conversation's id or a prefix of it")
        rows = self._query("SELECT id FROM conversations WHERE id >= ? AND id < ? LIMIT 2", (ref, ref + "\U0010ffff"))
        if not rows:
            raise StoreError(f"no conversation {ref!r} in the log")
        if len(rows) > 1 and rows[0][0] != ref:
            raise StoreError(f"{ref!r} names more than one conversation: give more of its id")
        return str(rows[0][0])

    def turns(
        self,
        *,
        limit: int = 10,
        conversation_id: str | None = None,
        since: float | None = None,
        model: str | None = None,
        query: str | None = None,
        before: float | None = None,
    ) -> list[TurnRecord]:
        """The latest turns (newest first), or with `query` the best full-text matches; no calls."""
        where: list[str] = []
        params: list[Any] = []
        if conversation_id:
            where.append("t.conversation_id = ?")
            params.append(conversation_id)
        if since is not None:
            where.append("t.started_at >= ?")
            params.append(since)
        if before is not None:
            where.append("t.started_at < ?")
            params.append(before)
        if model:
            where.append("t.id IN (SELECT turn_id FROM calls WHERE spec = ? OR model = ?)")
            params += [model, model]
        columns = ", ".join(f"t.{c.strip()}" for c in _TURN_COLUMNS.split(","))
        sql = f"SELECT {columns}, c.title, c.source FROM turns t JOIN conversations c ON c.id = t.conversation_id"
        if query:
            match = fts_query(query)
            if not match:
                return []
            # Ranked (bm25) among the newest RANK_WINDOW matches: a word found in every turn
            # would otherwise be scored in all of them (0.3 s at 100,000 turns).
            inner = "SELECT f.rowid AS id, f.rank AS rank FROM turns_fts f JOIN turns t ON t.id = f.rowid WHERE turns_fts MATCH ?"
            inner += "".join(f" AND {w}" for w in where)
            inner += " ORDER BY f.rowid DESC LIMIT ?"
            sql = (
                f"SELECT {columns}, c.title, c.source FROM ({inner}) m JOIN turns t ON t.id = m.id "
                "JOIN conversations c ON c.id = t.conversation_id ORDER BY m.rank LIMIT ?"
            )
            params = [match, *params, RANK_WINDOW, limit]
        else:
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY t.id DESC LIMIT ?"
            params.append(limit)
        try:
            rows = self._query(sql, params)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot search the log: {exc}") from None
        return [_turn(row) for row in rows]

    def counts(self) -> tuple[int, int]:
        """(turns, conversations) in the log."""
        rows = self._query("SELECT (SELECT count(*) FROM turns), (SELECT count(*) FROM conversations)")
        return int(rows[0][0]), int(rows[0][1])

    def turn(self, turn_id: int | None = None) -> TurnRecord:
        """One turn with its calls (the latest without an id)."""
        columns = ", ".join(f"t.{c.strip()}" for c in _TURN_COLUMNS.split(","))
        sql = f"SELECT {columns}, c.title, c.source FROM turns t JOIN conversations c ON c.id = t.conversation_id"
        rows = (
            self._query(sql + " ORDER BY t.id DESC LIMIT 1")
            if turn_id is None
            else self._query(sql + " WHERE t.id = ?", (turn_id,))
        )
        if not rows:
            raise StoreError("the log has no turns yet" if turn_id is None else f"no turn {turn_id} in the log")
        turn = _turn(rows[0])
        turn.calls = self.calls(turn.id or 0)
        return turn

    def calls(self, turn_id: int) -> list[CallRecord]:
        rows = self._query(f"SELECT id, {', '.join(_CALL_FIELDS)} FROM calls WHERE turn_id = ? ORDER BY id", (turn_id,))
        calls = []
        for row in rows:
            values = {name: row[name] for name in _CALL_FIELDS}
            values["settings"] = _loads(values["settings"])
            values["tool_calls"] = _loads_or_none(values["tool_calls"])
            calls.append(CallRecord(**values, id=row["id"]))
        return calls

    def conversation(self, conversation_id: str, *, with_calls: bool = False) -> ConversationRecord:
        rows = self._query(
            "SELECT id, title, source, created_at, updated_at, lineup FROM conversations WHERE id = ?",
            (conversation_id,),
        )
        if not rows:
            raise StoreError(f"no conversation {conversation_id!r} in the log")
        row = rows[0]
        record = ConversationRecord(row[0], row[1], row[2], row[3], row[4], _loads(row[5]))
        columns = ", ".join(f"t.{c.strip()}" for c in _TURN_COLUMNS.split(","))
        turn_rows = self._query(
            f"SELECT {columns}, c.title, c.source FROM turns t JOIN conversations c ON c.id = t.conversation_id "
            "WHERE t.conversation_id = ? ORDER BY t.seq",
            (conversation_id,),
        )
        record.turns = [_turn(r) for r in turn_rows]
        if with_calls:
            for turn in record.turns:
                turn.calls = self.calls(turn.id or 0)
        return record

    def conversation_cost(self, conversation_id: str) -> CostLine:
        rows = self._query(
            "SELECT count(*), coalesce(sum(priced_usd), 0), coalesce(sum(unpriced_calls), 0), "
            "(SELECT count(*) FROM calls WHERE turn_id IN (SELECT id FROM turns WHERE conversation_id = ?)) "
            "FROM turns WHERE conversation_id = ?",
            (conversation_id, conversation_id),
        )
        turns, priced, unpriced, calls = rows[0]
        return CostLine(conversation_id, turns, calls, priced, unpriced)

    def cost(self, *, since: float | None = None, by: str | None = None) -> list[CostLine]:
        """Cost totals from the calls: one line, or one per day, model or conversation."""
        group = {
            None: "'total'",
            "day": "date(t.started_at, 'unixepoch', 'localtime')",
            "model": "k.spec",
            "conversation": "t.conversation_id",
        }
        if by not in group:
            raise StoreError(f"cannot total cost by {by!r} (day, model or conversation)")
        sql = (
            f"SELECT {group[by]} AS key, count(DISTINCT t.id), count(k.id), coalesce(sum(k.cost_usd), 0), "
            "sum(CASE WHEN k.id IS NOT NULL AND k.cost_usd IS NULL THEN 1 ELSE 0 END) "
            "FROM turns t LEFT JOIN calls k ON k.turn_id = t.id"
        )
        params: list[Any] = []
        if since is not None:
            sql += " WHERE t.started_at >= ?"
            params.append(since)
        sql += " GROUP BY key ORDER BY key"
        rows = self._query(sql, params)
        lines = [CostLine(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows if r[1]]
        return lines or ([CostLine("total", 0, 0, 0.0, 0)] if by is None else [])

    # -------------------------------------------------------------- deleting and backup

    def delete_turns(self, turn_ids: Iterable[int]) -> int:
        ids = list(turn_ids)
        if not ids:
            return 0
        with self.transaction() as db:
            marks = ",".join("?" * len(ids))
            count = db.execute(f"DELETE FROM turns WHERE id IN ({marks})", ids).rowcount
            db.execute("DELETE FROM conversations WHERE id NOT IN (SELECT DISTINCT conversation_id FROM turns)")
        self._purge()
        return count

    def delete_conversation(self, conversation_id: str) -> int:
        with self.transaction() as db:
            count = db.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,)).rowcount
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        self._purge()
        return count

    def delete_before(self, before: float) -> int:
        with self.transaction() as db:
            count = db.execute("DELETE FROM turns WHERE started_at < ?", (before,)).rowcount
            db.execute("DELETE FROM conversations WHERE id NOT IN (SELECT DISTINCT conversation_id FROM turns)")
        self._purge()
        return count

    def _purge(self) -> None:
        """Make a delete real: merge the search index (dropping deleted entries), zero the
        freed pages and fold the WAL back into the file, so no deleted text stays on disk."""
        with self.transaction() as db:
            # A conversation's title is its first prompt: keep it only while that turn exists.
            db.execute(
                "UPDATE conversations SET title = coalesce((SELECT substr(replace(prompt, char(10), ' '), 1, ?) "
                "FROM turns WHERE conversation_id = conversations.id ORDER BY seq LIMIT 1), '')",
                (TITLE_CHARS,),
            )
            db.execute("INSERT INTO turns_fts(turns_fts) VALUES ('optimize')")
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, target: Path | str) -> Path:
        """A consistent copy of the log (`VACUUM INTO`); the target must not exist."""
        target = Path(target)
        if target.exists():
            raise StoreError(f"{target} exists: give a new file name")
        with self._lock:
            try:
                self._db.execute("VACUUM INTO ?", (str(target),))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot back up the log to {target}: {exc}") from None
        return target

    def integrity(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    # -------------------------------------------------------------- prices

    def put_prices(self, entries: Iterable[CatalogueEntry], *, provider: str) -> int:
        """Replace one provider's catalogue."""
        rows = [(e.provider, e.model, e.input_per_m, e.output_per_m, e.source, e.fetched_at) for e in entries]
        with self.transaction() as db:
            db.execute("DELETE FROM prices WHERE provider = ?", (provider,))
            db.executemany("INSERT OR REPLACE INTO prices VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def prices(self, pairs: Iterable[tuple[str, str]] | None = None) -> dict[tuple[str, str], CatalogueEntry]:
        sql = "SELECT provider, model, input_per_m, output_per_m, source, fetched_at FROM prices"
        rows = self._query(sql)
        wanted = set(pairs) if pairs is not None else None
        return {(r[0], r[1]): CatalogueEntry(*r) for r in rows if wanted is None or (r[0], r[1]) in wanted}


def _call_value(call: CallRecord, name: str) -> Any:
    value = getattr(call, name)
    if name == "tool_calls":
        return _dumps_or_null(value)
    return _dumps(value) if name == "settings" else value


def _turn(row: sqlite3.Row) -> TurnRecord:
    return TurnRecord(
        id=row["id"],
        conversation_id=row["conversation_id"],
        seq=row["seq"],
        system=row["system"],
        prompt=row["prompt"],
        answer=row["answer"],
        status=row["status"],
        error=row["error"],
        error_kind=row["error_kind"],
        lineup=_loads(row["lineup"]),
        settings=_loads(row["settings"]),
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        total_tokens=row["total_tokens"],
        cost_usd=row["cost_usd"],
        priced_usd=row["priced_usd"],
        unpriced_calls=row["unpriced_calls"],
        started_at=row["started_at"],
        first_token=row["first_token"],
        duration=row["duration"],
        tool_calls=_loads_or_none(row["tool_calls"]),
        title=row["title"],
        source=row["source"],
    )
