"""httpx transports whose connection pool hands out connections in linear time.

httpcore 1.0's `AsyncConnectionPool._assign_requests_to_connections` runs whenever a
request enters or leaves the pool (twice per call). For every idle connection it lists
all the connections again (`len([c.is_idle() for c in connections])`, which counts them
all, not the idle ones, so past `max_keepalive_connections` connections every idle one is
closed), for every queued request it lists every available and every idle connection,
and it asks each idle HTTP/1.1 connection whether its socket is readable (through anyio's
extra attributes: a dict of lambdas built per question). With the 250-odd connections of
`moa serve` at 50 concurrent turns that was about 60% of the process's CPU (py-spy,
issue 22), and a third of `moa batch`'s.

`LinearPool` keeps httpcore's contract and does one pass:
- when no request waits (a response just ended) nothing is done until the next sweep;
- closed connections are dropped; the expensive `has_expired()` (a readability check per
  idle socket) runs for every connection at most once per `SWEEP_SECONDS`, and always on
  the idle connection about to be reused, so a connection the server closed is never
  handed out (as before);
- idle connections beyond `max_keepalive_connections` are closed (counting idle ones);
- queued requests take an available connection for their origin, each connection once per
  pass (an HTTP/1.1 connection serves one request at a time), else a new connection while
  under `max_connections`, else the place of an idle one.

The together SDK's client is an httpx (httpcore 1.0) client; the openai SDK's is an httpx2
one, whose httpcore2 pool already assigns in one pass, so only together's uses this.

`transport(limits=...)` builds an `httpx.AsyncHTTPTransport` with this pool, or a plain one
when httpcore's internals are not the ones this was written against (then nothing changes).
"""

from __future__ import annotations

import time
from typing import Any

import httpcore
import httpx

#: How often every connection's expiry (a socket readability check each) is looked at.
SWEEP_SECONDS = 1.0

_NEEDED = ("_connections", "_requests", "_max_connections", "_max_keepalive_connections", "create_connection")


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with a linear `_assign_requests_to_connections` (see the module docstring)."""

    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[Any]:
        closing: list[Any] = []
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if not sweep and not any(request.is_queued() for request in self._requests):
            # A response closed and no one waits: closed and surplus idle connections can
            # wait for the next sweep (a closed one is never handed out, see _take).
            return closing
        if sweep:
            self._next_sweep = now + SWEEP_SECONDS
        kept: list[Any] = []
        idle: list[Any] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            if sweep and connection.has_expired():
                closing.append(connection)
                continue
            kept.append(connection)
            if connection.is_idle():
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped, idle = idle[:surplus], idle[surplus:]
            gone = set(map(id, dropped))
            kept = [c for c in kept if id(c) not in gone]
            closing.extend(dropped)

        queued = [request for request in self._requests if request.is_queued()]
        if queued:
            available = [c for c in kept if c.is_available()]
            taken: set[int] = set()
            for pool_request in queued:
                origin = pool_request.request.url.origin
                connection = self._take(available, taken, origin, closing)
                if connection is None:
                    if len(kept) < self._max_connections:
                        connection = self.create_connection(origin)
                        kept.append(connection)
                    else:
                        spare = next((c for c in idle if id(c) not in taken and c in kept), None)
                        if spare is None:
                            continue  # stays queued until a connection frees up
                        kept.remove(spare)
                        closing.append(spare)
                        connection = self.create_connection(origin)
                        kept.append(connection)
                taken.add(id(connection))
                pool_request.assign_to_connection(connection)
            if closing:
                gone = set(map(id, closing))
                kept = [c for c in kept if id(c) not in gone]
        self._connections[:] = kept
        return closing

    @staticmethod
    def _take(available: list[Any], taken: set[int], origin: Any, closing: list[Any]) -> Any:
        """The first available connection for `origin` not yet given out in this pass, checked
        for expiry (a server-closed idle connection is closed, not reused)."""
        for connection in available:
            if id(connection) in taken or not connection.can_handle_request(origin):
                continue
            if connection.is_idle() and connection.has_expired():
                taken.add(id(connection))
                closing.append(connection)
                continue
            return connection
        return None


def transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport (proxies from the environment still get their own) with `LinearPool`."""
    result = httpx.AsyncHTTPTransport(limits=limits)
    pool = getattr(result, "_pool", None)
    if type(pool) is httpcore.AsyncConnectionPool and all(hasattr(pool, name) for name in _NEEDED):
        pool.__class__ = LinearPool  # same state, the one method replaced
    return result
