"""The provider seam: one streaming method and a close.

A provider turns a `CompletionRequest` into an async stream of text pieces, optionally
followed by one `Usage`. It raises only `ProviderError` subclasses (plus cancellation):
SDK and transport exceptions are mapped inside the provider so the engine sees one tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from moa_cli.types import CompletionRequest, Usage


@runtime_checkable
class Provider(Protocol):
    name: str

    def stream(self, request: CompletionRequest) -> AsyncIterator[str | Usage]:
        """Yield the answer's text pieces as they arrive, then at most one Usage."""
        ...

    async def aclose(self) -> None:
        """Close connections and free resources. Safe to call twice."""
        ...
