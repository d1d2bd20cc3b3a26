"""What a call cost, and where its price came from. Unknown is None: never 0, never a guess.

The price of a call, first source that applies:

    1. provider   a cost the provider reported in its response (OpenRouter's `usage.cost`)
    2. config     `[pricing."provider:model"]` in the config file: `input` and `output`,
                  USD per million tokens
    3. catalogue  the provider's published prices, cached in the log database with their
                  fetch time (`moa models --refresh-prices`); never fetched during a turn.
                  Together's /v1/models gives `pricing.input`/`pricing.output` per million
                  tokens (an entry with only an hourly price is a dedicated endpoint: not
                  serverless, and not free); OpenRouter's /api/v1/models per-token strings
    4. local      `local:` and Ollama models run on your machine: 0
    otherwise     unknown (None)

A total with unknown parts reads "at least $X (N calls unpriced)" and is null in JSON.
`worst_case` is what `--max-cost` and `/estimate` check before a turn: every call at its
`max_tokens`, and each prompt counted (the references' answers included, at max_tokens).
"""

from __future__ import annotations

import math
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_cli.errors import ConfigError
from moa_cli.store import CallRecord, CatalogueEntry, Store

PER = 1_000_000  # prices are per million tokens
TOGETHER_HOST = "https://api.together.xyz"
OPENROUTER_MODELS = "https://openrouter.ai/api/v1/models"
LOCAL_HOSTS = ("localhost:11434", "127.0.0.1:11434")
# Tokens per message a chat template adds around each message, at most, in practice.
MESSAGE_OVERHEAD = 8


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input and output tokens, and where the figure came from."""

    input_per_m: float
    output_per_m: float
    source: str

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if self.input_per_m == 0 and self.output_per_m == 0:
            return 0.0  # free whatever the counts
        if prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / PER


# ---------------------------------------------------------------------------- the sources


def config_prices(config_file: Path | None) -> dict[str, Price]:
    """`[pricing."provider:model"]` tables from the config file: spec -> Price."""
    if config_file is None:
        return {}
    try:
        data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # load_settings reports a broken file
    table = data.get("pricing", {})
    if not isinstance(table, dict):
        raise ConfigError(f'{config_file}: pricing must be a table: [pricing."provider:model"]')
    prices: dict[str, Price] = {}
    for spec, entry in table.items():
        where = f'{config_file}: [pricing."{spec}"]'
        if not isinstance(entry, dict) or set(entry) - {"input", "output"}:
            raise ConfigError(f"{where} takes input and output, USD per million tokens")
        values = [entry.get("input"), entry.get("output")]
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in values
        ):
            raise ConfigError(f"{where}: input and output must both be numbers, 0 or more (USD per million tokens)")
        prices[spec] = Price(float(values[0]), float(values[1]), "config")  # type: ignore[arg-type]
    return prices


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) and number >= 0 else None
    return None


def parse_together(data: Any, *, provider: str = "together", fetched_at: float | None = None) -> list[CatalogueEntry]:
    """Together's /v1/models: `pricing.input`/`pricing.output` per million tokens.

    An entry priced only by the hour (`hourly` > 0, input and output 0) is a dedicated
    endpoint: its per-token price is unknown, so it is left out rather than read as free.
    """
    items = data.get("data", data) if isinstance(data, dict) else data
    at = time.time() if fetched_at is None else fetched_at
    entries = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not item.get("id") or not isinstance(item.get("pricing"), dict):
            continue
        pricing = item["pricing"]
        inp, out = _number(pricing.get("input")), _number(pricing.get("output"))
        if inp is None or out is None:
            continue
        hourly = _number(pricing.get("hourly")) or 0.0
        if inp == 0 and out == 0 and hourly > 0:
            continue
        entries.append(CatalogueEntry(provider, str(item["id"]), inp, out, "together /v1/models", at))
    return entries


def parse_openrouter(
    data: Any, *, provider: str = "openrouter", fetched_at: float | None = None
) -> list[CatalogueEntry]:
    """OpenRouter's /api/v1/models: `pricing.prompt`/`pricing.completion`, USD per token, as strings."""
    items = data.get("data", []) if isinstance(data, dict) else []
    at = time.time() if fetched_at is None else fetched_at
    entries = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not item.get("id") or not isinstance(item.get("pricing"), dict):
            continue
        inp, out = _number(item["pricing"].get("prompt")), _number(item["pricing"].get("completion"))
        if inp is None or out is None:
            continue
        entries.append(CatalogueEntry(provider, str(item["id"]), inp * PER, out * PER, "openrouter /api/v1/models", at))
    return entries


# ---------------------------------------------------------------------------- looking up


@dataclass(slots=True)
class PriceBook:
    """Every price a turn may need, loaded before it runs: no I/O while it runs."""

    overrides: Mapping[str, Price] = field(default_factory=dict)  # spec -> Price (config)
    catalogue: Mapping[tuple[str, str], CatalogueEntry] = field(default_factory=dict)
    free_providers: frozenset[str] = frozenset()  # provider names whose models cost 0

    def price(self, spec: str, provider: str, model: str) -> Price | None:
        override = self.overrides.get(spec) or self.overrides.get(f"{provider}:{model}")
        if override is not None:
            return override
        entry = self.catalogue.get((provider, model))
        if entry is not None:
            day = time.strftime("%Y-%m-%d", time.localtime(entry.fetched_at))
            return Price(entry.input_per_m, entry.output_per_m, f"catalogue {entry.source} {day}")
        if provider in self.free_providers:
            return Price(0.0, 0.0, "local")
        return None

    def price_call(self, call: CallRecord, reported_cost: float | None = None) -> None:
        """Set the call's price, its source and its cost (None when unknown)."""
        if reported_cost is not None:
            call.price_source, call.cost_usd = "provider", reported_cost
            return
        price = self.price(call.spec, call.provider, call.model)
        if price is None:
            call.price_source, call.cost_usd = None, None
            return
        call.price_input, call.price_output, call.price_source = price.input_per_m, price.output_per_m, price.source
        call.cost_usd = price.cost(call.prompt_tokens, call.completion_tokens)


def free_providers(providers: Mapping[str, Any]) -> frozenset[str]:
    """`local` providers and Ollama (by name or its usual address) run on your machine."""
    free = set()
    for name, config in providers.items():
        base_url = getattr(config, "base_url", None) or ""
        if getattr(config, "kind", None) == "local" or name == "ollama" or any(h in base_url for h in LOCAL_HOSTS):
            free.add(name)
    return frozenset(free)


def load_book(settings: Any, store: Store | None, pairs: Iterable[tuple[str, str]] | None = None) -> PriceBook:
    """The price book for `settings` (config file, the cached catalogue, the free providers)."""
    paths = getattr(settings, "paths", None)
    overrides = config_prices(paths.config_file if paths is not None else None)
    catalogue = store.prices(pairs) if store is not None else {}
    return PriceBook(overrides, catalogue, free_providers(settings.providers))


# ---------------------------------------------------------------------------- totals


@dataclass(frozen=True, slots=True)
class Total:
    """A sum of call costs: `cost_usd` when every call is priced, else None."""

    priced_usd: float
    unpriced: int
    calls: int

    @property
    def cost_usd(self) -> float | None:
        return None if self.unpriced else self.priced_usd

    def text(self) -> str:
        return cost_text(self.priced_usd, self.unpriced, self.calls)


def total(costs: Sequence[float | None]) -> Total:
    priced = sum((c for c in costs if c is not None), 0.0)
    return Total(priced, sum(1 for c in costs if c is None), len(costs))


def format_usd(amount: float) -> str:
    """$0, $0.000123, $0.0123, $1.23."""
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.6f}".rstrip("0")
    if amount < 1:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


def cost_text(priced: float, unpriced: int, calls: int | None = None) -> str:
    """`$0.0123`, `at least $0.0123 (2 calls unpriced)`, or `cost unknown`."""
    if not unpriced:
        return format_usd(priced)
    noun = "call" if unpriced == 1 else "calls"
    if calls is not None and unpriced >= calls:
        return "cost unknown"
    return f"at least {format_usd(priced)} ({unpriced} {noun} unpriced)"


# ---------------------------------------------------------------------------- before a turn


def estimate_tokens(text: str) -> int:
    """A generous count of a text's tokens: one per 3 bytes of UTF-8 (real ones average ~4)."""
    return math.ceil(len(text.encode("utf-8")) / 3)


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst case of a turn: every call writes max_tokens."""

    cost_usd: float | None  # None: some price is unknown
    priced_usd: float
    calls: int
    unpriced: tuple[str, ...]  # the specs without a price
    input_tokens: int
    output_tokens: int

    def text(self) -> str:
        what = f"{self.calls} calls at max_tokens, about {self.input_tokens:,} tokens in and {self.output_tokens:,} out"
        if self.cost_usd is not None:
            return f"at most {format_usd(self.cost_usd)} ({what})"
        names = ", ".join(dict.fromkeys(self.unpriced))
        return f"unknown: no price for {names} ({what}; {format_usd(self.priced_usd)} for the rest)"


def worst_case(
    messages: Sequence[Mapping[str, str]],
    *,
    references: Sequence[str],
    aggregator: str,
    rounds: int,
    max_tokens: int,
    aggregator_prompt: str,
    split: Any,
    book: PriceBook,
    aggregator_max_tokens: int | None = None,
    earlier_answers: int = 0,
    reference_max_tokens: int | None = None,
) -> Estimate:
    """Every call of the turn at `max_tokens`; the injected answers counted at max_tokens each.

    A reference writes at most `reference_max_tokens` when it is given (--reference-max-tokens).

    `split(spec)` gives (provider name, model name) for a spec. `aggregator_max_tokens` is the
    answer's own budget when a turn sets one (`moa serve` takes it from the request).
    `earlier_answers` counts answers not yet written that the prompt will hold (a later turn
    of a multi-turn item, before the earlier turns ran), each at the answer's budget.
    """
    answer_budget = aggregator_max_tokens or max_tokens
    base = sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages)
    base += earlier_answers * (answer_budget + MESSAGE_OVERHEAD)
    reference_budget = reference_max_tokens or max_tokens
    injected = estimate_tokens(aggregator_prompt) + len(references) * (reference_budget + MESSAGE_OVERHEAD)
    calls: list[tuple[str, int, int]] = []  # (spec, tokens in, most tokens out)
    for layer in range(1, rounds + 1):
        calls += [(spec, base + (injected if layer > 1 else 0), reference_budget) for spec in references]
    calls.append((aggregator, base + injected, answer_budget))
    priced = 0.0
    unpriced: list[str] = []
    for spec, tokens_in, tokens_out in calls:
        provider, model = split(spec)
        price = book.price(spec, provider, model)
        cost = price.cost(tokens_in, tokens_out) if price is not None else None
        if cost is None:
            unpriced.append(spec)
        else:
            priced += cost
    return Estimate(
        None if unpriced else priced,
        priced,
        len(calls),
        tuple(unpriced),
        sum(t for _, t, _ in calls),
        sum(out for _, _, out in calls),
    )


# ---------------------------------------------------------------------------- the catalogue


@dataclass(slots=True)
class Refreshed:
    provider: str
    count: int = 0
    error: str | None = None
    skipped: str | None = None


def _together_target(settings: Any) -> tuple[str, str | None]:
    config = settings.providers.get("together")
    base = (config.base_url if config is not None else None) or TOGETHER_HOST  # TOGETHER_BASE_URL when set
    key_env = (config.api_key_env if config is not None else None) or "TOGETHER_API_KEY"
    return base.rstrip("/").removesuffix("/v1") + "/v1/models", settings.env.get(key_env, "").strip() or None


def _openrouter_target(settings: Any) -> tuple[str, str | None] | None:
    config = settings.providers.get("openrouter")
    if config is None:
        return None
    key = settings.env.get(config.api_key_env or "OPENROUTER_API_KEY", "").strip() or None
    base = (config.base_url or OPENROUTER_MODELS.removesuffix("/models")).rstrip("/")
    return base + "/models", key


#: A catalogue past this is refused, not read further: OpenRouter's, among the largest, is about
#: 1.5 MB. An error body is cut at providers.bounded's ERROR_BODY_LIMIT, as the SDKs' are.
CATALOGUE_BODY_LIMIT = 8 * 2**20


async def _cap_body(response: Any) -> None:
    """httpx response hook: providers.bounded's cap, before the body is read."""
    from moa_cli.providers.bounded import ERROR_BODY_LIMIT, cap

    if response.status_code >= 400:
        cap(response, ERROR_BODY_LIMIT)
    else:
        cap(response, CATALOGUE_BODY_LIMIT, refuse=True)


def refresh(settings: Any, store: Store, *, transport: Any = None, timeout: float = 15.0) -> list[Refreshed]:
    """Fetch Together's and OpenRouter's catalogues into the log database (`moa models --refresh-prices`).

    Each body is capped (CATALOGUE_BODY_LIMIT): a bigger or endless one is that provider's
    one-line error, never read whole. The client keeps httpx's own transports (a proxy from
    the environment applies): the cap is a response hook.
    """
    import asyncio

    return asyncio.run(_refresh(settings, store, transport, timeout))


async def _refresh(settings: Any, store: Store, transport: Any, timeout: float) -> list[Refreshed]:
    import httpx  # deferred: only this command fetches prices

    from moa_cli.providers.bounded import BodyTooLarge
    from moa_cli.redact import clean_server_text

    results: list[Refreshed] = []
    targets: list[tuple[str, str, str | None, Any]] = []
    url, key = _together_target(settings)
    if key:
        targets.append(("together", url, key, parse_together))
    else:
        results.append(Refreshed("together", skipped="TOGETHER_API_KEY is not set"))
    openrouter = _openrouter_target(settings)
    if openrouter is not None:
        targets.append(("openrouter", openrouter[0], openrouter[1], parse_openrouter))
    hooks = {"response": [_cap_body]}
    async with httpx.AsyncClient(transport=transport, timeout=timeout, event_hooks=hooks) as client:
        for provider, url, key, parse in targets:
            result = Refreshed(provider)
            try:
                response = await client.get(url, headers={"Authorization": f"Bearer {key}"} if key else {})
                response.raise_for_status()
                entries = parse(response.json(), provider=provider)
                result.count = store.put_prices(entries, provider=provider)
            except BodyTooLarge as exc:
                result.error = str(exc)
            except httpx.HTTPStatusError as exc:
                result.error = f"HTTP {exc.response.status_code} from {provider}"
            except (httpx.HTTPError, ValueError) as exc:
                result.error = clean_server_text(f"{type(exc).__name__}: {exc}")
            results.append(result)
    return results
