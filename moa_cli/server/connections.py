"""Connection limits, through uvicorn's and h11's own settings, plus the one they lack.

    --max-connections     uvicorn's limit_concurrency: open connections plus requests in
                          flight; past it, uvicorn answers 503 (and we log one line)
    --keep-alive-timeout  uvicorn's timeout_keep_alive: an idle keep-alive connection closes
    --max-header-bytes    h11's max_incomplete_event_size: a bigger request head gets a 431/400
    --header-timeout      a connection must send complete request headers this many seconds
                          after it opens (or after its previous response, once it sends a byte):
                          h11 has no such limit, so `Protocol` (uvicorn's H11Protocol) closes
                          the connection when it passes, with one log line

The body's own deadline is an ASGI middleware (guard.py). The open-file limit is raised to
its hard limit at start-up, so --max-connections stays below it and accept() never fails.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from moa_cli.server import report
from moa_cli.server.options import ServeOptions

#: File descriptors kept free besides the connections: the listening socket, upstream
#: connections, the log database, model files.
SPARE_FILES = 256


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request headers."""

    header_timeout: ClassVar[float] = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        limit = self.limit_concurrency
        if (
            limit is not None
            and self.conn.their_state is h11.IDLE
            and (len(self.connections) >= limit or len(self.tasks) >= limit)
        ):
            report.refused("busy", f"503 for a request past --max-connections ({limit} connections and requests)")
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()  # a request's head has begun (or not): it is due
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timeout applies until the next byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            report.refused(
                "headers", f"closed a connection that sent no complete request within {self.header_timeout:g}s"
            )
            self.transport.close()


def raise_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit toward the hard one; the connections it leaves room for."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + SPARE_FILES
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, min(wanted, soft - SPARE_FILES))


def uvicorn_settings(options: ServeOptions, max_connections: int, keep_alive: float, max_header: int) -> dict[str, Any]:
    """The uvicorn.Config keywords for these limits."""
    Protocol.header_timeout = options.header_timeout
    return {
        "http": Protocol,
        "limit_concurrency": max_connections,
        "timeout_keep_alive": keep_alive,
        "h11_max_incomplete_event_size": max_header,
    }
