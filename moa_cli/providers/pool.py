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
- at most once per `SWEEP_SECONDS`, a sweep drops closed connections, closes expired ones
  (`has_expired()`: a readability check per idle socket) and the idle ones beyond
  `max_keepalive_connections` (counting idle ones);
- queued requests take the first available connection for their origin (a connection
  given out moves to the back of the list, so free ones gather at the front), each connection
  once per pass (an HTTP/1.1 connection serves one request at a time), checked for expiry
  first, so a connection the server closed is never handed out (as before); else a new
  connection while under `max_connections`, else the place of an idle one;
- when no request waits (a response just ended), nothing else is done.

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
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._sweep(closing)
        queued = [request for request in self._requests if request.is_queued()]
        if not queued:
            return closing  # a response ended and no one waits
        connections = self._connections
        taken: set[int] = set()
        for pool_request in queued:
            origin = pool_request.request.url.origin
            connection = self._take(connections, taken, origin, closing)
            if connection is not None:
                # To the back: the connections given out longest ago, the first to be free
                # again, stay in front, where the next request's scan starts.
                connections.remove(connection)
                connections.append(connection)
            else:
                if len(connections) >= self._max_connections:
                    spare = next((c for c in connections if id(c) not in taken and c.is_idle()), None)
                    if spare is None:
                        continue  # stays queued until a connection frees up
                    connections.remove(spare)
                    closing.append(spare)
                connection = self.create_connection(origin)
                connections.append(connection)
            taken.add(id(connection))
            pool_request.assign_to_connection(connection)
        if closing:
            gone = set(map(id, closing))
            connections[:] = [c for c in connections if id(c) not in gone]
        return closing

    def _sweep(self, closing: list[Any]) -> None:
        """Drop closed connections, close expired ones and the idle ones past the keep-alive limit."""
        kept: list[Any] = []
        idle: list[Any] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.has_expired():
                closing.append(connection)
                continue
            kept.append(connection)
            if connection.is_idle():
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            gone = set(map(id, idle[:surplus]))
            closing.extend(idle[:surplus])
            kept = [c for c in kept if id(c) not in gone]
        self._connections[:] = kept

    @staticmethod
    def _take(connections: list[Any], taken: set[int], origin: Any, closing: list[Any]) -> Any:
        """The first available connection for `origin` not yet given out in this pass, checked
        for expiry (a server-closed idle connection is closed, not reused)."""
        for connection in connections:
            if id(connection) in taken or not connection.is_available() or not connection.can_handle_request(origin):
                continue
            if connection.is_idle() and connection.has_expired():
                taken.add(id(connection))
                closing.append(connection)
                continue
            return connection
        return None


def transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport (proxies from the environment still get their own) with `LinearPool`."""
    return linear(httpx.AsyncHTTPTransport(limits=limits))


def linear(result: httpx.AsyncHTTPTransport) -> httpx.AsyncHTTPTransport:
    """`result` with its pool made a `LinearPool`, when httpcore's internals are the known ones."""
    pool = getattr(result, "_pool", None)
    if type(pool) is httpcore.AsyncConnectionPool and all(hasattr(pool, name) for name in _NEEDED):
        pool.__class__ = LinearPool  # same state, the one method replaced
    return result
