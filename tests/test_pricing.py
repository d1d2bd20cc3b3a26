"""pricing.py: the sources in order (provider, config, catalogue, local), unknown never 0, worst case."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from moa_cli.config import load_settings
from moa_cli.errors import ConfigError
from moa_cli.pricing import (
    Price,
    PriceBook,
    config_prices,
    cost_text,
    format_usd,
    load_book,
    parse_openrouter,
    parse_together,
    refresh,
    total,
    worst_case,
)
from moa_cli.store import CallRecord, CatalogueEntry, Store
from tests.fakes.llm_server import FakeLLMServer, Reply

TOGETHER = {
    "data": [
        {
            "id": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "type": "chat",
            "pricing": {"input": 0.88, "output": 0.88, "hourly": 0},
        },
        {"id": "dedicated/only-hourly", "type": "chat", "pricing": {"input": 0, "output": 0, "hourly": 3.2}},
        {"id": "free/model", "type": "chat", "pricing": {"input": 0, "output": 0, "hourly": 0}},
        {"id": "no-pricing", "type": "chat"},
    ]
}
OPENROUTER = {
    "data": [
        {"id": "anthropic/claude-x", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
        {"id": "broken", "pricing": {"prompt": "n/a", "completion": "0"}},
    ]
}


def test_together_catalogue_per_million_and_hourly_is_not_free() -> None:
    entries = {e.model: e for e in parse_together(TOGETHER, fetched_at=0)}
    assert (
        entries["meta-llama/Llama-3.3-70B-Instruct-Turbo"].input_per_m,
        entries["meta-llama/Llama-3.3-70B-Instruct-Turbo"].output_per_m,
    ) == (0.88, 0.88)
    assert "dedicated/only-hourly" not in entries  # not serverless, and not free: unknown
    assert entries["free/model"].input_per_m == 0  # published as free
    assert "no-pricing" not in entries


def test_openrouter_catalogue_per_token_strings() -> None:
    entries = {e.model: e for e in parse_openrouter(OPENROUTER, fetched_at=0)}
    assert entries["anthropic/claude-x"].input_per_m == pytest.approx(3.0)
    assert entries["anthropic/claude-x"].output_per_m == pytest.approx(15.0)
    assert "broken" not in entries


def _call(spec: str, provider: str, model: str, p: int | None = 1000, c: int | None = 500) -> CallRecord:
    return CallRecord(1, 0, "proposer", spec, provider, model, prompt_tokens=p, completion_tokens=c)


def test_sources_in_order_provider_config_catalogue_local_unknown() -> None:
    book = PriceBook(
        overrides={"together:m": Price(2.0, 4.0, "config")},
        catalogue={
            ("together", "m"): CatalogueEntry("together", "m", 1.0, 1.0, "together /v1/models", 0),
            ("together", "n"): CatalogueEntry("together", "n", 1.0, 3.0, "together /v1/models", 0),
        },
        free_providers=frozenset({"local", "ollama"}),
    )
    reported = _call("m", "together", "m")
    book.price_call(reported, reported_cost=0.0123)
    assert (reported.cost_usd, reported.price_source) == (0.0123, "provider")  # 1. the provider's own figure
    configured = _call("m", "together", "m")
    book.price_call(configured)
    assert configured.price_source == "config" and configured.cost_usd == pytest.approx((1000 * 2 + 500 * 4) / 1e6)
    catalogued = _call("n", "together", "n")
    book.price_call(catalogued)
    assert catalogued.price_source.startswith("catalogue together /v1/models")
    assert catalogued.cost_usd == pytest.approx((1000 + 1500) / 1e6)
    local = _call("ollama:llama3.2:1b", "ollama", "llama3.2:1b", None, None)
    book.price_call(local)
    assert (local.cost_usd, local.price_source) == (0.0, "local")  # free even without counts
    unknown = _call("x", "together", "x")
    book.price_call(unknown)
    assert unknown.cost_usd is None and unknown.price_source is None  # never 0
    no_usage = _call("n", "together", "n", None, None)
    book.price_call(no_usage)
    assert no_usage.cost_usd is None  # a price but no token counts: unknown


def test_totals_say_at_least_and_never_zero_for_unknown() -> None:
    t = total([0.002, None, 0.001, None])
    assert t.cost_usd is None and t.priced_usd == pytest.approx(0.003) and t.unpriced == 2
    assert t.text() == "at least $0.003 (2 calls unpriced)"
    assert total([None, None]).text() == "cost unknown"
    assert total([0.0, 0.0]).text() == "$0"
    assert cost_text(1.5, 1) == "at least $1.50 (1 call unpriced)"
    assert [format_usd(x) for x in (0, 0.000123, 0.0123, 12.5)] == ["$0", "$0.000123", "$0.0123", "$12.50"]


def test_config_prices_and_their_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[pricing."openrouter:a/b"]\ninput = 1\noutput = 2.5\n')
    assert config_prices(config) == {"openrouter:a/b": Price(1.0, 2.5, "config")}
    config.write_text('[pricing."x"]\ninput = -1\noutput = 2\n')
    with pytest.raises(ConfigError, match="0 or more"):
        config_prices(config)
    config.write_text('[pricing."x"]\ninput = 1\n')
    with pytest.raises(ConfigError, match="input and output"):
        config_prices(config)
    assert config_prices(tmp_path / "missing.toml") == {}


def test_the_config_file_accepts_a_pricing_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('rounds = 2\n[pricing."alpha"]\ninput = 1\noutput = 1\n')
    settings = load_settings()
    assert settings.rounds == 2
    book = load_book(settings, None)
    assert book.price("alpha", "together", "alpha") == Price(1.0, 1.0, "config")
    assert book.price("local:smollm2", "local", "smollm2") == Price(0.0, 0.0, "local")
    assert book.price("ollama:x", "ollama", "x") == Price(0.0, 0.0, "local")


def test_worst_case_counts_every_call_at_max_tokens_and_the_injected_answers() -> None:
    book = PriceBook(overrides={s: Price(1.0, 2.0, "config") for s in ("a", "b", "j")})
    split = lambda spec: ("together", spec)  # noqa: E731
    messages = [{"role": "user", "content": "x" * 300}]  # 100 tokens by the estimate
    worst = worst_case(messages, references=["a", "b"], aggregator="j", rounds=2, max_tokens=100,
                       aggregator_prompt="p" * 30, split=split, book=book)  # fmt: skip
    base, injected = 100 + 8, 10 + 2 * (100 + 8)
    assert worst.calls == 5 and worst.output_tokens == 500
    assert worst.input_tokens == 2 * base + 2 * (base + injected) + (base + injected)
    assert worst.cost_usd == pytest.approx((worst.input_tokens * 1.0 + 500 * 2.0) / 1e6)
    partly = worst_case(messages, references=["a", "z"], aggregator="j", rounds=1, max_tokens=100,
                        aggregator_prompt="p", split=split, book=book)  # fmt: skip
    assert partly.cost_usd is None and partly.unpriced == ("z",) and "no price for z" in partly.text()


def test_refresh_fetches_both_catalogues_into_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    monkeypatch.setenv("TOGETHER_API_KEY", "tk-secret-1234")
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        body = TOGETHER if "together" in request.url.host else OPENROUTER
        return httpx.Response(200, json=body)

    settings = load_settings()
    with Store(tmp_path / "logs.db") as store:
        results = refresh(settings, store, transport=httpx.MockTransport(handler))
        assert [(r.provider, r.count, r.error) for r in results] == [("together", 2, None), ("openrouter", 1, None)]
        assert seen[0] == ("https://api.together.xyz/v1/models", "Bearer tk-secret-1234")
        assert seen[1] == ("https://openrouter.ai/api/v1/models", None)
        prices = store.prices()
        assert prices[("openrouter", "anthropic/claude-x")].output_per_m == pytest.approx(15.0)
        book = load_book(settings, store)
        assert (
            book.price(
                "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"
            ).input_per_m
            == 0.88
        )

        def failing(request: httpx.Request) -> httpx.Response:
            return httpx.Response(503, text="down")

        again = refresh(settings, store, transport=httpx.MockTransport(failing))
        assert again[0].error == "HTTP 503 from together"
        assert len(store.prices()) == 3  # a failed refresh keeps the old catalogue


def test_a_provider_reported_cost_is_used_for_the_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider-reported, config and unknown prices in one turn, through MoA.arun."""
    from moa_cli.api import MoA
    from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
    from moa_cli.store import flush_all
    from moa_cli.types import Usage

    monkeypatch.setenv("MOA_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[pricing."a"]\ninput = 1000\noutput = 1000\n')
    provider = ScriptedProvider()
    provider.set_default("a", Step("from a", usage=Usage(10, 2, 12)))
    provider.set_default("b", Step("from b", usage=Usage(10, 2, 12, cost=0.5)))
    provider.set_default("j", Step("final", usage=Usage(10, 2, 12)))
    moa = MoA(references=["a", "b"], aggregator="j", router=ScriptedRouter(provider))
    result = asyncio.run(moa.arun("hi"))
    assert result.cost_usd is None and result.unpriced_calls == 1  # j has no price
    assert result.priced_usd == pytest.approx(0.5 + 12 * 1000 / 1e6)
    assert json.loads(json.dumps(result.to_dict()))["cost_usd"] is None
    flush_all()
    with Store(tmp_path / "logs.db") as store:
        calls = {c.spec: c for c in store.turn().calls}
    assert (calls["a"].price_source, calls["b"].price_source, calls["j"].price_source) == ("config", "provider", None)
    assert calls["b"].cost_usd == 0.5 and calls["j"].cost_usd is None


# ---------------------------------------------------------------------------- a catalogue too big to read


def test_an_endless_or_huge_catalogue_is_refused_with_one_line(
    cli: Any, llm_server: FakeLLMServer, moa_home: Path
) -> None:
    """`moa models --refresh-prices` against a server whose model list never ends (at Together's
    URL and OpenRouter's): each is one warning line, read no further than the cap, and the
    command ends (without the cap it reads until memory runs out)."""
    (moa_home / "config.toml").write_text(f'[providers.openrouter]\nbase_url = "{llm_server.openai_base_url}"\n')
    piece = b'{"id": "m", "pricing": {"input": 1, "output": 1}}, ' * 1000  # about 50 KB
    llm_server.models_reply = Reply(raw=itertools.repeat(piece), raw_content_type="application/json")
    ran = cli(["models", "--refresh-prices", "--json"], timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["refreshed"] == [
        {"provider": provider, "prices": 0, "error": "the response is larger than 8 MiB (read no further)",
         "skipped": None}
        for provider in ("together", "openrouter")
    ]  # fmt: skip
    assert ran.stderr.splitlines() == [
        "moa: warning: could not fetch together prices: the response is larger than 8 MiB (read no further)",
        "moa: warning: could not fetch openrouter prices: the response is larger than 8 MiB (read no further)",
    ]


def test_a_catalogue_of_exactly_the_cap_is_read_and_an_error_body_is_cut(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path
) -> None:
    from moa_cli.pricing import CATALOGUE_BODY_LIMIT

    (moa_home / "config.toml").write_text(f'[providers.openrouter]\nbase_url = "{llm_server.openai_base_url}"\n')
    body = json.dumps(TOGETHER).encode()
    padded = body[:-1] + b" " * (CATALOGUE_BODY_LIMIT - len(body)) + b"}"  # exactly the cap
    llm_server.models_reply = Reply(raw=[padded[i : i + 65536] for i in range(0, len(padded), 65536)],
                                    raw_content_type="application/json")  # fmt: skip
    settings = load_settings()
    with Store(moa_home / "logs.db") as store:
        results = refresh(settings, store)
        assert [(r.provider, r.count, r.error) for r in results] == [("together", 2, None), ("openrouter", 0, None)]
        llm_server.models_reply = Reply(status=503, raw=itertools.repeat(b"x" * 65536), raw_content_type="text/plain")
        again = refresh(settings, store)
        assert [r.error for r in again] == ["HTTP 503 from together", "HTTP 503 from openrouter"]
        assert len(store.prices()) == 2  # a failed refresh keeps the old catalogue
