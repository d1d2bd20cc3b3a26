"""The ASGI app: routes, one ProviderPool shared by every request, CORS, drain.

    GET  /health                200 {"status": "ok"}
    GET  /health/ready          200, or 503 while draining
    GET  /v1/models             every served model (models.py); /v1/models/{id} one of them
    POST /v1/chat/completions   one MoA turn (or one passthrough call), JSON or SSE; tools, JSON formats
    POST /v1/responses          the Responses API subset agents use (responses.py), as a chat turn

    app = create_app(settings, ServeOptions(...))     # `moa serve`, tests
    app_from_environment()                            # uvicorn's factory in each --workers process

Sharing the pool makes the per-provider `max_concurrency` caps hold across all turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from moa_cli.config import Settings
from moa_cli.diagnostics import logger
from moa_cli.errors import ConfigError
from moa_cli.longrun import freeze_startup
from moa_cli.providers.registry import ProviderPool, check_lineup, lineup_specs, split
from moa_cli.server import errors, responses, sse
from moa_cli.server.auth import Keys
from moa_cli.server.errors import ApiError, bad_request
from moa_cli.server.guard import Access, Guard, note
from moa_cli.server.lifecycle import Drain, hook_signals
from moa_cli.server.limits import Gate
from moa_cli.server.models import Catalogue, Served
from moa_cli.server.options import ServeOptions
from moa_cli.server.report import AccessLog
from moa_cli.server.retries import Retries, fingerprint, request_key
from moa_cli.server.schema import ChatRequest, parse_chat, read_json
from moa_cli.server.turns import Turn
from moa_cli.settings import coerce

T = TypeVar("T")


class ServerState:
    """Everything the routes share; nothing here outlives the process or depends on a request."""

    def __init__(self, settings: Settings, options: ServeOptions) -> None:
        self.settings = settings
        self.options = options
        self.catalogue = Catalogue(settings, options.passthrough)
        self.pool = ProviderPool(settings)
        self.keys = Keys(options.api_keys)
        self.gate = Gate(options.max_concurrent, options.queue)
        self.drain = Drain(options.shutdown_timeout)
        self.retries = Retries(options.retry_window, options.retry_entries)
        # A request queued when the drain begins is refused at once (503), not started later.
        self.drain.when_draining(lambda: self.gate.refuse_waiting(errors.draining()))

    def preload(self) -> None:
        """Import the SDKs every served model needs, before the event loop runs."""
        specs: list[str] = []
        for served in self.catalogue.models.values():
            specs += lineup_specs(served.settings) if served.settings is not None else [served.spec or ""]
        self.pool.preload(specs)


# ---------------------------------------------------------------------------- helpers


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Errors become OpenAI-style responses; a bug is one log line and a 500, never a traceback."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - the one catch-all of a request
            logger.error("{} {} failed: {}: {}", request.method, request.url.path, type(exc).__name__, exc)
            return error_response(errors.internal())

    return run


class ClientGone(Exception):
    """The client closed the connection while we were working for it."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, unless the client goes away first (then `work` is cancelled: ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def settings_for(state: ServerState, served: Served, request: ChatRequest) -> Settings | None:
    """The line-up's settings, changed by the request's {"moa": {...}} when the server allows it."""
    if not request.overrides:
        return served.settings
    if served.settings is None:
        raise bad_request(f"moa: {served.id} is a passthrough model, not a line-up", "moa")
    if not state.options.allow_overrides:
        raise bad_request("this server does not let requests change the line-up (moa serve --allow-overrides)", "moa")
    changes: dict[str, Any] = {}
    for name, value in request.overrides.items():
        try:
            changes[name] = coerce(name, value)
        except ValueError as exc:
            raise bad_request(f"moa.{name}: {exc}", f"moa.{name}") from None
    try:
        settings = served.settings.with_changes(**changes)
        check_lineup(settings)
    except ConfigError as exc:
        raise bad_request(f"moa: {exc}", "moa") from None
    _only_served_local_models(state, settings)
    _within_caps(state.options, settings)
    return settings


def _aggregator_can_act(settings: Settings, chat: ChatRequest) -> None:
    """A local aggregator cannot call tools (a JSON format it follows by a grammar): a 400 before
    the turn starts."""
    if chat.with_tools and split(settings, settings.aggregator)[0].kind == "local":
        field = "tools" if chat.tools else "messages"
        raise bad_request(
            f"{field}: the aggregator {settings.aggregator} is a local (llama.cpp) model, and moa's local models "
            "do not call tools; serve a line-up with a hosted aggregator",
            field,
            "unsupported_value",
        )


def upstream_calls(settings: Settings) -> int:
    """The most calls one turn of `settings` makes: references x rounds, plus the aggregator's
    (two with `select`, which may synthesize when the reply names no answer; none with consensus)."""
    aggregator = {"consensus": 0, "select": 2}.get(settings.aggregation, 1)
    return len(settings.references) * settings.rounds + aggregator


def _within_caps(options: ServeOptions, settings: Settings) -> None:
    """A request's line-up may not fan out past --max-references or --max-upstream-calls."""
    count = len(settings.references)
    if count > options.max_references:
        raise bad_request(
            f"moa.references: {count} references is more than this server's cap of {options.max_references} "
            "per request (moa serve --max-references)",
            "moa.references",
            "too_many_references",
        )
    calls = upstream_calls(settings)
    if calls > options.max_upstream_calls:
        raise bad_request(
            f"moa: this line-up makes up to {calls} upstream calls per turn ({count} references x "
            f"{settings.rounds} rounds + the aggregator), more than this server's cap of "
            f"{options.max_upstream_calls} (moa serve --max-upstream-calls)",
            "moa",
            "too_many_upstream_calls",
        )


def _only_served_local_models(state: ServerState, settings: Settings) -> None:
    """A request may not make the server load a model file of its choosing (each stays loaded
    for the process): a `local:` model must be one a served line-up already runs."""
    served_specs = {
        spec for model in state.catalogue.models.values() if model.settings for spec in lineup_specs(model.settings)
    }
    for spec in lineup_specs(settings):
        if split(settings, spec)[0].kind == "local" and spec not in served_specs:
            raise bad_request(f"moa: {spec} is not served here: a request may name only the local models the "
                              "server's line-ups run", "moa")  # fmt: skip


# ---------------------------------------------------------------------------- streaming


class TurnStream(StreamingResponse):
    """The SSE response of one turn; whatever ends it (done, error, disconnect), `on_close` runs."""

    def __init__(self, turn: Turn, completion: sse.Completion, on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(self._events(turn, completion), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
        self._on_close = on_close

    @staticmethod
    async def _events(turn: Turn, completion: sse.Completion) -> AsyncIterator[bytes]:
        yield completion.role()
        async for kind, text in turn.pieces():
            if kind == "text":
                yield completion.content(text)
            elif kind == "reasoning":
                yield completion.reasoning(text)
            else:
                yield sse.comment(text)
        if turn.error is not None:
            yield sse.event(turn.error.body())  # the openai client raises it as an APIError
            return
        for chunk in completion.tool_calls(turn.tool_calls()):
            yield chunk
        yield completion.finish(turn.finish_reason)
        if completion.include_usage:
            yield completion.usage(turn.usage(), turn.moa())
        yield sse.DONE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


# ---------------------------------------------------------------------------- routes


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.moa
    return state


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = _state(request)
    if state.drain.draining:
        return JSONResponse(
            {"status": "draining"}, status_code=503, headers={"Retry-After": str(errors.RETRY_AFTER_SECONDS)}
        )
    return JSONResponse({"status": "ready", "running": state.gate.running, "queued": state.gate.waiting})


@guarded
async def list_models(request: Request) -> Response:
    state = _state(request)
    state.keys.check(request.headers)
    return JSONResponse(state.catalogue.listing())


@guarded
async def get_model(request: Request) -> Response:
    state = _state(request)
    state.keys.check(request.headers)
    served = state.catalogue.get(request.path_params["model"])
    return JSONResponse(served.entry(state.catalogue.created))


@guarded
async def completions(request: Request) -> Response:
    raise errors.not_found("only chat completions are served: POST /v1/chat/completions", "unsupported_endpoint")


class ResponsesStream(TurnStream):
    """The SSE response of one turn asked through the Responses API (responses.py)."""

    def __init__(self, turn: Turn, reply: responses.Reply, on_close: Callable[[], Awaitable[None]]) -> None:
        StreamingResponse.__init__(
            self, self._reply_events(turn, reply), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
        )
        self._on_close = on_close

    @staticmethod
    async def _reply_events(turn: Turn, reply: responses.Reply) -> AsyncIterator[bytes]:
        for chunk in reply.start():
            yield chunk
        async for kind, text in turn.pieces():
            if kind == "text":
                for chunk in reply.text(text):
                    yield chunk
            elif kind == "heartbeat":
                yield sse.comment(text)
        if turn.error is not None:
            for chunk in reply.failed(turn.error):
                yield chunk
            return
        for chunk in reply.finish(responses.status_of(turn.finish_reason), turn.tool_calls(), turn.usage(), turn.moa()):
            yield chunk


async def _accepted_body(request: Request) -> tuple[ServerState, bytes]:
    """A turn's request let in (its key checked, the server not draining) and its body read."""
    state = _state(request)
    state.keys.check(request.headers)
    if state.drain.draining:
        raise errors.draining()
    return state, await read_body(request, state.options.max_body)


@guarded
async def create_response(request: Request) -> Response:
    """`POST /v1/responses`: the subset agents use, as a chat-completions turn (responses.py)."""
    state, raw = await _accepted_body(request)
    body = read_json(raw)
    chat = parse_chat(responses.to_chat(body))

    def stream(model: str, turn: Turn, finish: Callable[[], Awaitable[None]]) -> Response:
        return ResponsesStream(turn, responses.Reply(model, body), finish)

    def whole(model: str, turn: Turn, text: str) -> Response:
        reply = responses.Reply(model, body)
        status = responses.status_of(turn.finish_reason)
        return JSONResponse(
            reply.response(status, text, turn.tool_calls(), turn.usage(), turn.moa()), headers=turn.headers()
        )

    return await _serve_turn(request, state, chat, raw, stream, whole)


@guarded
async def chat_completions(request: Request) -> Response:
    state, raw = await _accepted_body(request)
    chat = parse_chat(read_json(raw))

    def stream(model: str, turn: Turn, finish: Callable[[], Awaitable[None]]) -> Response:
        return TurnStream(turn, sse.Completion(model, include_usage=chat.include_usage), finish)

    def whole(model: str, turn: Turn, text: str) -> Response:
        completion = sse.Completion(model)
        return JSONResponse(
            completion.whole(text, turn.finish_reason, turn.usage(), turn.moa(), turn.tool_calls()),
            headers=turn.headers(),
        )

    return await _serve_turn(request, state, chat, raw, stream, whole)


async def _serve_turn(
    request: Request,
    state: ServerState,
    chat: ChatRequest,
    raw: bytes,
    stream: Callable[[str, Turn, Callable[[], Awaitable[None]]], Response],
    whole: Callable[[str, Turn, str], Response],
) -> Response:
    """Run a parsed request's turn; `stream` or `whole` writes its response (chat or Responses),
    given the served model's id."""
    note(request.scope, model=chat.model)
    served = state.catalogue.get(chat.model)
    settings = settings_for(state, served, chat)
    if chat.agentic and settings is not None:
        _aggregator_can_act(settings, chat)
    key = request_key(request.headers, raw)
    print_ = fingerprint(served.id, chat.messages, chat.overrides, chat.agent_fields())
    reuse = state.retries.take(key, print_) if settings is not None else None
    try:
        await unless_disconnected(request, state.gate.enter())
    except ClientGone:
        return Response(status_code=499)
    if state.drain.has_begun():  # handed a slot just as the drain began: too late to start
        state.gate.leave()
        raise errors.draining()
    turn = Turn(
        served,
        chat,
        settings,
        state.pool,
        turn_timeout=state.options.turn_timeout,
        heartbeat=state.options.heartbeat if chat.stream else None,
        reasoning=chat.stream and state.options.progress == "reasoning",
        reuse=reuse,
    )
    untrack = state.drain.track(turn.end_by_shutdown)
    started = time.perf_counter()

    async def finish() -> None:
        try:
            await turn.close()
        finally:
            untrack()
            state.gate.leave()
            note(request.scope, calls=turn.upstream_calls)
            kept = turn.kept_proposals()
            if kept is not None:
                state.retries.keep(key, print_, kept)
            status = turn.error.status if turn.error else 200
            logger.debug(
                "{} {} {} in {:.3f}s",
                served.id,
                "stream" if chat.stream else "json",
                status,
                time.perf_counter() - started,
            )

    turn.start()
    if chat.stream:
        return stream(served.id, turn, finish)
    try:
        text = await unless_disconnected(request, turn.collect())
    except ClientGone:
        return Response(status_code=499)
    finally:
        await finish()
    if turn.error is not None:
        raise turn.error
    return whole(served.id, turn, text)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method) in OpenAI's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        error = errors.not_found(f"no such endpoint: {request.method} {request.url.path}", "unknown_endpoint")
    elif status == 405:
        error = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
    else:
        error = ApiError(status, str(getattr(exc, "detail", "error")), type="server_error")
    return error_response(error)


# ---------------------------------------------------------------------------- the app


def create_app(settings: Settings, options: ServeOptions | None = None) -> Starlette:
    """The app for these settings. ConfigError (exit 2) if a passthrough model cannot be used."""
    state = ServerState(settings, options or ServeOptions())
    state.preload()
    from moa_cli.server.connections import Protocol

    Protocol.header_timeout = state.options.header_timeout  # each --workers process builds its app

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        undo = hook_signals(state.drain, asyncio.get_running_loop())
        try:
            yield
        finally:
            undo()
            state.drain.close()
            await state.pool.aclose()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
    ]
    options = state.options
    middleware = [
        Middleware(Access, log=AccessLog(options.quiet)),
        Middleware(
            Guard,
            allowed_hosts=options.allowed_hosts,
            cors_origins=options.cors_origins,
            max_body=options.max_body,
            body_timeout=options.body_timeout,
        ),
    ]
    if state.options.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(state.options.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],  # the openai SDKs send a dozen X-Stainless-* headers
                expose_headers=["Retry-After", "x-should-retry", "X-MoA-References", "X-MoA-Degraded", "X-MoA-Fitted"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.moa = state
    return app


def app_from_environment() -> Starlette:
    """uvicorn's app factory in each `--workers` process: the options come in MOA_SERVE_CONFIG."""
    from moa_cli import diagnostics
    from moa_cli.config import load_settings
    from moa_cli.server.options import from_environment

    options, overrides, local = from_environment()
    settings = load_settings(overrides, force_local=local)
    diagnostics.configure(settings.log_level)
    check_lineup(settings)
    app = create_app(settings, options)
    freeze_startup()  # this worker's start-up objects: out of every later full collection (longrun.py)
    return app
