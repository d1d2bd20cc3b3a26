"""The conversation log: one SQLite file (`logs.db` under the data dir), stdlib `sqlite3` only.

    records.py   what the log holds (CallRecord, TurnRecord, ...), its file names and ids
    schema.py    the migrations
    db.py        Store: one connection, migrations applied, a turn written in one transaction,
                 the queries (see its docstring for the tables)
    writer.py    TurnWriter: the writes on a thread of their own; flush_all; open_store

This face re-exports their public names: `from moa_cli.store import Store` is the way in.
"""

from moa_cli.store.db import Store
from moa_cli.store.records import (
    BUSY_TIMEOUT_MS,
    DB_NAME,
    EXCHANGE_KEY,
    OFF_MARKER,
    RANK_WINDOW,
    STATUSES,
    TITLE_CHARS,
    CallRecord,
    CatalogueEntry,
    ConversationRecord,
    CostLine,
    StoreError,
    TurnRecord,
    answered_turns,
    db_path,
    fts_query,
    logging_off_marker,
    new_conversation_id,
    title_of,
)
from moa_cli.store.schema import MIGRATIONS, SCHEMA_VERSION, statements
from moa_cli.store.writer import TurnWriter, flush_all, open_store, writer_for

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DB_NAME",
    "EXCHANGE_KEY",
    "MIGRATIONS",
    "OFF_MARKER",
    "RANK_WINDOW",
    "SCHEMA_VERSION",
    "STATUSES",
    "TITLE_CHARS",
    "CallRecord",
    "CatalogueEntry",
    "ConversationRecord",
    "CostLine",
    "Store",
    "StoreError",
    "TurnRecord",
    "TurnWriter",
    "answered_turns",
    "db_path",
    "flush_all",
    "fts_query",
    "logging_off_marker",
    "new_conversation_id",
    "open_store",
    "statements",
    "title_of",
    "writer_for",
]
