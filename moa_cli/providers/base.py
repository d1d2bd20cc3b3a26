"""The provider seam: one streaming method, a model list and a close.

`stream(request)` turns a `CompletionRequest` into an async stream of

    str       the answer's text pieces, in order, as they arrive
    Finish    at most one, after the text: why the model stopped ("stop", "length", ...),
              when the server said
    Usage     at most one, last: the token counts, when the server reported them

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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from moa_cli.types import CompletionRequest, Finish, Usage

StreamItem = str | Finish | Usage


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
