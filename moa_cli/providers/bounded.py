"""A cap on the response bodies nothing else bounds: error bodies and JSON bodies.

The SDKs read an error response's whole body into memory to build its message, and a JSON
response's whole body to parse it (the model list): a server that answers with a gigabyte
would grow the process by a gigabyte. Streamed answers are bounded per call by chat_api's
byte budget; these are bounded here, by a response hook on the SDK's client (before the body
is read), for both SDKs: together's runs on httpx, openai's 3.x on httpx2, a fork with the
same API, so the capped stream is built for whichever module the response comes from. A hook,
not a transport: it holds for the proxy transports httpx builds from the environment too.

A body past its cap is cut there (the connection is then closed, not reused): an error's
message is cut to a line anyway, and a cut JSON body fails to parse, as `bad_response`.

`cap(response, limit)` is the same cap for one response: `refuse=True` raises `BodyTooLarge`
instead of cutting, for a caller that must not take a cut body for a whole one
(`moa models --refresh-prices`).
"""

from __future__ import annotations

import functools
import importlib
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
def _capped_stream(lib: ModuleType) -> type:
    """The capped stream class for `lib` (httpx or httpx2), made once each."""

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

    return CappedStream


@functools.cache
def _decoded_stream(lib: ModuleType) -> type:
    """A gzip or deflate body decoded here, never more than DECODED_PIECE bytes at a time."""

    class DecodedStream(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, encoding: str) -> None:
            self._inner = inner
            self._encoding = encoding
            self._raw = encoding == "deflate"  # deflate may come without its zlib header

        async def __aiter__(self) -> AsyncIterator[bytes]:
            decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header
            started = False
            async for chunk in self._inner:
                data = chunk
                while True:
                    try:
                        out = decoder.decompress(data, DECODED_PIECE)
                    except zlib.error as exc:
                        if started or not self._raw:
                            raise lib.DecodingError(f"the body is not valid {self._encoding}: {exc}") from None
                        decoder, self._raw = zlib.decompressobj(-zlib.MAX_WBITS), False  # raw deflate
                        continue
                    started = True
                    data = decoder.unconsumed_tail
                    if out:
                        yield out
                    if not data and len(out) < DECODED_PIECE:
                        break  # this chunk is all out (a full piece may have more behind it)
            if tail := decoder.flush():
                yield tail

        async def aclose(self) -> None:
            await self._inner.aclose()

    return DecodedStream


#: A compressed body is decoded in pieces of this size: a small gzip body cannot become one
#: huge allocation (a 64 KiB chunk of zeros decodes to 64 MiB).
DECODED_PIECE = 64 * 1024
#: The encodings decoded (and so capped) here; the SDKs' clients ask for no others.
DECODED = ("gzip", "x-gzip", "deflate")


def cap(response: Any, limit: int | None, *, refuse: bool = False) -> None:
    """Cap `response`'s body at `limit` bytes *as decoded*, in place, before it is read (from
    an httpx or httpx2 response hook): cut there, or with `refuse` raise BodyTooLarge from the
    read once the body is longer. A gzip or deflate body is decoded here, in bounded pieces,
    so the cap counts what it decodes to, not its compressed size (a gzip bomb stops at the
    cap); `limit=None` only decodes in pieces (an event stream: chat_api's budget bounds it)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if limit is None and encoding not in DECODED:
        return  # a plain event stream, the common case: nothing to do per response
    lib = importlib.import_module(type(response).__module__.partition(".")[0])
    stream = response.stream
    if encoding in DECODED:
        stream = _decoded_stream(lib)(stream, "gzip" if encoding == "x-gzip" else encoding)
        del response.headers["content-encoding"]  # decoded here: the client must not decode it again
    if limit is not None:
        stream = _capped_stream(lib)(stream, limit, refuse)
    response.stream = stream


#: Connections per provider client. The together SDK's default (100, 20 kept alive) makes a
#: server's 50 concurrent turns of 4 references queue for a connection before any request is
#: sent (the openai SDK's own default is already 1000 / 100).
CONNECTION_LIMITS = {"max_connections": 1000, "max_keepalive_connections": 200, "keepalive_expiry": 30.0}


def environment_proxies() -> bool:
    """Whether the environment names a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, either case),
    read as httpx reads it (urllib's getproxies)."""
    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


async def cap_response(response: Any) -> None:
    """An httpx (or httpx2) response hook: the cap for this response's kind (`body_limit`),
    set before the body is read."""
    cap(response, body_limit(response.status_code, response.headers.get("content-type", "")))


def sdk_http_client(client_class: type, hooks: Sequence[Callable[[Any], Awaitable[None]]] = ()) -> Any:
    """An SDK's httpx client (`DefaultAsyncHttpxClient`, on httpx or httpx2) with moa's connection
    limits and the body caps above (a response hook, so they hold for every transport).

    With no proxy in the environment the transport is moa's own (the linear pool, for httpx).
    With one, httpx builds its proxy transports itself, honouring NO_PROXY: a transport given
    to the client would make it ignore the environment's proxies altogether.
    """
    base = next(c for c in client_class.__mro__ if c.__name__ == "AsyncClient")
    lib = importlib.import_module(base.__module__.partition(".")[0])
    limits = lib.Limits(**CONNECTION_LIMITS)
    options: dict[str, Any] = {"limits": limits}
    if not environment_proxies():
        transport = lib.AsyncHTTPTransport(limits=limits)
        if lib.__name__ == "httpx":  # httpcore 1.0's pool is quadratic in connections (pool.py);
            from moa_cli.providers.pool import linear  # httpx2's httpcore2 already assigns in one pass

            transport = linear(transport)
        options["transport"] = transport
    return client_class(**options, event_hooks={"response": [cap_response, *hooks]})
