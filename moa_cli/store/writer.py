"""Writing turns off the event loop: one `TurnWriter` thread per log file, shared by every MoA
of the process; `flush_all` waits for what is queued (and runs at exit)."""

from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import Future
from pathlib import Path

from moa_cli.store.db import Store
from moa_cli.store.records import TurnRecord, db_path


class TurnWriter:
    """Writes turns on a thread of its own: `submit` only puts the record on a queue.

    `flush()` waits until every submitted turn is written; it runs at interpreter exit too,
    so a command that ends right after its turn still logs it.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[tuple[TurnRecord, Future[int]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._store: Store | None = None

    def submit(self, turn: TurnRecord) -> Future[int]:
        future: Future[int] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="moa-log-writer", daemon=True)
                self._thread.start()
        self._queue.put((turn, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                turn, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if self._store is None:
                        self._store = Store(self.path)
                    future.set_result(self._store.write_turn(turn))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(exc)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every turn submitted so far is written (or failed)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        self.flush()
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5)
        if self._store is not None:
            self._store.close()
            self._store = None


_writers: dict[Path, TurnWriter] = {}


_writers_lock = threading.Lock()


def writer_for(path: Path | str) -> TurnWriter:
    """The process's writer for a log file (one thread per file, shared by every MoA)."""
    key = Path(path).resolve()
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = TurnWriter(key)
        return writer


def flush_all() -> None:
    for writer in list(_writers.values()):
        writer.flush()


@atexit.register
def _close_writers() -> None:
    for writer in list(_writers.values()):
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - at exit there is no one left to tell
            pass


def open_store(data_dir: Path, *, create: bool = True) -> Store:
    """The log under `data_dir`, with any writes still queued in this process flushed first."""
    path = db_path(data_dir)
    writer = _writers.get(path.resolve())
    if writer is not None:
        writer.flush()
    return Store(path, create=create)
