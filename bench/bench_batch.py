"""`moa batch` figures for the README: wall time against the ideal, throughput, memory.

    python bench/bench_batch.py [--items 200] [--parallel 20]

The fake chat server runs in another process (its own GIL) and answers every call after
50 ms; moa runs in this process through the real together SDK, exactly as `moa batch`
does (prepare + run_batch on the loop `moa batch` uses, the start-up heap frozen, the
sidecar fsynced per item, the conversation log on).

(a) 200 items at --parallel 20, 2 references + aggregator: wall time against
    items / parallel x the turn's critical path (one item alone, median of 10). Target (issue
    22): <= 1.2x the ideal, and moa's CPU per upstream call <= 0.5 ms; the floor printed beside
    it is bare httpx's own CPU for the same request.
(b) throughput with a server that answers at once (latency 0), 500 items at --parallel 20.
(c) peak resident memory of the process at the end of (a) and (b).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import configure_env, start_server  # noqa: E402

TEXT_TOKENS = 30


def write_input(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def run(tmp: Path, n: int, parallel: int, name: str) -> tuple[float, list[float]]:
    """Wall seconds of a run, and each item's own seconds (from the sidecar)."""
    from moa_cli import batch, longrun
    from moa_cli.config import load_settings

    settings = load_settings({"references": ["ref-a", "ref-b"], "aggregator": "judge"})
    job = batch.Job(input=write_input(tmp / f"{name}.in.jsonl", n), output=tmp / f"{name}.jsonl", parallel=parallel)
    prepared = batch.prepare(job, settings)
    longrun.freeze_startup()  # as `moa batch` does, on the loop it runs on (uvloop where installed)
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=longrun.event_loop_factory()) as runner:
        summary = runner.run(batch.run_batch(prepared))
    seconds = time.perf_counter() - started
    assert summary.written and summary.done == n, summary
    lines = batch.sidecar_path(job.output).read_text().splitlines()[1:]
    return seconds, [json.loads(line)["seconds"] for line in lines]


def floor_per_call(base_url: str, n: int, parallel: int) -> float:
    """CPU seconds per call of bare httpx (no SDK, no moa): the same non-streamed request,
    `parallel` at a time through one client. The Python HTTP stack's own cost: the floor."""
    import httpx

    from moa_cli.providers import pool
    from moa_cli.providers.bounded import CONNECTION_LIMITS

    body = {"model": "ref-a", "messages": [{"role": "user", "content": "Question?"}], "max_tokens": 512}

    async def go() -> float:
        async with httpx.AsyncClient(
            transport=pool.transport(httpx.Limits(**CONNECTION_LIMITS)), base_url=base_url
        ) as client:
            slots = asyncio.Semaphore(parallel)

            async def one() -> None:
                async with slots:
                    response = await client.post("/v1/chat/completions", json=body)
                    json.loads(response.content)

            await asyncio.gather(*(one() for _ in range(parallel)))  # warm: open the connections
            started = _cpu()
            await asyncio.gather(*(one() for _ in range(n)))
            return (_cpu() - started) / n

    from moa_cli import longrun

    with asyncio.Runner(loop_factory=longrun.event_loop_factory()) as runner:  # the loop moa batch runs on
        return runner.run(go())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=20)
    args = parser.parse_args()
    slow = {m: (0.05, 0.0) for m in ("ref-a", "ref-b", "judge")}
    server, base_url = start_server(slow)
    with tempfile.TemporaryDirectory() as home:
        configure_env(base_url, home)
        tmp = Path(home)
        from moa_cli.providers.together import preload

        preload()
        run(tmp, 2, 1, "warm-up")
        # The critical path: one item at a time on a warm pool (its references, then the aggregator).
        critical = statistics.median(run(tmp, 10, 1, "one")[1])
        cpu0 = _cpu()
        wall, _ = run(tmp, args.items, args.parallel, "slow")
        cpu = _cpu() - cpu0
        ideal = args.items / args.parallel * critical
        rss_a = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"critical path of one item (2 refs + aggregator, 50 ms per call): {critical * 1000:.0f} ms")
        print(
            f"(a) {args.items} items at --parallel {args.parallel}: {wall:.2f} s; ideal "
            f"{args.items}/{args.parallel} x {critical * 1000:.0f} ms = {ideal:.2f} s ({(wall / ideal - 1) * 100:+.1f}%)"
        )
        print(
            f"    moa's CPU time in (a): {cpu:.2f} s ({cpu / (3 * args.items) * 1000:.1f} ms per call); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        print(f"    peak RSS after (a): {rss_a:.1f} MiB")
        floor = floor_per_call(base_url, 3 * args.items, 3 * args.parallel)
        print(f"    the floor, bare httpx on the same server (no SDK, no moa): {floor * 1000:.2f} ms of CPU per call")
    server.terminate()

    fast = {m: (0.0, 0.0) for m in ("ref-a", "ref-b", "judge")}
    server, base_url = start_server(fast)
    with tempfile.TemporaryDirectory() as home:
        configure_env(base_url, home)
        tmp = Path(home)
        run(tmp, 5, 5, "warm-up")
        n = max(500, args.items)
        wall, _ = run(tmp, n, args.parallel, "fast")
        rss_b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"(b) {n} items, instant server, --parallel {args.parallel}: {wall:.2f} s = {n / wall:.0f} items/s "
            f"({3 * n / wall:.0f} calls/s)"
        )
        print(f"    peak RSS after (b): {rss_b:.1f} MiB")
    server.terminate()
    os._exit(0)  # the fake servers' processes are daemons


if __name__ == "__main__":
    main()
