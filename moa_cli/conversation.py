"""The conversation the user saw, and what a turn sends to the models.

A conversation is an optional system prompt plus the exchanges so far: each user prompt
with the final (aggregated) answer, which is what the user read. The reference answers
are kept with each exchange for `/proposals` and the JSON transcript, but they are never
sent back to the models: the next turn sees only the conversation the user saw.

A turn is added only once it has succeeded, with its record (recorder.py: the turn as the
log holds it, or would with the log off), which is what its transcript is written from: the
same document `moa logs export` writes for it (transcript.py). The REPL also takes a
`snapshot()` before a turn and `restore()`s it if the turn fails or is cancelled, so no half
turn survives.

Stdlib only, and files.py (no rich, no prompt_toolkit): the REPL, the server and tests can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moa_cli import transcript
from moa_cli.files import write_atomic
from moa_cli.transcript import TRANSCRIPT_SUFFIXES
from moa_cli.types import Message, TurnResult

if TYPE_CHECKING:
    from moa_cli.store import TurnRecord


@dataclass(frozen=True, slots=True)
class Exchange:
    """One answered turn: the user's prompt and the aggregator's final answer (as sent to the
    models), the turn's result (for /proposals and /usage) and its record (for /save)."""

    prompt: str
    answer: str
    result: TurnResult
    record: TurnRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable copy of a conversation's state, for `Conversation.restore`."""

    system: str | None
    exchanges: tuple[Exchange, ...]


class Conversation:
    """The messages the user saw, turn by turn.

    With `multi_turn` off each turn is sent on its own (system prompt plus the new prompt),
    but the exchanges are still recorded for `/proposals`, `/retry` and `/save`.
    """

    def __init__(self, system: str | None = None, *, multi_turn: bool = True) -> None:
        self.system = system or None
        self.multi_turn = multi_turn
        self._exchanges: list[Exchange] = []

    def __len__(self) -> int:
        return len(self._exchanges)

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        return tuple(self._exchanges)

    @property
    def last(self) -> Exchange | None:
        return self._exchanges[-1] if self._exchanges else None

    def messages(self) -> list[Message]:
        """The whole conversation as chat messages (system first, if any)."""
        messages: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for exchange in self._exchanges:
            messages.append({"role": "user", "content": exchange.prompt})
            messages.append({"role": "assistant", "content": exchange.answer})
        return messages

    def messages_for(self, prompt: str) -> list[Message]:
        """What the models are sent for a new turn: the history (if multi-turn) and `prompt`."""
        if self.multi_turn:
            messages = self.messages()
        else:
            messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        return messages

    def add(self, prompt: str, result: TurnResult, record: TurnRecord) -> Exchange:
        """Record a finished turn, with its record (recorder.Recording.record, or the log's)."""
        exchange = Exchange(prompt, result.answer, result, record)
        self._exchanges.append(exchange)
        return exchange

    def pop(self) -> Exchange | None:
        """Remove and return the last exchange (for `/retry`)."""
        return self._exchanges.pop() if self._exchanges else None

    def clear(self) -> None:
        """Forget every exchange; the system prompt stays."""
        self._exchanges.clear()

    def snapshot(self) -> Snapshot:
        return Snapshot(self.system, tuple(self._exchanges))

    def restore(self, snapshot: Snapshot) -> None:
        self.system = snapshot.system
        self._exchanges = list(snapshot.exchanges)

    # ------------------------------------------------------------------ transcripts

    def transcript(self, fmt: str) -> str:
        """The transcript, "md" or "json": what `moa logs export` writes for this conversation
        (transcript.document). Its turns have their numbers once the log's writer has written
        them (`store.flush_all()` first); a turn without is "not logged"."""
        return transcript.document(transcript.chat_conversation([e.record for e in self._exchanges]), fmt)

    def save(self, path: Path, *, overwrite: bool = False) -> Path:
        """Write the transcript; the format follows the suffix (.md or .json).

        The file appears whole or not at all: the text goes to a temporary file in the same
        directory, which then takes the file's name. An existing file is left alone unless
        `overwrite` (FileExistsError). A bad suffix, or no turn yet, is a ValueError; other
        failures, OSError.
        """
        suffix = path.suffix.lower()
        if suffix not in TRANSCRIPT_SUFFIXES:
            raise ValueError("the file name must end in .md or .json")
        text = self.transcript("json" if suffix == ".json" else "md")
        write_new_file(path, text.encode("utf-8"), overwrite=overwrite)
        return path


def write_new_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` atomically; FileExistsError if it exists and not `overwrite`
    (files.write_atomic: a name taken even a moment ago is never replaced)."""
    write_atomic(path, data, what=None, overwrite=overwrite)
