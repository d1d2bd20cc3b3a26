"""What a request must be before any route sees it (ASGI middleware), and the access line.

Browser safety. A web page the user visits can send requests to 127.0.0.1: a cross-origin
POST with `Content-Type: text/plain` needs no CORS preflight, and DNS rebinding makes a
page's own host name resolve to 127.0.0.1, so the browser calls us with that name as
`Host`. Hence, before the app:

    Host      on a loopback bind, only localhost, 127.0.0.1 and [::1] (any port) and the
              --allowed-host names are answered; any other: 421
    Origin    a request that carries one (only browsers send it) must come from a
              --cors-origin; any other: 403
    POST      the body must be `application/json` (a page cannot send that cross-origin
              without a preflight, which the CORS check refuses): 415 otherwise

Slow and huge bodies. uvicorn has no body timeout: the whole body must arrive within
--body-timeout seconds of the request's start (408, and the connection is closed) and be at
most --max-body bytes (413). Refusals are JSON errors like every other (errors.py), and
each writes one access line.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moa_cli.server.errors import ApiError
from moa_cli.server.report import AccessLog

#: The scope key where a route notes what the access line says: {"model": ..., "calls": ...}.
ACCESS = "moa.access"


def host_name(host: str) -> str:
    """`Host` without its port, lower case: "[::1]:5001" -> "[::1]", "Example.com:80" -> "example.com"."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _json_error(error: ApiError) -> tuple[dict[str, Any], bytes]:
    import json

    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return {"type": "http.response.start", "status": error.status, "headers": headers}, body


async def send_error(send: Send, error: ApiError) -> None:
    start, body = _json_error(error)
    await send(start)
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Host, Origin, Content-Type and the body's deadline and size (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: tuple[str, ...] | None,
        cors_origins: tuple[str, ...],
        max_body: int,
        body_timeout: float,
    ) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.max_body = max_body
        self.body_timeout = body_timeout

    def check(self, scope: Scope) -> ApiError | None:
        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and "*" not in self.allowed_hosts:
            host = headers.get("host", "")
            if host.lower() not in self.allowed_hosts and host_name(host) not in self.allowed_hosts:
                shown = host[:100] or "(none)"
                return ApiError(
                    421,
                    f"this server does not answer to Host {shown!r}: start it with --allowed-host NAME to add one",
                    code="host_not_allowed",
                )
        origin = headers.get("origin")
        if origin is not None and "*" not in self.cors_origins and origin.rstrip("/") not in self.cors_origins:
            return ApiError(
                403,
                f"requests from the web page at {origin[:100]!r} are not allowed: start the server with "
                "--cors-origin ORIGIN to allow one",
                type="permission_error",
                code="origin_not_allowed",
            )
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return ApiError(
                    415,
                    f"the request body must be sent as Content-Type: application/json (got {media or 'none'!r})",
                    code="unsupported_media_type",
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self.check(scope)
        if error is not None:
            await send_error(send, error)
            return
        await self.app(scope, self._bounded(receive), send)

    def _bounded(self, receive: Receive) -> Receive:
        """`receive`, with the body due within body_timeout and at most max_body bytes (ApiError)."""
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        size = 0
        done = False

        async def bounded() -> Message:
            nonlocal size, done
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                done = True
                raise ApiError(
                    408,
                    f"the request body did not arrive within {self.body_timeout:g}s",
                    type="timeout_error",
                    code="body_timeout",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request":
                done = True
                return message
            size += len(message.get("body", b""))
            if size > self.max_body:
                done = True
                raise ApiError(
                    413,
                    f"the request body is larger than {self.max_body} bytes",
                    code="request_too_large",
                    headers={"Connection": "close"},
                )
            done = not message.get("more_body", False)
            return message

        return bounded


class Access:
    """One access line per request: method, path, status, seconds, model, upstream calls."""

    def __init__(self, app: ASGIApp, *, log: AccessLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        noted: dict[str, Any] = {"model": None, "calls": None}
        scope[ACCESS] = noted
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")[:200]
            self.log.line(
                scope["method"], path, status or 499, time.perf_counter() - started, noted["model"], noted["calls"]
            )


def note(scope: Scope, **values: Any) -> None:
    """What the access line should say about this request (model, upstream calls)."""
    noted = scope.get(ACCESS)
    if isinstance(noted, dict):
        noted.update(values)
