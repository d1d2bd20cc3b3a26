"""A reference no one watches: streamed (read without events) or asked for whole? CPU per call.

    python bench/bench_unwatched.py [--calls 40] [--rounds 3]

The fake server (in another process) answers every call with 100 tokens 10 ms apart, as in
bench_serve.py; `--calls` calls run at once through the together provider, `--rounds`
times. Each way's figure is this process's CPU time (user + system) per call: streamed
means `CompletionRequest(stream=True)`, every chunk read, decoded and yielded, with no
engine and no events; whole means `stream=False`, one JSON body (the fake server sends it
when the 100 tokens would have been generated). Run alternately, so load changes hit both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_serve import TEXT, start_upstream  # noqa: E402

from moa_cli.providers.together import TogetherProvider  # noqa: E402
from moa_cli.types import CompletionRequest, Finish, Usage  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_way(provider: TogetherProvider, calls: int, stream: bool) -> float:
    """CPU seconds per call for `calls` calls at once."""

    async def call(i: int) -> None:
        request = CompletionRequest(
            model="ref-0", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=512, stream=stream
        )
        parts: list[str] = []
        async for item in provider.stream(request):
            if not isinstance(item, (Finish, Usage)):
                parts.append(item)
        assert "".join(parts) == TEXT

    started = _cpu()
    await asyncio.gather(*(call(i) for i in range(calls)))
    return (_cpu() - started) / calls


async def run(base_url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    provider = TogetherProvider("together", api_key="bench", base_url=base_url, timeout=120, retries=0)
    figures: dict[str, list[float]] = {"streamed": [], "whole": []}
    try:
        await one_way(provider, calls, True)  # warm: connections, imports
        for _ in range(rounds):
            for name, stream in (("streamed", True), ("whole", False)):
                figures[name].append(await one_way(provider, calls, stream))
    finally:
        await provider.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream = start_upstream(["ref-0"])
    try:
        figures = asyncio.run(run(upstream.base_url, args.calls, args.rounds))
    finally:
        upstream.stop()
    print(f"{args.calls} calls at once, 100 tokens 10 ms apart, {args.rounds} rounds; load {os.getloadavg()[0]:.1f}")
    for name, values in figures.items():
        per = [v * 1000 for v in values]
        print(
            f"  {name:>8}: {statistics.median(per):.2f} ms of CPU per call (runs: {', '.join(f'{v:.2f}' for v in per)})"
        )


if __name__ == "__main__":
    main()
