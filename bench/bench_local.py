"""Speed of the embedded local model, and what running it in-process saves over HTTP.

    python bench/bench_local.py [--repeat 2] [--max-tokens 256]

1. The bundled model (SmolLM2-135M-Instruct Q4_1) through `LocalProvider`: load time,
   prompt evaluation speed on an aggregator-sized prompt, generation speed (tokens per
   second after the first token), three 128-token samples one after another against the
   same three started together (decoded as sequences of one context), and four different
   prompts of 64 tokens each, one after another against together (their steps shared).
2. A default local turn (`moa ask --local`: 3 samples of local:smollm2, aggregated as
   the built-in line-up says (consensus), max_tokens 256, seeds 1-3): wall time of the whole command from a cold
   start, then of warm turns in one process (model already loaded).
3. The same turn through `python -m llama_cpp.server` over HTTP (an OpenAI-compatible
   provider in a temporary MOA_HOME config), with the same GGUF, threads, batch size,
   context and seeds: the command from a cold client (server already up), and warm turns.
   Skipped, with a message, when llama-cpp-python[server]'s packages are missing.

Timings on a shared machine are noisy: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moa_cli import defaults  # noqa: E402
from moa_cli.config import ProviderConfig, load_settings  # noqa: E402
from moa_cli.types import CompletionRequest, Usage  # noqa: E402

QUESTION = "Why is the sky blue? Explain it simply."
STORY = "Write a long story about a dragon who learns to bake bread."
SERVER_PACKAGES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} on {os.cpu_count()} CPUs"


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOGETHER_", "MOA_"))}
    return {**env, "MOA_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}


# ---------------------------------------------------------------------------- 1. raw model speed


async def model_speed() -> None:
    from moa_cli.providers import local
    from moa_cli.providers.local import LocalProvider

    provider = LocalProvider(ProviderConfig("local", "local"), verbose=False)

    async def run(messages: list[Any], max_tokens: int, seed: int) -> tuple[float, float, Usage]:
        """(seconds to first token, total seconds, usage)."""
        started = time.perf_counter()
        first: float | None = None
        usage = Usage()
        request = CompletionRequest("smollm2", messages, temperature=0.7, max_tokens=max_tokens, seed=seed)
        async for item in provider.stream(request):
            if isinstance(item, Usage):
                usage = item
            elif first is None:
                first = time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started, usage

    started = time.perf_counter()
    await run([{"role": "user", "content": "Hi"}], 1, 1)
    print(
        f"  load + first call         {time.perf_counter() - started:6.2f} s  "
        f"(context {local.MAX_CONTEXT}, batch {local.PROMPT_BATCH}, threads {local.generation_threads()}, prompt {local.batch_threads()})"
    )

    # An aggregator-sized prompt: the instructions plus three ~250-token answers.
    answer = " ".join(["Sunlight is scattered by the molecules of the air, and blue light most of all."] * 16)
    system = "\n\n".join(f"<response_{n}>\n{answer}\n</response_{n}>" for n in (1, 2, 3))
    speeds = []
    for seed in (1, 2):  # distinct first lines: no part of the prompt comes from llama.cpp's cache
        ttft, _, usage = await run(
            [{"role": "system", "content": f"Run {seed}.\n\n{system}"}, {"role": "user", "content": QUESTION}], 1, seed
        )
        speeds.append((usage.prompt_tokens or 0) / ttft)
    print(
        f"  prompt evaluation         {statistics.median(speeds):6.0f} tokens/s  "
        f"({usage.prompt_tokens} tokens, median of 2)"
    )

    speeds = []
    for seed in (1, 2, 3):
        ttft, total, usage = await run([{"role": "user", "content": STORY}], 128, seed)
        speeds.append(((usage.completion_tokens or 1) - 1) / (total - ttft))
    print(
        f"  generation                {statistics.median(speeds):6.1f} tokens/s  "
        f"(128 tokens, median of 3: {', '.join(f'{s:.1f}' for s in speeds)})"
    )

    # Self-MoA's samples: three calls with one prompt, awaited one after another (each decoded
    # alone) and started together (one prompt evaluation, then one batch per step for all three).
    story = [{"role": "user", "content": STORY}]
    for label, together in (("one after another", False), ("together", True)):
        started = time.perf_counter()
        if together:
            runs = await asyncio.gather(*(run(story, 128, seed) for seed in (4, 5, 6)))
        else:
            runs = [await run(story, 128, seed) for seed in (4, 5, 6)]
        seconds = time.perf_counter() - started
        tokens = sum(usage.completion_tokens or 0 for _, _, usage in runs)
        print(f"  3 samples, {label:<17} {seconds:6.2f} s  ({tokens} tokens, {tokens / seconds:.0f} tokens/s in all)")

    # Four clients asking different things (moa serve, moa batch --parallel 4): each prompt is
    # evaluated on its own, then their steps are shared (continuous batching).
    asks = ["Name three fruits.", "Describe the sea.", "What is rain?", "Say hello politely."]
    for label, together in (("one after another", False), ("together", True)):
        started = time.perf_counter()
        if together:
            runs = await asyncio.gather(*(run([{"role": "user", "content": q}], 64, 1) for q in asks))
        else:
            runs = [await run([{"role": "user", "content": q}], 64, 1) for q in asks]
        seconds = time.perf_counter() - started
        tokens = sum(usage.completion_tokens or 0 for _, _, usage in runs)
        print(f"  4 prompts, {label:<17} {seconds:6.2f} s  ({tokens} tokens, {tokens / seconds:.0f} tokens/s in all)")


# ---------------------------------------------------------------------------- 2/3. whole turns


def cli_turn(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "moa_cli", "ask", "--json", *args, QUESTION],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"moa ask failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds, json.loads(proc.stdout)


def warm_turns(settings: Any, repeat: int, marks: list[tuple[float, float]] | None = None) -> list[tuple[float, Any]]:
    """`repeat` turns in one process; `marks` gets (first draft text, first answer text) in seconds."""
    from moa_cli.api import MoA
    from moa_cli.events import AnswerDelta, CallDelta, Event

    async def turns() -> list[tuple[float, Any]]:
        out = []
        async with MoA(settings=settings) as moa:
            for _ in range(repeat):
                started = time.perf_counter()
                first: dict[str, float] = {}

                def on_event(event: Event, first: dict[str, float] = first, started: float = started) -> None:
                    kind = (
                        "draft"
                        if isinstance(event, CallDelta)
                        else "answer"
                        if isinstance(event, AnswerDelta)
                        else None
                    )
                    if kind and kind not in first:
                        first[kind] = time.perf_counter() - started

                result = await moa.arun(QUESTION, on_event=on_event)
                out.append((time.perf_counter() - started, result))
                if marks is not None:
                    marks.append((first.get("draft", float("nan")), first.get("answer", float("nan"))))
        return out

    return asyncio.run(turns())


def describe(result: Any) -> str:
    usage = result["usage"] if isinstance(result, dict) else result.usage.to_dict()
    if usage["total_tokens"] is None:
        return "token usage not reported by the server"
    return f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, port: int, threads: int, threads_batch: int) -> tuple[subprocess.Popen[bytes], float]:
    import httpx

    from moa_cli.providers import local

    started = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(local.MAX_CONTEXT),
            "--n_batch",
            str(local.PROMPT_BATCH),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads_batch),
            # By default a new request interrupts the one running: MoA's parallel references would cut each other.
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"llama_cpp.server exited: {server.stderr.read().decode()[-2000:] if server.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return server, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("llama_cpp.server did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="warm turns per path (default 2)")
    parser.add_argument("--max-tokens", type=int, default=defaults.LOCAL_MAX_TOKENS, help="per call (default 256)")
    parser.add_argument("--no-http", action="store_true", help="skip 3. (llama_cpp.server over HTTP)")
    parser.add_argument("--turns-only", action="store_true", help="skip 1. (the raw model speed)")
    args = parser.parse_args()

    from moa_cli import diagnostics
    from moa_cli.providers import local

    diagnostics.configure("WARNING")
    if not local.llama_cpp_installed() or local.bundled_model_path() is None:
        print(f"skipped: the [local] extra is not installed ({local.INSTALL_HINT})")
        return
    model = local.bundled_model_path()
    assert model is not None
    threads, threads_batch = local.generation_threads(), local.batch_threads()
    print(f"moa local benchmark: {model.name}, {load()}")

    if not args.turns_only:
        print("\n1. The bundled model in-process")
        asyncio.run(model_speed())

    lineup = f"3 x local:smollm2, aggregation {defaults.LOCAL_AGGREGATION}, max_tokens {args.max_tokens}, seed {defaults.LOCAL_SEED}"
    print(f"\n2. Default local turn in-process ({lineup})")
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(Path(tmp))
        cold, result = cli_turn(["--local", "--max-tokens", str(args.max_tokens)], env)
        print(f"  moa ask --local (cold)    {cold:6.2f} s   {describe(result)}")
        settings = load_settings({"max_tokens": args.max_tokens}, env, force_local=True)
        marks: list[tuple[float, float]] = []
        local_warm = warm_turns(settings, args.repeat, marks)
    for (seconds, result), (draft, answer) in zip(local_warm, marks, strict=True):
        print(
            f"  warm turn                 {seconds:6.2f} s   first draft text {draft:5.2f} s, "
            f"first answer text {answer:5.2f} s, {describe(result)}"
        )
    print(
        f"  median warm turn          {statistics.median(s for s, _ in local_warm):6.2f} s   "
        f"first draft text {statistics.median(d for d, _ in marks):5.2f} s, "
        f"first answer text {statistics.median(a for _, a in marks):5.2f} s  ({load()})"
    )
    if args.no_http:
        return

    print("\n3. The same turn through python -m llama_cpp.server over HTTP")
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f'  skipped: llama_cpp.server needs {", ".join(missing)} (pip install "llama-cpp-python[server]")')
        return
    port = free_port()
    server, startup = start_server(model, port, threads, threads_batch)
    try:
        print(f"  server start-up           {startup:6.2f} s   (port {port}, model loaded)")
        with tempfile.TemporaryDirectory() as tmp:
            env = clean_env(Path(tmp))
            (Path(tmp) / "config.toml").write_text(
                f'[providers.llamacpp]\nkind = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            )
            spec = "llamacpp:smollm2"
            flags = [
                "-r",
                spec,
                "-r",
                spec,
                "-r",
                spec,
                "-a",
                spec,
                "--max-tokens",
                str(args.max_tokens),
                "--seed",
                str(defaults.LOCAL_SEED),
            ]
            cold_http, result = cli_turn(flags, env)
            print(f"  moa ask (cold client)     {cold_http:6.2f} s   {describe(result)}")
            settings = load_settings(
                {
                    "references": [spec] * 3,
                    "aggregator": spec,
                    "max_tokens": args.max_tokens,
                    "seed": defaults.LOCAL_SEED,
                },
                env,
            )
            http_warm = warm_turns(settings, args.repeat)
        for seconds, result in http_warm:
            print(f"  warm turn                 {seconds:6.2f} s   {describe(result)}")
    finally:
        server.terminate()
        server.wait(timeout=30)

    local_median = statistics.median(s for s, _ in local_warm)
    http_median = statistics.median(s for s, _ in http_warm)
    print("\nSummary")
    print(
        f"  first answer from nothing: in-process {cold:.2f} s  vs  HTTP {startup + cold_http:.2f} s "
        f"(server start-up {startup:.2f} s + turn {cold_http:.2f} s)"
    )
    print(
        f"  warm turn (median):        in-process {local_median:.2f} s  vs  HTTP {http_median:.2f} s  "
        f"({http_median - local_median:+.2f} s: HTTP takes {http_median / local_median:.1f} times as long)"
    )
    print(f"  {load()}")


if __name__ == "__main__":
    main()
