"""Core speed figures for the README: orchestration overhead, layer scaling, start-up time.

    python bench/bench_core.py [--turns 10]

The fake chat server runs in a separate process (so it does not share moa's GIL) with
injected latencies; moa talks to it through the real together SDK.

(a) overhead: measured turn time minus the critical path (the sum over layers of each
    layer's slowest call, plus the aggregator), 4 references, rounds=2. Target <= 20 ms.
(b) scaling: time of a layer of 16 references / a layer of 2. Target <= 1.1.
(c) start-up: cold wall time of `moa --help` and `moa --version`. Target <= 0.3 s.
(d) the end of a turn: `moa ask` with stdout on a pipe, from the answer's last byte to
    stdout's end-of-file and to the process's exit. Target <= 50 ms.
(e) start-up to the first request: from spawning `moa ask` to its first connection to the
    server (a bare listening socket here). Target <= 0.5 s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.llm_server import FakeLLMServer, Reply  # noqa: E402

# (latency before the first byte, delay between tokens) per model; 30 tokens each.
TEXT = " ".join(f"word{i}" for i in range(30))
LATENCIES = {
    "ref-a": (0.05, 0.002),
    "ref-b": (0.08, 0.002),
    "ref-c": (0.12, 0.001),
    "ref-d": (0.15, 0.001),
    "judge": (0.05, 0.002),
}


def _serve(queue: mp.Queue, models: dict[str, tuple[float, float]]) -> None:
    server = FakeLLMServer()
    for model, (latency, delay) in models.items():
        server.set_default(model, Reply(text=TEXT, latency=latency, token_delay=delay))
    server.start()
    queue.put(server.base_url)
    while True:
        time.sleep(3600)


def start_server(models: dict[str, tuple[float, float]]) -> tuple[mp.Process, str]:
    queue: mp.Queue = mp.Queue()
    proc = mp.Process(target=_serve, args=(queue, models), daemon=True)
    proc.start()
    return proc, queue.get(timeout=30)


def configure_env(base_url: str, home: str) -> None:
    os.environ.update(
        {"TOGETHER_BASE_URL": base_url, "TOGETHER_API_KEY": "bench", "MOA_HOME": home, "MOA_RETRIES": "0"}
    )


def bench_overhead(turns: int) -> None:
    import asyncio

    from moa_cli import MoA
    from moa_cli.events import CallFinished, Event

    refs = ["ref-a", "ref-b", "ref-c", "ref-d"]
    aggregator_seconds: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, CallFinished) and event.call.is_aggregator:
            aggregator_seconds.append(event.seconds)

    async def run() -> list[float]:
        overheads = []
        async with MoA(references=refs, aggregator="judge", rounds=2) as moa:
            await moa.arun("warm-up")  # connections and imports are not orchestration
            for i in range(turns):
                started = time.perf_counter()
                result = await moa.arun(f"question {i}", on_event=on_event)
                wall = time.perf_counter() - started
                # Critical path: each layer's slowest call, plus the aggregator's call.
                critical = sum(max(p.seconds for p in result.proposals if p.layer == layer) for layer in (1, 2))
                critical += aggregator_seconds[-1]
                overheads.append(wall - critical)
        return overheads

    overheads = asyncio.run(run())
    injected = 2 * max(LATENCIES[m][0] + 30 * LATENCIES[m][1] for m in refs)
    injected += LATENCIES["judge"][0] + 30 * LATENCIES["judge"][1]
    print(f"(a) orchestration overhead, 4 refs, rounds=2, {turns} turns:")
    print(
        f"    median {statistics.median(overheads) * 1000:.1f} ms, max {max(overheads) * 1000:.1f} ms per turn"
        f"  (target <= 20 ms; injected critical path ~{injected * 1000:.0f} ms)"
    )


def bench_scaling(turns: int) -> None:
    import asyncio

    from moa_cli import MoA
    from moa_cli.events import CallFinished, CallStarted, Event

    def layer_time(n: int) -> float:
        times: list[float] = []

        async def run() -> None:
            refs = [f"wide-{i}" for i in range(n)]
            async with MoA(references=refs, aggregator="judge") as moa:
                await moa.arun("warm-up")
                for i in range(turns):
                    first: list[float] = []
                    last: list[float] = []

                    def on_event(event: Event, first: list[float] = first, last: list[float] = last) -> None:
                        call = getattr(event, "call", None)
                        if call is None or call.is_aggregator:
                            return
                        if isinstance(event, CallStarted) and not first:
                            first.append(time.perf_counter())
                        elif isinstance(event, CallFinished):
                            last[:] = [time.perf_counter()]

                    await moa.arun(f"q{i}", on_event=on_event)
                    times.append(last[0] - first[0])

        asyncio.run(run())
        return statistics.median(times)

    two, sixteen = layer_time(2), layer_time(16)
    raw_two, raw_sixteen = raw_layer_time(2, turns), raw_layer_time(16, turns)
    print(
        f"(b) layer of 16 refs / layer of 2: {sixteen * 1000:.0f} ms / {two * 1000:.0f} ms = {sixteen / two:.3f}"
        "  (target <= 1.1)"
    )
    print(
        f"    floor, the same streams read with bare httpx: {raw_sixteen / raw_two:.3f}"
        " (fake server and client share 2 cores)"
    )


def raw_layer_time(n: int, turns: int) -> float:
    """The same layer with no SDK and no engine: plain httpx reading the SSE lines."""
    import asyncio
    import json

    import httpx

    base_url = os.environ["TOGETHER_BASE_URL"]

    async def one(client: httpx.AsyncClient, model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "q"}], "stream": True}
        async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    json.loads(line[6:])

    async def run() -> float:
        async with httpx.AsyncClient() as client:
            times = []
            for _ in range(turns + 1):
                started = time.perf_counter()
                await asyncio.gather(*(one(client, f"wide-{i}") for i in range(n)))
                times.append(time.perf_counter() - started)
            return statistics.median(times[1:])

    return asyncio.run(run())


def bench_startup(runs: int = 7) -> None:
    moa = Path(sys.executable).with_name("moa")
    command = [str(moa)] if moa.exists() else [sys.executable, "-m", "moa_cli"]
    for args in (["--version"], ["--help"]):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([*command, *args], capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(
            f"(c) moa {args[0]:<9}: median {statistics.median(times):.3f} s, min {min(times):.3f} s"
            f" over {runs} runs (target <= 0.3 s)"
        )


def _moa_command() -> list[str]:
    moa = Path(sys.executable).with_name("moa")
    return [str(moa)] if moa.exists() else [sys.executable, "-m", "moa_cli"]


def bench_end_of_turn(runs: int = 7) -> None:
    """The answer's last byte on stdout -> stdout's end-of-file, and -> the process's exit."""
    to_eof, to_exit = [], []
    for i in range(runs):
        proc = subprocess.Popen(
            [*_moa_command(), "ask", "-r", "ref-a,ref-b", "-a", "judge", f"end {i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        last = eof = 0.0
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            now = time.monotonic()
            if not chunk:
                eof = now
                break
            if chunk.strip():
                last = now
        proc.wait()
        exited = time.monotonic()
        proc.stdout.close()
        to_eof.append(eof - last)
        to_exit.append(exited - last)
    print(
        f"(d) end of a turn: last answer byte -> stdout EOF median {statistics.median(to_eof) * 1000:.0f} ms, "
        f"-> exit median {statistics.median(to_exit) * 1000:.0f} ms (min {min(to_exit) * 1000:.0f}) over {runs} runs"
        "  (target <= 50 ms)"
    )


def bench_first_request(runs: int = 7) -> None:
    """Spawning `moa ask` -> its first connection to the API (a socket that only listens)."""
    import socket

    times = []
    for i in range(runs):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.settimeout(30)
            env = {**os.environ, "TOGETHER_BASE_URL": f"http://127.0.0.1:{listener.getsockname()[1]}"}
            started = time.monotonic()
            proc = subprocess.Popen(
                [*_moa_command(), "ask", "-r", "ref-a,ref-b", "-a", "judge", f"start {i}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            connection, _ = listener.accept()
            times.append(time.monotonic() - started)
            connection.close()
            proc.kill()
            proc.wait()
    print(
        f"(e) start-up to the first request: median {statistics.median(times):.3f} s, min {min(times):.3f} s"
        f" over {runs} runs (target <= 0.5 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--ends-only", action="store_true", help="only (d) and (e): the end of a turn, start-up")
    args = parser.parse_args()
    if args.ends_only:
        proc, base_url = start_server(dict(LATENCIES))
        try:
            with tempfile.TemporaryDirectory() as home:
                configure_env(base_url, home)
                bench_end_of_turn()
                bench_first_request()
                print(f"    {os.getloadavg()[0]:.1f} load average (1 min) on {os.cpu_count()} CPUs")
        finally:
            proc.terminate()
        return
    models = dict(LATENCIES)
    models.update({f"wide-{i}": (0.3, 0.01) for i in range(16)})  # ~100 tokens/s each
    proc, base_url = start_server(models)
    try:
        with tempfile.TemporaryDirectory() as home:
            configure_env(base_url, home)
            bench_overhead(args.turns)
            bench_scaling(max(3, args.turns // 2))
            bench_startup()
            bench_end_of_turn()
            bench_first_request()
        print(f"    {os.getloadavg()[0]:.1f} load average (1 min) on {os.cpu_count()} CPUs")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
