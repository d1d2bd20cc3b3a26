"""Routes a model spec to its provider: `provider:model` when the prefix names a provider.

`ollama:llama3.2:1b` goes to the `ollama` provider as `llama3.2:1b`;
`Qwen/Qwen2.5-72B-Instruct-Turbo` goes to the default provider unchanged.
Providers are built lazily, once per pool, so a REPL session reuses its connections.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from loguru import logger

from moa_cli.config import ProviderConfig, Settings
from moa_cli.errors import ConfigError, MissingKeyError
from moa_cli.providers.base import Provider


def split_spec(spec: str, providers: Iterable[str], default: str) -> tuple[str, str]:
    """(provider name, model name) for a model spec."""
    prefix, sep, rest = spec.partition(":")
    if sep and rest and prefix in set(providers):
        return prefix, rest
    return default, spec


class ProviderPool:
    """Builds and caches one provider per name; `aclose()` closes them all."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}

    def split(self, spec: str) -> tuple[ProviderConfig, str]:
        name, model = split_spec(spec, self._settings.providers, self._settings.default_provider)
        return self._settings.providers[name], model

    def check(self, specs: Iterable[str]) -> None:
        """Fail early (ConfigError, exit 2) if any model's provider cannot be built."""
        for spec in specs:
            config, model = self.split(spec)
            if not model.strip():
                raise ConfigError(f"model name missing in {spec!r}")
            self._check_prefix(spec)
            self._api_key(config)
            if config.kind == "local":
                from moa_cli.providers.local import check_local_model

                check_local_model(model, config)

    def preload(self, specs: Iterable[str]) -> None:
        """Import the SDKs these models need (~1 s for together).

        Call it before the event loop starts, or in a thread: the first call would
        otherwise freeze the loop, and every other call with it, while the SDK loads.
        """
        kinds = {self.split(spec)[0].kind for spec in specs}
        if "together" in kinds:
            from moa_cli.providers.together import preload as preload_together

            preload_together()
        if "openai" in kinds:
            from moa_cli.providers.openai_compat import preload as preload_openai

            preload_openai()

    def resolve(self, spec: str) -> tuple[Provider, str]:
        config, model = self.split(spec)
        return self.provider(config.name), model

    def provider(self, name: str) -> Provider:
        """The provider called `name`, built on first use."""
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self._build(self._settings.providers[name])
        return provider

    def _check_prefix(self, spec: str) -> None:
        """`olama:llama3.2` is a typo for `ollama:`, not a Together model: say so."""
        prefix, sep, _ = spec.partition(":")
        if not sep or prefix in self._settings.providers or not prefix.isalpha():
            return
        close = difflib.get_close_matches(prefix.lower(), list(self._settings.providers), n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"unknown provider {prefix!r} in {spec!r}; did you mean {close[0]!r}?")

    def _api_key(self, config: ProviderConfig) -> str | None:
        if not config.api_key_env:
            return None
        key = self._settings.env.get(config.api_key_env, "").strip()
        if not key:
            hint = " (or use --local for the offline model)" if config.kind == "together" else ""
            raise MissingKeyError(
                f"no API key for provider {config.name!r}: set the {config.api_key_env} environment variable{hint}"
            )
        return key

    def _build(self, config: ProviderConfig) -> Provider:
        s = self._settings
        key = self._api_key(config)
        if config.kind == "together":
            from moa_cli.providers.together import TogetherProvider

            base_url = s.env.get("TOGETHER_BASE_URL") or config.base_url
            if base_url:  # the SDK appends /v1/chat/completions itself
                base_url = base_url.rstrip("/").removesuffix("/v1")
            logger.debug("provider {} at {}", config.name, base_url or "the Together API")
            return TogetherProvider(config.name, api_key=key or "", base_url=base_url, timeout=s.timeout, retries=s.retries)
        if config.kind == "openai":
            from moa_cli.providers.openai_compat import OpenAICompatProvider

            logger.debug("provider {} at {}", config.name, config.base_url)
            # Local servers need no key, but the SDK refuses an empty one.
            return OpenAICompatProvider(
                config.name, api_key=key or "none", base_url=config.base_url, timeout=s.timeout, retries=s.retries
            )
        if config.kind == "local":
            from moa_cli.providers.local import LocalProvider

            return LocalProvider(config, verbose=s.log_level in ("DEBUG", "TRACE"))
        raise ConfigError(f"provider {config.name!r} has unknown kind {config.kind!r}")

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:  # one failing to close must not leave the others open
            try:
                await provider.aclose()
            except Exception as exc:  # noqa: BLE001
                logger.debug("closing provider {} failed: {!r}", provider.name, exc)
