"""Connection limits, through uvicorn's and h11's own settings, plus the one they lack.

    --max-connections     uvicorn's limit_concurrency: open connections plus requests in
                          flight, counted as uvicorn counts them; past it `Protocol` answers
                          503 in OpenAI's shape with Retry-After (errors.too_many_connections),
                          not uvicorn's plain-text one, and logs one line (throttled)
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
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from moa_cli.server import errors, report
from moa_cli.server.guard import send_error
from moa_cli.server.options import ServeOptions

#: File descriptors kept free besides the connections: the listening socket, upstream
#: connections, the log database, model files.
SPARE_FILES = 256


class Refusal:
    """The answer to a request past --max-connections: a 503 in OpenAI's shape, then the
    connection closes; one log line (at most one a second, with the count of the rest)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.error = errors.too_many_connections(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report.refused("busy", f"503 for a request past --max-connections ({self.limit} connections and requests)")
        await send_error(send, self.error)


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request headers, and its own refusal
    past --max-connections.

    uvicorn decides the refusal in `handle_events`, as a request's head arrives: past
    `limit_concurrency` it runs its plain-text 503 app, else `self.app`. Here its
    `limit_concurrency` is None and `app` is a property that makes the same decision at the
    same moment (uvicorn reads `self.app` once per request, before it counts the request's
    task), with the same counts; past the limit it is `Refusal`.
    """

    header_timeout: ClassVar[float] = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit, self.limit_concurrency = self.limit_concurrency, None  # uvicorn's own refusal never runs
        self._refusal = Refusal(limit) if limit is not None else None

    @property
    def app(self) -> ASGIApp:
        """What runs the request whose head has just arrived: moa's app, or the refusal."""
        refusal = self._refusal
        if refusal is not None and (len(self.connections) >= refusal.limit or len(self.tasks) >= refusal.limit):
            return refusal
        return self._app

    @app.setter
    def app(self, value: ASGIApp) -> None:  # uvicorn's __init__ sets it: config.loaded_app
        self._app = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
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
