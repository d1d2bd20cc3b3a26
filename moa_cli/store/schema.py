"""The log's schema: ordered migrations, each applied once (`schema_migrations` records them)."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "conversations, turns, calls, search, prices",
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            lineup TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX conversations_updated ON conversations(updated_at);
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            system TEXT,
            prompt TEXT NOT NULL,
            answer TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'cancelled')),
            error TEXT,
            error_kind TEXT,
            lineup TEXT NOT NULL DEFAULT '{}',
            settings TEXT NOT NULL DEFAULT '{}',
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            cost_usd REAL,
            priced_usd REAL NOT NULL DEFAULT 0,
            unpriced_calls INTEGER NOT NULL DEFAULT 0,
            started_at REAL NOT NULL,
            first_token REAL,
            duration REAL,
            UNIQUE (conversation_id, seq)
        );
        CREATE INDEX turns_started ON turns(started_at);
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
            layer INTEGER NOT NULL,
            slot INTEGER NOT NULL,
            role TEXT NOT NULL,
            spec TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            text TEXT,
            error TEXT,
            error_kind TEXT,
            status INTEGER,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            price_input REAL,
            price_output REAL,
            price_source TEXT,
            cost_usd REAL,
            started REAL,
            first_token REAL,
            duration REAL
        );
        CREATE INDEX calls_turn ON calls(turn_id);
        CREATE INDEX calls_spec ON calls(spec);
        CREATE INDEX calls_model ON calls(model);
        CREATE VIRTUAL TABLE turns_fts USING fts5(
            prompt, answer, content='turns', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN
            INSERT INTO turns_fts(rowid, prompt, answer) VALUES (new.id, new.prompt, coalesce(new.answer, ''));
        END;
        CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN
            INSERT INTO turns_fts(turns_fts, rowid, prompt, answer)
                VALUES ('delete', old.id, old.prompt, coalesce(old.answer, ''));
        END;
        CREATE TRIGGER turns_fts_update AFTER UPDATE OF prompt, answer ON turns BEGIN
            INSERT INTO turns_fts(turns_fts, rowid, prompt, answer)
                VALUES ('delete', old.id, old.prompt, coalesce(old.answer, ''));
            INSERT INTO turns_fts(rowid, prompt, answer) VALUES (new.id, new.prompt, coalesce(new.answer, ''));
        END;
        CREATE TABLE prices (
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            input_per_m REAL NOT NULL,
            output_per_m REAL NOT NULL,
            source TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            PRIMARY KEY (provider, model)
        );
        """,
    ),
    (
        2,
        "tool calls of turns and calls",
        """
        ALTER TABLE turns ADD COLUMN tool_calls TEXT;
        ALTER TABLE calls ADD COLUMN tool_calls TEXT;
        """,
    ),
]


SCHEMA_VERSION = MIGRATIONS[-1][0]


def statements(script: str) -> list[str]:
    """Split a migration script into statements (triggers keep their inner semicolons)."""
    out: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                out.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        out.append(buffer.strip())
    return out
