"""The ScriptedProvider itself: what it streams, records and checks."""

from __future__ import annotations

import asyncio

import pytest

from moa_cli.errors import ProviderError, RateLimitError
from moa_cli.providers.base import Provider
from moa_cli.providers.scripted import (
    ScriptedProvider,
    ScriptedRouter,
    Step,
    UnconsumedModelSteps,
    UnexpectedModelCall,
)
from moa_cli.types import CompletionRequest, Finish, Usage


def request(model: str = "m") -> CompletionRequest:
    return CompletionRequest(model=model, messages=[{"role": "user", "content": "two words"}], max_tokens=9, seed=3)


def collect(provider: ScriptedProvider, model: str = "m") -> list:
    async def main() -> list:
        return [item async for item in provider.stream(request(model))]

    return asyncio.run(main())


def test_it_is_a_provider() -> None:
    provider = ScriptedProvider("fake")
    assert isinstance(provider, Provider)
    assert ScriptedRouter(provider).resolve("any/model") == (provider, "any/model")


def test_a_step_streams_its_words_then_finish_then_usage() -> None:
    provider = ScriptedProvider().enqueue("m", "Hello big world")
    assert collect(provider) == ["Hello ", "big ", "world", Finish("stop"), Usage(2, 3, 5)]


def test_exact_pieces_finish_reason_and_usage() -> None:
    provider = ScriptedProvider().enqueue("m", Step(["a", "b"], finish_reason="length", usage=Usage(1, 1, 2)))
    assert collect(provider) == ["a", "b", Finish("length"), Usage(1, 1, 2)]
    provider.enqueue("m", Step("x", finish_reason=None, report_usage=False))
    assert collect(provider) == ["x"]


def test_queue_then_default_then_the_built_in_answer() -> None:
    provider = ScriptedProvider().enqueue("m", "first").set_default("m", "again")
    assert collect(provider)[0] == "first"
    assert collect(provider)[0] == "again" and collect(provider)[0] == "again"
    assert collect(provider, "other")[:3] == ["Answer ", "from ", "other."]


def test_calls_are_recorded() -> None:
    provider = ScriptedProvider()
    collect(provider, "a")
    collect(provider, "b")
    assert [c.model for c in provider.calls] == ["a", "b"]
    assert provider.calls_for("b")[0].seed == 3


def test_errors_by_kind_after_some_pieces() -> None:
    provider = ScriptedProvider().enqueue("m", Step("one two three", error="rate_limit", status=429, error_after=1))
    seen: list = []

    async def main() -> None:
        async for item in provider.stream(request()):
            seen.append(item)

    with pytest.raises(RateLimitError) as caught:
        asyncio.run(main())
    assert seen == ["one "] and caught.value.status == 429 and caught.value.kind == "rate_limit"


def test_a_kind_without_its_own_class_is_a_provider_error_of_that_kind() -> None:
    provider = ScriptedProvider().enqueue("m", Step(error="cancelled"))
    with pytest.raises(ProviderError) as caught:
        collect(provider)
    assert type(caught.value) is ProviderError and caught.value.kind == "cancelled"


def test_strict_refuses_unscripted_models() -> None:
    with pytest.raises(UnexpectedModelCall):
        collect(ScriptedProvider(strict=True))


def test_assert_complete() -> None:
    provider = ScriptedProvider().enqueue("m", "one", "two")
    collect(provider)
    with pytest.raises(UnconsumedModelSteps, match="'m': 1"):
        provider.assert_complete()
    collect(provider)
    provider.assert_complete()


def test_list_models_and_close() -> None:
    provider = ScriptedProvider().enqueue("a", "x").set_default("b", "y")
    assert asyncio.run(provider.list_models()) == ["a", "b"]
    asyncio.run(provider.aclose())
    assert provider.closed


def test_closing_a_stream_early_is_recorded() -> None:
    provider = ScriptedProvider().enqueue("m", Step("x", endless=True))

    async def main() -> None:
        stream = provider.stream(request())
        assert await anext(stream) == "x"
        await stream.aclose()

    asyncio.run(main())
    assert [c.model for c in provider.cancelled] == ["m"] and provider.active == 0
