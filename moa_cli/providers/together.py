"""Together AI through the `together` SDK: the only module that imports it."""

from __future__ import annotations

from typing import Any

from moa_cli.providers.chat_api import ChatAPIProvider


def preload() -> None:
    """Import the SDK and its API resources (~1 s), e.g. before the event loop starts."""
    import together.resources  # noqa: F401


class TogetherProvider(ChatAPIProvider):
    kind = "together"
    # The SDK has no stream_options argument; the API accepts it in the body.
    usage_request = {"extra_body": {"stream_options": {"include_usage": True}}}
    # The SDK's base URL is the host; `client.models.list()` in together 3.x lists a
    # project's own uploads, while the catalogue chat completions accept is /v1/models.
    models_path = "/v1/models"

    def _make_client(self) -> Any:
        import together  # deferred: importing the SDK costs ~0.35 s

        return together.AsyncTogether(
            api_key=self._api_key, base_url=self._base_url, timeout=self._timeout, max_retries=self._retries
        )
