"""Any OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp server, OpenRouter, Groq, OpenAI)."""

from __future__ import annotations

from typing import Any, ClassVar

from moa_cli.providers.bounded import sdk_http_client
from moa_cli.providers.chat_api import ChatAPIProvider, watch_response


def preload() -> None:
    """Import the SDK and its API resources, e.g. before the event loop starts."""
    import openai.resources  # noqa: F401


class OpenAICompatProvider(ChatAPIProvider):
    kind = "openai"
    usage_request: ClassVar[dict[str, Any]] = {"stream_options": {"include_usage": True}}

    def _make_client(self) -> Any:
        import openai  # deferred for start-up time

        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self._base_url,
            timeout=self._timeout,
            max_retries=self._retries,
            http_client=sdk_http_client(openai.DefaultAsyncHttpxClient, [watch_response]),
        )
