"""`moa models`: the configured providers and the model names to use with them.

    together   its chat models, fetched through the SDK when TOGETHER_API_KEY is set
    local      the bundled model and the GGUF files listed in the config file
    others     providers from the config file (or with their key set) and their `models`

Names are printed as you would pass them to -r / -a: bare for the default provider,
`provider:model` for the others. A provider that cannot be listed gets a one-line warning
on stderr; the rest is still printed and the exit code stays 0.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from moa_cli import defaults
from moa_cli.cli.errors import handle_errors
from moa_cli.errors import ConfigError, ProviderError

if TYPE_CHECKING:  # the command imports config when it runs: `moa --help` stays fast
    from moa_cli.config import ProviderConfig, Settings

#: Listing models is a quick metadata call: do not wait as long as for an answer.
LIST_TIMEOUT = 10.0


@dataclass(slots=True)
class ModelEntry:
    spec: str  # what to pass to -r / -a
    note: str = ""


@dataclass(slots=True)
class ProviderListing:
    name: str
    kind: str
    about: str
    models: list[ModelEntry] = field(default_factory=list)
    error: str | None = None
    #: How the provider runs, one line each ("repack": whether and why llama.cpp repacks weights).
    runtime: dict[str, str] = field(default_factory=dict)


def _spec(settings: Settings, config: ProviderConfig, model: str) -> str:
    return model if config.name == settings.default_provider else f"{config.name}:{model}"


def _is_configured(settings: Settings, config: ProviderConfig) -> bool:
    """Show a provider if it is moa's own (together, local), in the config file, or keyed."""
    if config.kind in ("together", "local"):
        return True
    if config.name in defaults.BUILTIN_PROVIDERS and not config.api_key_env:
        return True  # a keyless server of its own (Ollama): shown, and said whether it answers
    builtin = defaults.BUILTIN_PROVIDERS.get(config.name)
    from_file = builtin is None or config.models or config.base_url != builtin["base_url"]
    has_key = bool(config.api_key_env and settings.env.get(config.api_key_env, "").strip())
    return bool(from_file or has_key)


async def _fetch(settings: Settings, config: ProviderConfig) -> list[str]:
    """The provider's chat model ids, through the provider seam (errors mapped inside it)."""
    from moa_cli.providers.registry import ProviderPool

    # One retry at most and a short timeout: a listing should answer or warn quickly.
    quick = settings.with_changes(timeout=min(settings.timeout, LIST_TIMEOUT), retries=min(settings.retries, 1))
    pool = ProviderPool(quick)
    try:
        ids = await pool.provider(config.name).list_models()
    finally:
        await pool.aclose()
    return sorted(ids, key=str.lower)


async def _list_together(settings: Settings, config: ProviderConfig) -> ProviderListing:
    from moa_cli.errors import MoaError

    listing = ProviderListing(config.name, config.kind, "Together AI")
    key_env = config.api_key_env or "TOGETHER_API_KEY"
    key = settings.env.get(key_env, "").strip()
    if not key:
        listing.about += f": set {key_env} to list and use its models"
        return listing
    try:
        ids = await _fetch(settings, config)
    except MoaError as exc:  # a failed listing is a warning, never a crash
        reason = exc.reason if isinstance(exc, ProviderError) else str(exc)
        listing.error = f"could not list {config.name} models: {reason}"
        listing.about += ": could not list its models (see the warning)"
        return listing
    listing.about += f", {len(ids)} chat models"
    listing.models = [ModelEntry(_spec(settings, config, i)) for i in ids]
    return listing


def _list_local(settings: Settings, config: ProviderConfig) -> ProviderListing:
    from moa_cli.providers.local import BUNDLED, llama_cpp_installed, repack_choice, resolve_model

    listing = ProviderListing(config.name, config.kind, "GGUF files run in-process by llama.cpp")
    if llama_cpp_installed():
        import llama_cpp

        from moa_cli.providers.llama_runtime import PINNED_VERSION, check_runtime

        version = getattr(llama_cpp, "__version__", "?")
        problem = check_runtime()
        listing.runtime["llama-cpp-python"] = problem or f"{version}, its bindings match moa's driver" + (
            "" if version == PINNED_VERSION else f" (moa pins {PINNED_VERSION})"
        )
        listing.runtime["repack"] = repack_choice(config).reason
    for name, bundled in BUNDLED.items():
        note = f"{bundled.description}, bundled"
        try:
            note += f": {resolve_model(name, config)}"
        except ConfigError as exc:
            note += f" ({exc})"
        listing.models.append(ModelEntry(_spec(settings, config, name), note))
    for path in config.models:
        try:
            resolve_model(path, config)
            note = ""
        except ConfigError as exc:
            note = str(exc)
        listing.models.append(ModelEntry(_spec(settings, config, path), note))
    return listing


async def _list_other(settings: Settings, config: ProviderConfig) -> ProviderListing:
    """An OpenAI-compatible server: the models it lists (`GET /models`) and those in the config file.

    A configured server that cannot be listed gets a warning; a built-in keyless one that is
    simply not running (Ollama on its default port) gets a note instead, not a warning.
    """
    from moa_cli.errors import MoaError
    from moa_cli.redact import mask_url

    about = f"OpenAI-compatible API at {mask_url(config.base_url or '')}"  # never a password in a URL
    listing = ProviderListing(config.name, config.kind, about)
    configured = [ModelEntry(_spec(settings, config, m)) for m in config.models]
    if config.api_key_env and not settings.env.get(config.api_key_env, "").strip():
        listing.about += f", {config.api_key_env} is not set"
        listing.models = configured
    else:
        try:
            ids = await _fetch(settings, config)
        except MoaError as exc:
            reason = exc.reason if isinstance(exc, ProviderError) else str(exc)
            builtin = defaults.BUILTIN_PROVIDERS.get(config.name)
            if builtin is not None and not config.models and config.base_url == builtin["base_url"]:
                listing.about += f": not answering ({reason}); start it to use {config.name}:MODEL"
            else:
                listing.error = f"could not list {config.name} models: {reason}"
                listing.about += ": could not list its models (see the warning)"
            listing.models = configured
        else:
            listing.about += f", {len(ids)} models listed"
            listing.models = [ModelEntry(_spec(settings, config, i)) for i in ids]
            listed = set(ids)
            listing.models += [
                ModelEntry(entry.spec, "in the config file, not listed by the server")
                for entry, name in zip(configured, config.models, strict=True)
                if name not in listed
            ]
    if not listing.models:
        listing.about += f"; no models in the config file: use {config.name}:MODEL"
    return listing


async def collect(settings: Settings) -> list[ProviderListing]:
    """One listing per configured provider, the network ones fetched concurrently."""
    import asyncio

    configs = [c for c in settings.providers.values() if _is_configured(settings, c)]
    # The default provider first, then local, then the rest in config order.
    configs.sort(key=lambda c: (c.name != settings.default_provider, c.kind != "local"))

    async def one(config: ProviderConfig) -> ProviderListing:
        if config.kind == "together":
            return await _list_together(settings, config)
        if config.kind == "local":
            return _list_local(settings, config)
        return await _list_other(settings, config)

    return list(await asyncio.gather(*(one(c) for c in configs)))


def _print_text(listings: list[ProviderListing]) -> None:
    lines: list[str] = []
    for listing in listings:
        lines.append(f"{listing.name}: {listing.about}")
        lines += [f"  {key}: {value}" for key, value in listing.runtime.items()]
        width = max((len(m.spec) for m in listing.models), default=0)
        for model in listing.models:
            lines.append(f"  {model.spec:<{width}}  {model.note}".rstrip())
        lines.append("")
    sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")


def models(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    local_only: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Only the in-process (llama.cpp) providers, with how they run: the llama-cpp-python "
            "version and whether weights are repacked for this CPU, and why.",
        ),
    ] = False,
    refresh_prices: Annotated[
        bool,
        typer.Option(
            "--refresh-prices",
            help="Fetch Together's and OpenRouter's published prices into the log database (used for cost; never fetched during a turn).",
        ),
    ] = False,
) -> None:
    """List the configured providers and their models, as names to pass to -r / -a.

    Together's chat models are fetched when TOGETHER_API_KEY is set; local models are
    the bundled one and the GGUF paths in the config file's [providers.NAME] models.
    """
    with handle_errors(json_mode=json_output):
        import asyncio  # deferred, as in the other commands: keeps `moa --help` fast

        from moa_cli import logs
        from moa_cli.config import load_settings
        from moa_cli.redact import redact

        settings = load_settings()  # no line-up notice: nothing is being run
        logs.configure(settings.log_level)
        if refresh_prices:
            _refresh_prices(settings, json_output)
            return
        listings = asyncio.run(collect(settings))
        if local_only:
            listings = [listing for listing in listings if listing.kind == "local"]
        for listing in listings:
            if listing.error:
                sys.stderr.write(f"moa: warning: {redact(' '.join(listing.error.split()))}\n")
        if json_output:
            payload = {"providers": [asdict(listing) for listing in listings]}
            sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        else:
            _print_text(listings)


def _refresh_prices(settings: Settings, json_output: bool) -> None:
    """`moa models --refresh-prices`: each provider's catalogue into the log database."""
    from moa_cli.pricing import refresh
    from moa_cli.recorder import forget_prices
    from moa_cli.store import StoreError, open_store

    try:
        with open_store(settings.paths.data_dir) as store:
            results = refresh(settings, store)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    forget_prices()
    if json_output:
        payload = [{"provider": r.provider, "prices": r.count, "error": r.error, "skipped": r.skipped} for r in results]
        sys.stdout.write(json.dumps({"refreshed": payload}, ensure_ascii=False) + "\n")
    for r in results:
        if r.error:
            sys.stderr.write(f"moa: warning: could not fetch {r.provider} prices: {r.error}\n")
        elif r.skipped:
            sys.stderr.write(f"moa: {r.provider}: skipped ({r.skipped})\n")
        elif not json_output:
            sys.stdout.write(f"{r.provider}: {r.count} model prices\n")
