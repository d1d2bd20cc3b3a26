"""A cap on the response bodies nothing else bounds: error bodies and JSON bodies.

The SDKs read an error response's whole body into memory to build its message, and a JSON
response's whole body to parse it (the model list): a server that answers with a gigabyte
would grow the process by a gigabyte. Streamed answers are bounded per call by chat_api's
byte budget; these are bounded here, at the transport, for both SDKs: together's runs on
httpx, openai's 3.x on httpx2, a fork with the same transport API, so the wrapper is built
for whichever module the SDK uses.

A body past its cap is cut there (the connection is then closed, not reused): an error's
message is cut to a line anyway, and a cut JSON body fails to parse, as `bad_response`.
Requests sent through a proxy from the environment (HTTPS_PROXY) use httpx's proxy
transport and are not capped.

`cap(response, limit)` is the same cap for one response, as an httpx response hook does it
(before the body is read): `refuse=True` raises `BodyTooLarge` instead of cutting, for a
caller that must not take a cut body for a whole one (`moa models --refresh-prices`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

#: An error body past this is cut: its message is shown as one line of at most 200 characters.
ERROR_BODY_LIMIT = 64 * 1024
#: A JSON body (a model list, a whole completion) past this is cut. OpenRouter's model list,
#: among the largest, is about 1.5 MB.
JSON_BODY_LIMIT = 16 * 1024 * 1024


class BodyTooLarge(Exception):
    """A body longer than its cap, with `refuse`: what was read is dropped, the rest never read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response is larger than {limit / 2**20:g} MiB (read no further)")
        self.limit = limit


def body_limit(status: int, content_type: str) -> int | None:
    """The cap for a response, or None for an event stream (chat_api's budget bounds it)."""
    if status >= 400:
        return ERROR_BODY_LIMIT
    if content_type.split(";")[0].strip().lower() == "text/event-stream":
        return None
    return JSON_BODY_LIMIT


@functools.cache
def _classes(lib: ModuleType) -> tuple[type, type]:
    """The capped stream and transport classes for `lib` (httpx or httpx2), made once each."""

    class CappedStream(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, limit: int, refuse: bool = False) -> None:
            self._inner = inner
            self._limit = limit
            self._refuse = refuse

        async def __aiter__(self) -> AsyncIterator[bytes]:
            left = self._limit
            async for chunk in self._inner:
                if len(chunk) > left:
                    if self._refuse:
                        raise BodyTooLarge(self._limit)
                    if left:
                        yield chunk[:left]
                    return  # the rest is never read: aclose() drops the connection
                left -= len(chunk)
                yield chunk
                if not left and not self._refuse:
                    return  # cut at the cap, exactly: as above

        async def aclose(self) -> None:
            await self._inner.aclose()

    class CappedTransport(lib.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            response = await self._inner.handle_async_request(request)
            limit = body_limit(response.status_code, response.headers.get("content-type", ""))
            if limit is not None:
                response.stream = CappedStream(response.stream, limit)
            return response

        async def __aenter__(self) -> Any:
            await self._inner.__aenter__()
            return self

        async def __aexit__(self, *exc: Any) -> None:
            await self._inner.__aexit__(*exc)

        async def aclose(self) -> None:
            await self._inner.aclose()

    return CappedStream, CappedTransport


def cap(response: Any, limit: int, *, refuse: bool = False) -> None:
    """Cap `response`'s body at `limit` bytes, in place, before it is read (from an httpx or
    httpx2 response hook): cut there as the transport cuts, or with `refuse` raise
    BodyTooLarge from the read once the body is longer."""
    lib = importlib.import_module(type(response).__module__.partition(".")[0])
    response.stream = _classes(lib)[0](response.stream, limit, refuse)


#: Connections per provider client. The together SDK's default (100, 20 kept alive) makes a
#: server's 50 concurrent turns of 4 references queue for a connection before any request is
#: sent (the openai SDK's own default is already 1000 / 100).
CONNECTION_LIMITS = {"max_connections": 1000, "max_keepalive_connections": 200, "keepalive_expiry": 30.0}


def capped_transport(client_class: type) -> Any:
    """A transport for an SDK's httpx client class (`DefaultAsyncHttpxClient`): its own HTTP
    library's (httpx or httpx2, found from the class), with moa's connection limits and the
    body caps above."""
    base = next(c for c in client_class.__mro__ if c.__name__ == "AsyncClient")
    lib = importlib.import_module(base.__module__.partition(".")[0])
    inner = lib.AsyncHTTPTransport(limits=lib.Limits(**CONNECTION_LIMITS))
    if lib.__name__ == "httpx":  # httpcore 1.0's pool is quadratic in connections (pool.py);
        from moa_cli.providers.pool import linear  # httpx2's httpcore2 already assigns in one pass

        inner = linear(inner)
    return _classes(lib)[1](inner)
