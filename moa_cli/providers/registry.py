"""Routes a model spec to its provider: `provider:model` when the prefix names a provider.

`ollama:llama3.2:1b` goes to the `ollama` provider as `llama3.2:1b`;
`Qwen/Qwen2.5-72B-Instruct-Turbo` goes to the default provider unchanged.
Providers are built lazily, once per pool, so a REPL session reuses its connections.
A provider with `max_concurrency` in its config is wrapped so that at most that many of
its calls are in flight at once, across every turn that shares the pool.

`check_lineup(settings)` is the one place a line-up is checked before it runs.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterable

from moa_cli.config import ProviderConfig, Settings
from moa_cli.diagnostics import logger  # disabled until the CLI configures it
from moa_cli.errors import ConfigError, MissingKeyError
from moa_cli.providers.base import Gated, Provider
from moa_cli.redact import mask_url


def split_spec(spec: str, providers: Iterable[str], default: str) -> tuple[str, str]:
    """(provider name, model name) for a model spec."""
    prefix, sep, rest = spec.partition(":")
    if sep and rest and prefix in set(providers):
        return prefix, rest
    return default, spec


def lineup_specs(settings: Settings) -> list[str]:
    """Every model spec a turn with these settings calls."""
    return [*settings.references, settings.aggregator]


def split(settings: Settings, spec: str) -> tuple[ProviderConfig, str]:
    """The provider config and the model name for a spec."""
    name, model = split_spec(spec, settings.providers, settings.default_provider)
    return settings.providers[name], model


def check_lineup(settings: Settings, specs: Iterable[str] | None = None) -> None:
    """Fail early (ConfigError, exit 2) if any model cannot be called: the one line-up check.

    Builds nothing and opens no connection: a missing or unusable key, an empty or
    misspelt provider prefix, and a local model that cannot load are all found here.
    """
    for spec in lineup_specs(settings) if specs is None else specs:
        prefix, sep, rest = spec.partition(":")
        if sep and prefix in settings.providers and not rest.strip():
            raise ConfigError(f"model name missing after {prefix + ':'!r} in {spec!r}")
        config, model = split(settings, spec)
        if not model.strip():
            raise ConfigError(f"model name missing in {spec!r}")
        _check_prefix(settings, spec)
        api_key(settings, config)
        if config.kind == "local":
            from moa_cli.providers.local import check_local_model

            check_local_model(model, config)


def _check_prefix(settings: Settings, spec: str) -> None:
    """`olama:llama3.2` is a typo for `ollama:`, not a Together model: say so."""
    prefix, sep, _ = spec.partition(":")
    if not sep or prefix in settings.providers or not prefix.isalpha():
        return
    close = difflib.get_close_matches(prefix.lower(), list(settings.providers), n=1, cutoff=0.8)
    if close:
        raise ConfigError(f"unknown provider {prefix!r} in {spec!r}; did you mean {close[0]!r}?")


def api_key(settings: Settings, config: ProviderConfig) -> str | None:
    """The provider's key from the environment; MissingKeyError or ConfigError if unusable."""
    if not config.api_key_env:
        return None
    key = settings.env.get(config.api_key_env, "").strip()
    if not key:
        hint = " (or use --local for the offline model)" if config.kind == "together" else ""
        raise MissingKeyError(
            f"no API key for provider {config.name!r}: set the {config.api_key_env} environment variable{hint}"
        )
    # A header carries visible ASCII only; anything else fails deep in the HTTP client.
    if not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        raise ConfigError(
            f"the key in {config.api_key_env} has characters an HTTP header cannot carry "
            "(spaces, line breaks or non-ASCII): check how it was pasted"
        )
    return key


def capped(provider: Provider, limit: int) -> Gated:
    """`provider` with at most `limit` calls in flight (`max_concurrency` in its config)."""
    slots = asyncio.Semaphore(limit)
    return Gated(provider, lambda: slots, max_concurrency=limit)


class ProviderPool:
    """Builds and caches one provider per name; `aclose()` closes them all."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}

    @property
    def settings(self) -> Settings:
        return self._settings

    def split(self, spec: str) -> tuple[ProviderConfig, str]:
        return split(self._settings, spec)

    def check(self, specs: Iterable[str]) -> None:
        """`check_lineup` for these specs."""
        check_lineup(self._settings, specs)

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
            config = self._settings.providers[name]
            provider = self._build(config)
            if config.max_concurrency:
                provider = capped(provider, config.max_concurrency)
            self._providers[name] = provider
        return provider

    def _build(self, config: ProviderConfig) -> Provider:
        s = self._settings
        key = api_key(s, config)
        if config.kind == "together":
            from moa_cli.providers.together import TogetherProvider

            base_url = config.base_url  # TOGETHER_BASE_URL when set (config.load_settings)
            if base_url:  # the SDK appends /v1/chat/completions itself
                base_url = base_url.rstrip("/").removesuffix("/v1")
            logger.debug("provider {} at {}", config.name, mask_url(base_url or "the Together API"))
            return TogetherProvider(
                config.name, api_key=key or "", base_url=base_url, timeout=s.timeout, retries=s.retries
            )
        if config.kind == "openai":
            from moa_cli.providers.openai_compat import OpenAICompatProvider

            logger.debug("provider {} at {}", config.name, mask_url(config.base_url or ""))
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
