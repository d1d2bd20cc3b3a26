"""A real `moa serve` subprocess on a free port, for the tests and bench/bench_serve.py.

Its stdout and stderr are read on threads (so the pipes never fill) into `lines`; the port
comes from the "running on" line (or is given, and /health polled). `stop()` sends SIGTERM (a drain), then kills after 15 s.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent.parent
_RUNNING = re.compile(r"moa serve: running on http://127\.0\.0\.1:(\d+)")


class ServeProcess:
    def __init__(
        self, args: list[str], env: dict[str, str], *, start_timeout: float = 30.0, port: int | None = None
    ) -> None:
        """`port`: listen there and wait for /health (for `--quiet`, which prints no start-up line)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moa_cli", "serve", "--port", str(port or 0), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()
        if port is not None:
            self.port = port
            threading.Thread(target=self._poll_health, args=(start_timeout,), daemon=True).start()
        if not self._ready.wait(start_timeout):
            self.stop()
            raise RuntimeError("moa serve did not start:\n" + self.log)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            match = _RUNNING.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    def _poll_health(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    self._ready.set()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
