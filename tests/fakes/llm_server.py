"""A real, scriptable fake LLM HTTP server speaking the OpenAI/Together chat API.

The server is a raw ASGI app served by uvicorn (h11) on ``127.0.0.1`` in a
background daemon thread, so the code under test talks to it over real TCP with
the real ``together`` / ``openai`` SDKs -- retries, streaming, SSE parsing and
connection teardown are all exercised for real.

Usage in tests (see ``tests/fakes/fixtures.py`` for the ``llm_server`` fixture)::

    server = FakeLLMServer().start()          # or: with FakeLLMServer() as server:
    server.script("m1", Reply(text="Hello there."), Reply(status=429))
    server.set_default("m2", Reply(latency=0.2, token_delay=0.01))
    client = together.AsyncTogether(api_key="test", base_url=server.base_url, max_retries=0)
    ...
    assert server.requests_for("m1")[0].last_user == "hi"
    server.assert_complete()                  # every scripted reply consumed
    server.stop()

Reply selection per request to ``POST /v1/chat/completions``: the model's FIFO
queue (``script``) first, then the model's persistent default (``set_default``),
then -- unless ``unknown_models_404`` is set -- the global ``default_reply``.

Every chat request is appended to ``server.requests`` as a ``RecordedRequest``
(model, messages, body, headers, ...). Fields filled in while it is served:
``disconnected`` (the client went away before the response was complete, e.g. a
cancelled task), ``cut`` (``Reply.cut_after`` dropped the connection), ``finished``,
``status``. ``active_streams`` / ``active_requests`` count handlers still running;
``wait_until_idle()`` polls them down to 0.

Failure modes, as the SDKs see them (checked with together 3.1.1, openai 3.57):

* ``Reply(status=429, headers={"retry-after-ms": "1"})`` -> retried by the SDK;
  non-200 -> ``APIStatusError`` subclasses with the OpenAI-style error body.
* ``Reply(cut_after=n)`` on a stream -> together: raw ``httpx.RemoteProtocolError``
  ("incomplete chunked read") out of the ``async for`` (it doesn't wrap errors while
  iterating); openai: ``openai.APIConnectionError``. Non-streaming -> both raise
  ``APIConnectionError`` (cause: "Server disconnected without sending a response").
* ``Reply(bad_json=True)`` -> raw ``json.JSONDecodeError`` (streaming and not).

Faults of a stream that the SDKs do not see, only moa's reading of it:

* ``Reply(end_after=n)`` -> after n content chunks the body ends cleanly (a proper
  chunked end) with no ``finish_reason`` and no ``[DONE]``: an answer cut short.
* ``Reply(stall_after=n)`` -> after n content chunks nothing more is sent, the
  connection stays open until the client goes away.
* ``Reply(error_chunk_after=n)`` -> after n content chunks a ``data: {"error": ...}``
  event (``error_message``, ``error_code``) and the end of the body.
* ``Reply(finish_reason="length")`` -> the final chunk's finish reason.
* ``Reply(endless=True)`` -> the text's pieces repeated forever (``token_delay`` apart).
* ``Reply(status=..., html=True)`` -> the error body is an HTML page (``text/html``).
* ``Reply(status=400, error_message=..., error_fields={"code": "context_length_exceeded"})``
  -> fields set in the error object (``code``, ``type``, llama.cpp's ``n_ctx``...).
* ``Reply(raw=[b"...", ...], raw_content_type=...)`` -> a body of those bytes (status 200 unless given),
  each sent as it is (``token_delay`` apart): SSE split oddly, HTML, JSON, nothing. Any iterable
  will do: ``itertools.repeat(b"...")`` is a body that never ends (until the client goes away).
* ``server.models_reply = Reply(raw=...)`` -> ``GET /v1/models`` answers with that body instead of
  the list (a huge or endless catalogue); ``reset()`` puts the list back.
* ``Reply(reset_after=n)`` -> after n content chunks the connection is reset (RST).
* ``Reply(tool_calls=[{"name": "f", "arguments": '{"a": 1}'}])`` -> the reply calls tools
  (with no text unless ``text`` is given): streamed as OpenAI streams them (per call a
  chunk with index, id and name, then the arguments in ``ARGUMENT_PIECE``-character pieces),
  ``finish_reason`` "tool_calls" unless set; non-streaming in ``message.tool_calls``.
  The request bodies (``tools``, ``tool_choice``, ``response_format``) are in ``body``.
* ``error_message`` may hold ``{api_key}``: replaced by the key the request was sent
  with (``Authorization: Bearer KEY``), like servers that echo a wrong key back.

Standalone (manual testing, benchmarks)::

    python -m tests.fakes.llm_server --port 8001 [--latency 0.5 --token-delay 0.02]

prints the base URL and serves every model with the configured default reply.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["FakeLLMServer", "RecordedRequest", "Reply", "split_pieces"]

# ASGI type aliases (kept local: no framework dependency).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PIECE_RE = re.compile(r"\S+\s*|\s+")
ARGUMENT_PIECE = 7  # characters of a tool call's arguments per streamed chunk

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", "request_timeout"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_server_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def split_pieces(text: str) -> list[str]:
    """Split text into whitespace-preserving word chunks ("a b" -> ["a ", "b"])."""
    return _PIECE_RE.findall(text)


@dataclass
class Reply:
    """How the server answers one request (see module docstring)."""

    text: str | None = None  # None -> f"Answer from {model}."
    latency: float = 0.0  # seconds before response headers / first byte
    token_delay: float = 0.0  # seconds between streamed chunks
    status: int = 200  # non-200 -> OpenAI-style JSON error body
    error_message: str | None = None  # default f"HTTP {status} from fake server"
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    # Streaming: after this many content chunks drop the connection (no final chunk,
    # no [DONE]). Non-streaming: 0 drops the connection without sending any response,
    # more sends the headers and the start of the body first.
    cut_after: int | None = None
    usage: bool = True  # send usage (non-streaming body / final stream chunk)
    # Streaming: emit one `data: {not json` event after the first content chunk.
    # Non-streaming: the 200 body is not valid JSON.
    bad_json: bool = False
    # Streaming: end the body cleanly after n chunks, no finish, no [DONE]. Non-streaming: end
    # it cleanly in the middle of the JSON, after n pieces of the text.
    end_after: int | None = None
    stall_after: int | None = None  # streaming: after n chunks send nothing more, keep the connection
    error_chunk_after: int | None = None  # streaming: an error event after n chunks, then the end
    error_code: Any = None  # the error event's "code"
    finish_reason: str = "stop"  # the final chunk's finish_reason
    endless: bool = False  # streaming: repeat the pieces forever
    html: bool = False  # an error status answers with an HTML page
    raw: Iterable[bytes] | None = None  # a body of these bytes (with `status`), sent as they are, one chunk each
    raw_content_type: str = "text/event-stream"  # the content type of a `raw` body
    reset_after: int | None = None  # streaming: after n content chunks a TCP reset (RST), not a close
    tool_calls: list[dict[str, str]] | None = None  # [{"name": ..., "arguments": ..., "id"?: ...}]
    error_fields: dict[str, Any] | None = None  # an error status: fields set in its error object (code, type, n_ctx)

    def text_for(self, model: str) -> str:
        if self.tool_calls is not None and self.text is None:
            return ""
        return self.text if self.text is not None else f"Answer from {model}."

    def calls(self) -> list[dict[str, Any]]:
        """The tool calls in OpenAI's shape, each with an id."""
        return [
            {
                "id": call.get("id", f"call_fake_{i}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments", "{}")},
            }
            for i, call in enumerate(self.tool_calls or [])
        ]

    def finish_for(self) -> str:
        return "tool_calls" if self.tool_calls and self.finish_reason == "stop" else self.finish_reason


@dataclass
class RecordedRequest:
    """One request to the chat-completions endpoint, as the server saw it."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    path: str
    # Set from the server thread while/after the response is produced:
    disconnected: bool = False  # client went away before the response finished
    cut: bool = False  # the server dropped the connection on purpose (Reply.cut_after)
    finished: bool = False  # the handler has returned (any outcome)
    status: int | None = None  # HTTP status sent (None if nothing was sent)
    reply: Reply | None = None  # the reply that was chosen
    received_at: float = 0.0  # time.monotonic() at arrival
    client: tuple[str, int] | None = None  # the client's address: one port per TCP connection
    finished_at: float | None = None  # time.monotonic() when the handler returned
    raw_parts_sent: int = 0  # parts of a `raw` body handed to the server before the client left

    @property
    def system(self) -> str | None:
        for message in self.messages:
            if message.get("role") == "system":
                return _content_text(message.get("content"))
        return None

    @property
    def last_user(self) -> str | None:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return None


def _content_text(content: Any) -> str:
    """Message content as text; structured content (list of parts) is joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(_content_text(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _message_for(reply: Reply, record: RecordedRequest) -> str:
    """The error message of a reply, with ``{api_key}`` replaced by the request's key."""
    message = reply.error_message or f"HTTP {reply.status} from fake server"
    if "{api_key}" in message:
        key = record.headers.get("authorization", "").removeprefix("Bearer ").strip()
        message = message.replace("{api_key}", key)
    return message


def _error_body(status: int, message: str, fields: dict[str, Any] | None = None) -> bytes:
    err_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", str(status))
    )
    return json.dumps({"error": {"message": message, "type": err_type, "code": code, **(fields or {})}}).encode()


class _CutConnection(Exception):
    """Raised to make uvicorn drop a connection when we cannot reach the transport."""


class _QuietCutFilter(logging.Filter):
    """Keeps deliberate connection cuts from being logged as tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _CutConnection)


_quiet_filter = _QuietCutFilter()


class FakeLLMServer:
    """Scriptable chat-completions server; thread-safe to script from tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.default_reply: Reply = Reply()
        self.unknown_models_404: bool = False
        self.models: list[str] = []  # extra ids for GET /v1/models (also "known" for 404 mode)
        # Extra fields of a model's GET /v1/models entry, e.g. {"m": {"context_length": 8192}}
        # (a model named here is listed too); `model_lists` counts the GETs.
        self.model_fields: dict[str, dict[str, Any]] = {}
        self.model_lists = 0
        self.models_reply: Reply | None = None  # GET /v1/models answers with its `raw` body instead
        self.requests: list[RecordedRequest] = []
        # Absolute-form targets ("POST http://host/v1/..."): the server was asked as a forward
        # proxy (HTTP_PROXY pointing here); it answers them as its own paths.
        self.proxied: list[str] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._lock = threading.Lock()
        self._active_streams = 0
        self._active_requests = 0
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        # Server-loop-side state, used by stop() to end in-flight streams promptly.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[_Exchange] = set()
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` -- the together SDK appends ``/v1/chat/completions``."""
        if self._sock is None:
            raise RuntimeError("FakeLLMServer is not started")
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"`` -- the openai SDK appends ``/chat/completions``."""
        return self.base_url + "/v1"

    def _make_server(self, log_config: dict[str, Any] | None) -> uvicorn.Server:
        # Pre-bind the socket ourselves so port 0 works and the port is known up front.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: asyncio sets TCP_NODELAY only on sockets it creates, and
        # without it a reused connection's first bytes after the headers wait ~40 ms (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.setblocking(False)
        self._sock = sock
        config = uvicorn.Config(
            self,
            http="h11",  # deterministic: the disconnect/cut handling below is written against it
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            log_config=log_config,  # None: don't reconfigure the test process's logging
            timeout_graceful_shutdown=1,  # stop() must not hang on slow streams
        )
        logging.getLogger("uvicorn.error").addFilter(_quiet_filter)
        return uvicorn.Server(config)

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        """Start serving in a daemon thread; returns once the socket accepts."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        self._stopping = False
        self._server = self._make_server(log_config=None)
        server, sock = self._server, self._sock
        assert sock is not None
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-llm-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("fake LLM server thread died during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start in time")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down; in-flight requests are ended at once (streams are cut)."""
        self._stopping = True  # new requests get a quick 503
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                # Without this, uvicorn waits for slow streams and then logs a traceback.
                loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:  # loop closed in the meantime
                pass
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()  # uvicorn closes it too; closing twice is harmless
        self._thread = None
        self._server = None
        self._loop = None

    def serve_forever(self, announce: bool = True) -> None:
        """Run in the calling (main) thread until Ctrl-C -- for standalone use."""
        server = self._make_server(log_config=uvicorn.config.LOGGING_CONFIG)
        assert self._sock is not None
        if announce:  # after binding, so --port 0 prints the real port
            print(self.base_url, flush=True)
        try:
            server.run(sockets=[self._sock])  # uvicorn handles SIGINT/SIGTERM in the main thread
        except KeyboardInterrupt:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- scripting
    def script(self, model: str, *replies: Reply) -> None:
        """Enqueue replies for ``model``; each request consumes one (FIFO)."""
        with self._lock:
            self._queues.setdefault(model, deque()).extend(replies)

    def set_default(self, model: str, reply: Reply) -> None:
        """Persistent reply for ``model`` once its queue is empty."""
        with self._lock:
            self._defaults[model] = reply

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._defaults.clear()
            self.requests = []
            self.proxied = []
            self.models = []
            self.model_fields = {}
            self.model_lists = 0
            self.models_reply = None
            self.unknown_models_404 = False
            self.default_reply = Reply()

    def requests_for(self, model: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def assert_complete(self) -> None:
        with self._lock:
            left = {m: len(q) for m, q in self._queues.items() if q}
        if left:
            raise AssertionError(f"scripted replies not consumed: {left}")

    @property
    def active_streams(self) -> int:
        """Streaming requests currently being handled (including their latency wait)."""
        with self._lock:
            return self._active_streams

    @property
    def active_requests(self) -> int:
        """All chat requests currently being handled."""
        with self._lock:
            return self._active_requests

    def wait_until_idle(self, timeout: float = 2.0) -> bool:
        """Poll until no request is in flight; returns False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active_requests == 0:
                return True
            time.sleep(0.005)
        return self.active_requests == 0

    def known_models(self) -> list[str]:
        with self._lock:
            names = list(self.models) + list(self.model_fields) + list(self._queues) + list(self._defaults)
        return list(dict.fromkeys(names))

    def _choose_locked(self, model: str) -> Reply | None:
        """Pick the reply for one request (None -> unknown model 404); hold the lock."""
        queue = self._queues.get(model)
        if queue:
            return queue.popleft()
        if model in self._defaults:
            return self._defaults[model]
        known = model in self._queues or model in self.models
        if self.unknown_models_404 and not known:
            return None
        return self.default_reply

    # ----------------------------------------------------------------- ASGI app
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._loop = asyncio.get_running_loop()  # for stop(), which runs in another thread
        method: str = scope["method"]
        path: str = scope["path"]
        if path.startswith(("http://", "https://")):  # absolute-form: a request sent to a proxy
            with self._lock:
                self.proxied.append(path)
            path = urllib.parse.urlsplit(path).path
        path = path.rstrip("/") or "/"
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                await _send_bytes(send, 405, _error_body(405, "Method not allowed"))
                return
            await self._chat(scope, receive, send, path)
        elif path in ("/v1/models", "/models") and method == "GET":
            with self._lock:
                self.model_lists += 1
                reply = self.models_reply
            if reply is not None:
                await self._models_raw(scope, receive, send, reply)
                return
            data = [
                {
                    "id": m,
                    "object": "model",
                    "created": 0,
                    "owned_by": "fake",
                    "type": "chat",
                    **self.model_fields.get(m, {}),
                }
                for m in self.known_models()
            ]
            await _send_json(send, 200, {"object": "list", "data": data})
        else:
            await _send_bytes(send, 404, _error_body(404, f"Not found: {method} {path}"))

    async def _models_raw(self, scope: Scope, receive: Receive, send: Send, reply: Reply) -> None:
        """`models_reply`'s raw body for GET /v1/models; it stops when the client goes away."""
        record = RecordedRequest("", [], False, {}, {}, scope["path"], received_at=time.monotonic())
        ex = _Exchange(send, record)
        watcher = asyncio.create_task(_watch_disconnect(receive, ex))
        self._inflight.add(ex)
        if self._stopping:
            ex.trigger()
        try:
            extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
            await self._send_raw(ex, reply, extra)
        finally:
            self._inflight.discard(ex)
            watcher.cancel()

    async def _chat(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            await _send_bytes(send, 400, _error_body(400, f"Invalid JSON body: {exc}"))
            return

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        stream = bool(body.get("stream", False))
        record = RecordedRequest(
            model=model,
            messages=messages if isinstance(messages, list) else [],
            stream=stream,
            body=body,
            headers=headers,
            path=path,
            received_at=time.monotonic(),
            client=tuple(scope["client"]) if scope.get("client") else None,  # type: ignore[arg-type]
        )
        with self._lock:  # choose + record atomically w.r.t. reset() from the test thread
            reply = self._choose_locked(model)
            record.reply = reply
            self.requests.append(record)
            self._active_requests += 1
            if stream:
                self._active_streams += 1

        # After the body is read, the next receive() only returns when the client
        # disconnects (or once the response completes) -- watch it in the background.
        ex = _Exchange(send, record)
        watcher = asyncio.create_task(_watch_disconnect(receive, ex))
        self._inflight.add(ex)
        if self._stopping:
            ex.trigger()
        try:
            await self._respond(ex, reply)
        except asyncio.CancelledError:
            # uvicorn cancels handlers only on a forced shutdown; count it as "went away".
            record.disconnected = True
            raise
        finally:
            self._inflight.discard(ex)
            watcher.cancel()
            record.finished = True
            record.finished_at = time.monotonic()
            with self._lock:
                self._active_requests -= 1
                if stream:
                    self._active_streams -= 1

    async def _send_raw(self, ex: _Exchange, reply: Reply, extra: list[tuple[bytes, bytes]]) -> None:
        """A `raw` body, part by part, until it ends or the client goes away."""
        assert reply.raw is not None
        ex.record.status = reply.status
        await ex.start(reply.status, [(b"content-type", reply.raw_content_type.encode("latin-1")), *extra])
        for n, part in enumerate(reply.raw):
            if ex.wake.is_set() or (n and reply.token_delay > 0 and await ex.sleep(reply.token_delay)):
                await ex.abandon()
                return
            await ex.body(part)
            ex.record.raw_parts_sent += 1
            # uvicorn drops a body for a closed connection without yielding: let the
            # disconnect watcher run, or the loop "sends" every part into the void.
            await asyncio.sleep(0)
        await ex.body(b"", more_body=False)

    def _wake_all(self) -> None:
        """(server loop) stop() is running: make every in-flight handler wind down now."""
        for ex in list(self._inflight):
            ex.trigger()

    async def _respond(self, ex: _Exchange, reply: Reply | None) -> None:
        record = ex.record
        model = record.model
        if reply is None:
            record.status = 404
            await ex.send_bytes(404, _error_body(404, f"Unable to access model {model}"))
            return
        if ex.wake.is_set() or (reply.latency > 0 and await ex.sleep(reply.latency)):
            await ex.abandon()
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        if reply.raw is not None:
            await self._send_raw(ex, reply, extra)
            return
        if reply.status != 200:
            record.status = reply.status
            message = _message_for(reply, record)
            if reply.html:
                page = (
                    f"<!DOCTYPE html>\n<html><head><title>{reply.status} {message}</title></head>"
                    f"<body><h1>{message}</h1><p>{'padding ' * 40}</p></body></html>"
                ).encode()
                html_headers = [(b"content-type", b"text/html; charset=utf-8")]
                await ex.send_bytes(reply.status, page, html_headers + extra, content_type=None)
                return
            await ex.send_bytes(reply.status, _error_body(reply.status, message, reply.error_fields), extra)
            return

        text = reply.text_for(model)
        pieces = split_pieces(text)
        prompt_tokens = _prompt_tokens(record.messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        completion_id = f"chatcmpl-fake-{next(self._ids)}"
        created = int(time.time())

        if not record.stream:
            # The whole answer comes when it is all generated: token_delay per piece after the first.
            generating = reply.token_delay * max(len(pieces) - 1, 0)
            if ex.wake.is_set() or (generating > 0 and await ex.sleep(generating)):
                await ex.abandon()
                return
            if reply.end_after is not None:  # a clean end in the middle of the JSON: a cut answer
                record.status = 200
                await ex.start(200, [(b"content-type", b"application/json")])
                await ex.body(b'{"id": "' + completion_id.encode() + b'", "choices": [{"message": {"content": "')
                await ex.body("".join(pieces[: reply.end_after]).encode(), more_body=False)
                return
            if reply.cut_after is not None:
                record.cut = True
                if reply.cut_after > 0:  # headers and part of the body, then the connection drops
                    await ex.start(200, [(b"content-type", b"application/json"), (b"content-length", b"100000")])
                    await ex.body(b'{"id": "' + completion_id.encode() + b'", "choices": [{"message": {"content": "')
                await ex.cut()
                return
            if reply.bad_json:
                payload = b'{"id": "' + completion_id.encode() + b'", not json'
            else:
                obj: dict[str, Any] = {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text or None, "tool_calls": reply.calls()}
                            if reply.tool_calls
                            else {"role": "assistant", "content": text},
                            "finish_reason": reply.finish_for() if reply.tool_calls else reply.finish_reason,
                            "logprobs": None,
                        }
                    ],
                }
                if reply.usage:
                    obj["usage"] = usage
                payload = json.dumps(obj).encode()
            record.status = 200
            await ex.send_bytes(200, payload, extra)
            return

        # ---- streaming
        record.status = 200
        sse_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await ex.start(200, sse_headers + extra)

        def chunk(delta: dict[str, Any], finish: str | None, with_usage: bool = False) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if with_usage:
                obj["usage"] = usage
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        if reply.endless:
            n = 0
            while pieces:
                if ex.wake.is_set() or (n and reply.token_delay > 0 and await ex.sleep(reply.token_delay)):
                    await ex.abandon()
                    return
                if not reply.token_delay:
                    await asyncio.sleep(0)
                await ex.body(chunk({"role": "assistant", "content": pieces[n % len(pieces)]}, None))
                n += 1

        events: list[tuple[str, bytes]] = []  # (kind, data) in wire order
        for i, piece in enumerate(pieces):
            events.append(("content", chunk({"role": "assistant", "content": piece}, None)))
            if reply.bad_json and i == 0:
                events.append(("extra", b"data: {not json\n\n"))
        if reply.bad_json and not pieces:
            events.append(("extra", b"data: {not json\n\n"))
        for index, call in enumerate(reply.calls()):
            head = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            events.append(("content", chunk({"role": "assistant", "tool_calls": [head]}, None)))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), ARGUMENT_PIECE):
                piece = {"index": index, "function": {"arguments": arguments[start : start + ARGUMENT_PIECE]}}
                events.append(("content", chunk({"tool_calls": [piece]}, None)))
        events.append(("final", chunk({}, reply.finish_for(), with_usage=reply.usage)))
        events.append(("extra", b"data: [DONE]\n\n"))

        sent_content = 0
        for n, (kind, data) in enumerate(events):

            def at_limit(limit: int | None, kind: str = kind, sent: int = sent_content) -> bool:
                return limit is not None and ((kind == "content" and sent >= limit) or kind == "final")

            if at_limit(reply.cut_after):
                record.cut = True
                await ex.cut()
                return
            if at_limit(reply.reset_after):
                record.cut = True
                await ex.cut(reset=True)
                return
            if at_limit(reply.end_after):
                record.cut = True
                await ex.body(b"", more_body=False)  # a clean end: nothing says the answer is over
                return
            if at_limit(reply.error_chunk_after):
                error = {"message": _message_for(reply, record), "type": "server_error", "code": reply.error_code}
                await ex.body(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
                await ex.body(b"", more_body=False)
                return
            if at_limit(reply.stall_after):
                record.cut = True
                while not ex.wake.is_set():  # until the client goes away or the server stops
                    if await ex.sleep(3600):
                        break
                await ex.abandon()
                return
            # token_delay separates chunks; extra lines ride along without a delay.
            delay = reply.token_delay if n > 0 and kind != "extra" else 0.0
            if ex.wake.is_set() or (delay > 0 and await ex.sleep(delay)):
                await ex.abandon()
                return
            await ex.body(data)
            sent_content += kind == "content"
        # The client has everything now; if it hangs up right after [DONE] that's fine.
        await ex.body(b"", more_body=False)


class _Exchange:
    """Per-request state shared by the handler, the disconnect watcher and stop()."""

    def __init__(self, send: Send, record: RecordedRequest) -> None:
        self._send = send
        self.record = record
        self.client_gone = asyncio.Event()  # the client closed the connection
        self.wake = asyncio.Event()  # client gone OR server stopping: stop producing
        self.started = False
        self._waiter: asyncio.Future[bool] | None = None

    def trigger(self) -> None:
        """(server loop) Stop producing: sets ``wake`` and ends a pending ``sleep``."""
        self.wake.set()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` s, waking early on ``trigger()``; True if woken (stop producing)."""
        if self.wake.is_set():
            return True
        # A bare future + call_later is much cheaper than wait_for(event.wait()),
        # which spawns a task per chunk -- it matters with many concurrent streams.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        handle = loop.call_later(delay, _resolve, waiter, False)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._waiter = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, more_body: bool = True) -> None:
        # Note: uvicorn's h11 send() silently drops data for a dead connection, so
        # disconnects are noticed through ``wake`` (set by the receive() watcher).
        await self._send({"type": "http.response.body", "body": data, "more_body": more_body})

    async def send_bytes(
        self,
        status: int,
        payload: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes | None = b"application/json",
    ) -> None:
        headers = [(b"content-length", str(len(payload)).encode())]
        if content_type is not None:
            headers.insert(0, (b"content-type", content_type))
        await self.start(status, headers + (extra or []))
        await self._send({"type": "http.response.body", "body": payload, "more_body": False})

    async def abandon(self) -> None:
        """``wake`` fired: record a client disconnect, or end quietly because we're stopping."""
        if self.client_gone.is_set():
            self.record.disconnected = True
        elif self.started:
            await self.cut()  # server stopping mid-stream
        else:
            self.record.status = 503
            await self.send_bytes(503, _error_body(503, "fake server is shutting down"))

    async def cut(self, *, reset: bool = False) -> None:
        """Drop the connection mid-response so the client sees an incomplete read (or a reset)."""
        # uvicorn's protocol cycle exposes its transport via the bound send method;
        # closing it (FIN after flushing what was written) is the cleanest abrupt end.
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is None:
            raise _CutConnection()  # uvicorn closes the transport; the log filter hides it
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        # Wait for connection_lost so uvicorn sees a disconnect and logs nothing.
        try:
            await asyncio.wait_for(self.client_gone.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def _watch_disconnect(receive: Receive, ex: _Exchange) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ex.client_gone.set()
            ex.trigger()
            return


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


async def _send_bytes(send: Send, status: int, payload: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_json(send: Send, status: int, obj: Any) -> None:
    await _send_bytes(send, status, json.dumps(obj).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Together chat-completions server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first byte")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--text", default=None, help="reply text (default: 'Answer from {model}.')")
    parser.add_argument("--models", default="", help="comma-separated ids listed by GET /v1/models")
    args = parser.parse_args(argv)

    server = FakeLLMServer(host=args.host, port=args.port)
    server.default_reply = Reply(text=args.text, latency=args.latency, token_delay=args.token_delay)
    server.models = [m for m in args.models.split(",") if m]
    server.serve_forever(announce=True)


if __name__ == "__main__":
    main()
