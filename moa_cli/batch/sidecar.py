"""The progress file next to the output (`OUTPUT.moa-progress`): a header, then one outcome per item;
and where the side files of OUTPUT are (the progress file, the manifest)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moa_cli.batch.formats import BatchInputError
from moa_cli.batch.outcome import Outcome

SIDECAR_SUFFIX = ".moa-progress"
MANIFEST_SUFFIX = ".moa-manifest.json"


SIDECAR_VERSION = 1
REUSE_PART = "reuse_proposals_sha256"  # in the fingerprint of a re-aggregation only


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


class Sidecar:
    """The append-only progress file: a header line, then one outcome per finished item.

    Appends are flushed and fsynced, so whatever a crash leaves is every finished item
    plus at most one torn last line, which `open` drops. A second process on the same
    output is refused (an exclusive lock, where the platform has one).

    `write` (on the event loop) does the fsync on a thread, and outcomes that finish while
    one is under way share the next fsync (a group commit): at 2-3 ms per fsync, one per
    item on the loop would cap a run at a few hundred items a second and stall every stream.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self._file: Any = None
        self._io = threading.Lock()  # one writer at a time; close() waits for a write on a thread
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writing = False

    def open(self, *, restart: bool) -> dict[str, Outcome]:
        """Lock and read the sidecar (or start one); the outcomes it holds, latest per id."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open for the run
        _lock(self._file, self.path)
        self._file.seek(0)
        data = self._file.read()
        outcomes: dict[str, Outcome] = {}
        if data and not restart:
            try:
                outcomes = self._read(data)
            except BaseException:
                self.close()
                raise
        elif data:  # --restart: start over
            self._file.truncate(0)
            data = b""
        if data and not data.endswith(b"\n"):  # a torn last line: drop it before appending
            self._file.truncate(data.rfind(b"\n") + 1)
        if not data:
            self._append(self.header)
        return outcomes

    def _read(self, data: bytes) -> dict[str, Outcome]:
        lines = data.split(b"\n")
        complete, torn = lines[:-1], lines[-1]  # `torn` is b"" when the file ends with a newline
        del torn  # an unfinished last write: that item was in flight
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("moa_batch") != SIDECAR_VERSION:
            raise BatchInputError(
                f"{self.path} is not a moa batch progress file this version can read; move it away or use --restart"
            )
        if header.get("fingerprint") != self.header["fingerprint"]:
            old, new = header.get("parts") or {}, self.header["parts"]
            if (REUSE_PART in old) != (REUSE_PART in new):
                made = "a re-aggregation (--reuse-proposals)" if REUSE_PART in old else "a full run"
                raise BatchInputError(
                    f"{self.path} holds answers made by {made}; rerun the same command to resume, "
                    "or use --restart to discard them"
                )
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["fingerprint"]
            raise BatchInputError(
                f"{self.path} holds answers made with a different {', '.join(changed)}; "
                "rerun with the same settings and input to resume, or use --restart to discard them"
            )
        outcomes: dict[str, Outcome] = {}
        for number, line in enumerate(complete[1:], 2):
            try:
                outcome = Outcome.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                raise BatchInputError(f"{self.path}:line {number} is damaged; use --restart to start over") from None
            outcomes[outcome.id] = outcome
        return outcomes

    def _append(self, record: Mapping[str, Any]) -> None:
        self._write_durably(json.dumps(record).encode("ascii") + b"\n")

    def _write_durably(self, data: bytes) -> None:
        with self._io:
            if self._file is None:
                raise ValueError("the sidecar is closed")
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def append(self, outcome: Outcome) -> None:
        """Append one outcome now (blocking)."""
        self._append(outcome.to_json())

    async def write(self, outcome: Outcome) -> None:
        """Append one outcome durably without blocking the loop; returns once it is on disk."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((json.dumps(outcome.to_json()).encode("ascii") + b"\n", future))
        if not self._writing:
            self._writing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    try:
                        await asyncio.to_thread(self._write_durably, b"".join(data for data, _ in batch))
                    except Exception as exc:  # noqa: BLE001 - every waiter gets the error (disk full...)
                        for _, waiter in batch:
                            if not waiter.done():
                                waiter.set_exception(exc)
                        continue
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_result(None)
            finally:
                self._writing = False
        await future

    def close(self) -> None:
        """Write what is still queued (items answered while a write was cancelled, by Ctrl-C or
        a signal: they were paid for), then close and release the lock."""
        pending, self._pending = self._pending, []
        if pending and self._file is not None:
            try:
                self._write_durably(b"".join(data for data, _ in pending))
            except (OSError, ValueError):
                pass  # the disk refused: those items are asked again on resume
        with self._io:
            if self._file is not None:
                self._file.close()  # releases the lock
                self._file = None


def _lock(file: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise BatchInputError(f"another moa batch is writing {path}") from None
