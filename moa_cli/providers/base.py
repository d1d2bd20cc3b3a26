"""The provider seam: one streaming method, a model list and a close.

`stream(request)` turns a `CompletionRequest` into an async stream of

    str       the answer's text pieces, in order, as they arrive
    ToolCallDelta   pieces of tool calls, among the text, when the request had `tools`
                    (providers that cannot call tools never yield one)
    Finish    at most one, after the text: why the model stopped ("stop", "length", ...),
              when the server said
    Usage     at most one, last: the token counts, when the server reported them

With `request.stream` False no one reads the pieces as they arrive: a provider may ask its
server for the answer whole and yield it as one piece (the chat APIs do; local models stream
anyway). Everything else holds either way.

A stream that ends normally is a complete answer. A provider that can tell its stream was
cut (the server closed it before a finish reason or an end marker) raises `StreamCutOff`
instead of ending. The provider bounds the whole call by its timeout (`ProviderTimeout`).

`list_models()` returns the ids of the chat models the provider serves.

Both raise only `ProviderError` subclasses (plus cancellation): SDK and transport
exceptions are mapped inside the provider, so the engine and front ends see one tree,
each error with its `kind` and HTTP `status`. Text in those errors that came from a
server has passed through `redact.clean_server_text`.

Two optional attributes feed the engine's hints in warnings, nothing else: `kind`, the
provider's kind ("together", "openai", "local", "scripted"), and `max_concurrency`, the
calls it lets through at once when it caps them.

Two optional methods feed the fitting of prompts to context windows (fitting.py):
`async context_window(model) -> int | None`, the window as the provider says, and
`async tokenizer(model) -> Callable[[list[Message]], int] | None`, the model's own count
of a prompt's tokens. A provider without them gets moa's default window and an estimate.
`shared_context = True` says the calls to one model share its window (a local model's samples).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any, Protocol, cast, runtime_checkable

from moa_cli.types import CompletionRequest, Finish, ToolCallDelta, Usage

StreamItem = str | ToolCallDelta | Finish | Usage

#: Set by whoever runs a call (the engine), around its stream: a provider whose client retries
#: after an error calls it with (HTTP status, seconds it will wait or None, retry number) before
#: the wait, so a front end can say "waiting to retry" instead of "running ~0 tok". A context
#: variable, not a stream item: the retry happens inside the client, before any item exists.
RETRY_NOTICE: ContextVar[Callable[[int, float | None, int], None] | None] = ContextVar("moa_retry_notice", default=None)


@runtime_checkable
class Provider(Protocol):
    name: str

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """Yield the answer's text pieces as they arrive, then at most one Finish and one Usage."""
        ...

    async def list_models(self) -> list[str]:
        """The ids of the chat models this provider serves (ProviderError if it cannot say)."""
        ...

    async def aclose(self) -> None:
        """Close connections and free resources. Safe to call twice."""
        ...


class Gated:
    """A provider whose every call first enters `gate()`, an async context held for the call.

    Front ends wrap providers this way instead of writing their own delegation: the pool's
    per-provider cap (a semaphore), batch's request rate (a limiter that lets one call start
    and is then done). Everything else is the inner provider's.
    """

    def __init__(
        self,
        inner: Provider,
        gate: Callable[[], AbstractAsyncContextManager[object]],
        *,
        max_concurrency: int | None = None,
    ) -> None:
        self._inner = inner
        self._gate = gate
        self.name = inner.name
        self.kind = getattr(inner, "kind", None)
        # read by the engine's empty-answer hint
        self.max_concurrency = max_concurrency or getattr(inner, "max_concurrency", None)
        self.shared_context = getattr(inner, "shared_context", False)  # read by fitting.py

    def __repr__(self) -> str:
        return f"Gated({self._inner!r}, max_concurrency={self.max_concurrency})"

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        async with self._gate():
            stream = cast(AsyncGenerator[StreamItem, None], self._inner.stream(request))
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()  # close the inner stream where it stands

    async def list_models(self) -> list[str]:
        return await self._inner.list_models()

    async def context_window(self, model: str) -> Any:
        ask = getattr(self._inner, "context_window", None)
        return await ask(model) if ask is not None else None

    async def tokenizer(self, model: str) -> Any:
        ask = getattr(self._inner, "tokenizer", None)
        return await ask(model) if ask is not None else None

    async def aclose(self) -> None:
        await self._inner.aclose()
