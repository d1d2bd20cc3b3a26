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

MAX_GROUP = 64  # turns the writer thread puts in one transaction, when that many are waiting


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
            items = [self._queue.get()]
            # The turns that ended meanwhile (a server's, a batch's) go in the same transaction.
            while items[-1] is not None and len(items) < MAX_GROUP:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                group = [(turn, future) for turn, future in (i for i in items if i is not None)]
                self._write([(t, f) for t, f in group if f.set_running_or_notify_cancel()])
            finally:
                for _ in items:
                    self._queue.task_done()
            if items[-1] is None:
                return

    def _write(self, group: list[tuple[TurnRecord, Future[int]]]) -> None:
        if not group:
            return
        try:
            if self._store is None:
                self._store = Store(self.path)
            ids = self._store.write_turns([turn for turn, _ in group])
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            if len(group) > 1:  # one turn's failure is its own: write them one by one
                for one in group:
                    self._write([one])
                return
            group[0][1].set_exception(exc)
            return
        for (_, future), turn_id in zip(group, ids, strict=True):
            future.set_result(turn_id)

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
_given: dict[Path, TurnWriter] = {}  # absolute paths as given -> their writer


_writers_lock = threading.Lock()


def writer_for(path: Path | str) -> TurnWriter:
    """The process's writer for a log file (one thread per file, shared by every MoA)."""
    given = Path(path)
    with _writers_lock:
        writer = _given.get(given)  # every turn asks: resolving costs a syscall per directory
    if writer is not None:
        return writer
    key = given.resolve()
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = TurnWriter(key)
        if given.is_absolute():
            _given[given] = writer
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
