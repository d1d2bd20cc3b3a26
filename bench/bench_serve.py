"""`moa serve` under concurrent streaming clients: what the server adds to each turn.

    python bench/bench_serve.py [--clients 10,50] [--turns 4] [--refs 4] [--stagger 0] [--workers 1] [--wait-load 1.5]

Three processes on one machine: the fake chat server (tests/fakes/llm_server.py, its own
process so it does not share a GIL), `moa serve` (a real subprocess on a free port, the
default turn log on), and this client: `--clients` asyncio tasks, each with its own httpx
client and connection, sending `--turns` streaming requests one after another (a closed loop,
so that many turns are in flight at once), after one warm-up request each; by default every
client's first turn starts at the same instant, and `--stagger S` spreads them over S seconds.
`--workers N` runs that many `moa serve` workers (their CPU is summed). Every upstream call
answers after LATENCY seconds with TOKENS tokens TOKEN_DELAY apart (references and aggregator alike).

Each request has a unique user prompt, so the fake server's records (the prompt,
`received_at`, `finished_at`; time.monotonic() is one clock for every process on Linux)
give each turn's upstream calls:

- critical path = the slowest reference's duration + the aggregator's duration (a
  passthrough request: its one call's duration);
- turn overhead = the client's turn time (request sent -> end of the stream) - the
  critical path;
- first-byte overhead = the first answer byte at the client - the aggregator's first token
  upstream, taken as its `received_at` + LATENCY (the fake server sends the first token as
  soon as the injected latency is over; when its own loop lags, the lag counts against moa).

Targets (issue 22): turn overhead p50 <= 100 ms and p95 <= 300 ms at 50 concurrent turns,
p50 <= 20 ms at 10, and `moa serve` CPU <= 30 ms a turn, on the 2-core machine.
The same load against a `--passthrough` model (one direct call per request) shows what the
HTTP layer costs without MoA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fakes.llm_server import FakeLLMServer, Reply  # noqa: E402
from tests.fakes.serve_process import ServeProcess as Served  # noqa: E402

LATENCY = 0.3  # seconds before the first byte, every upstream call
TOKENS = 100
TOKEN_DELAY = 0.01  # ~100 tokens/s
TEXT = " ".join(f"w{i}" for i in range(TOKENS))
AGGREGATOR = "judge"
PASSTHROUGH = "cheap"
DIRECT = "direct"  # the passthrough model's load sent straight to the fake server: the floor


# ---------------------------------------------------------------- the fake server, in its own process


def _serve(conn: Connection, models: list[str]) -> None:
    server = FakeLLMServer()
    for model in models:
        server.set_default(model, Reply(text=TEXT, latency=LATENCY, token_delay=TOKEN_DELAY))
    server.start()
    conn.send(server.base_url)
    while True:  # commands from the bench: "records" (and clear them) or "stop"
        command = conn.recv()
        if command == "stop":
            server.stop()
            return
        with server._lock:  # the server thread appends under this lock
            taken, server.requests = server.requests, []
        conn.send([(r.model, _first_user(r.messages), r.received_at, r.finished_at, r.status) for r in taken])


def _first_user(messages: list[dict[str, Any]]) -> str | None:
    """A request's prompt: its first user message up to its first blank line. With the
    aggregator layout "after" the references' answers follow the prompt in that message."""
    text = next((str(m.get("content")) for m in messages if m.get("role") == "user"), None)
    return None if text is None else text.split("\n\n", 1)[0]


@dataclass
class Upstream:
    proc: mp.Process
    conn: Connection
    base_url: str

    def records(self) -> list[tuple[str, str | None, float, float | None, int | None]]:
        self.conn.send("records")
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


def start_upstream(models: list[str]) -> Upstream:
    ours, theirs = mp.Pipe()
    proc = mp.Process(target=_serve, args=(theirs, models), daemon=True)
    proc.start()
    return Upstream(proc, ours, ours.recv())


# ---------------------------------------------------------------- moa serve, a real subprocess


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (`--workers N`), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        child = int(stat.parent.name)
        parents[child], times[child] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(times.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the clients


@dataclass
class Sample:
    prompt: str
    sent: float
    first: float | None = None  # first non-empty content delta
    ended: float | None = None  # the stream's end ([DONE])
    text: str = ""
    error: str | None = None


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str) -> Sample:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    sample = Sample(prompt, time.monotonic())
    parts: list[str] = []
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                sample.error = f"HTTP {response.status_code}"
                await response.aread()
                return sample
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    sample.ended = time.monotonic()
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        sample.error = str(chunk["error"].get("message"))
                        continue
                    for choice in chunk.get("choices") or ():
                        content = choice.get("delta", {}).get("content")
                        if content:
                            if sample.first is None:
                                sample.first = time.monotonic()
                            parts.append(content)
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.text = "".join(parts)
    if sample.error is None and (sample.ended is None or sample.text != TEXT):
        sample.error = "incomplete stream"
    return sample


async def run_load(
    base_url: str, model: str, clients: int, turns: int, tag: str, stagger: float = 0.0
) -> tuple[list[Sample], float]:
    """`clients` closed-loop clients, each with its own connection (its own httpx client), as
    separate programs would be. One client shared by all would measure its own pool: httpcore
    1.0's hands out connections in quadratic time, and 50 requests at once waited 200-600 ms
    in it before they were sent (the `start` column's p95, `direct` included).

    With `stagger` 0 every client sends its first turn at the same instant, and since every
    turn takes the same time here they stay in step: each turn starts beside all the others,
    the worst case. With `stagger` S, client c starts c/clients x S seconds late: the turns
    arrive spread over S, as independent users' would, with as many in flight."""
    url = base_url + "/chat/completions"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        own = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=120, trust_env=False))
            for _ in range(clients)
        ]
        # Warm-up: open every connection (client -> moa serve, moa serve -> upstream).
        await asyncio.gather(*(one_request(own[c], url, model, f"{tag} warm-up {c}") for c in range(clients)))

        async def worker(c: int) -> list[Sample]:
            await asyncio.sleep(c / clients * stagger)
            return [await one_request(own[c], url, model, f"{tag} client {c} turn {t}") for t in range(turns)]

        started = time.monotonic()
        results = await asyncio.gather(*(worker(c) for c in range(clients)))
        return [s for samples in results for s in samples], time.monotonic() - started


# ---------------------------------------------------------------- figures


#: Issue 22's targets for the turn overhead, seconds: clients -> (p50, p95 or None).
TARGETS: dict[int, tuple[float, float | None]] = {50: (0.100, 0.300), 10: (0.020, None)}


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Row:
    model: str
    clients: int
    samples: int
    errors: int
    turn: list[float]  # turn overhead, seconds
    first: list[float]  # first-byte overhead, seconds
    critical: list[float]
    head: list[float]  # request sent -> the first upstream call received
    gap: list[float]  # the slowest reference finished -> the aggregator's call received
    tail: list[float]  # the aggregator's call finished -> the end of the stream at the client
    wall: float
    serve_cpu: float
    upstream_cpu: float
    client_cpu: float


def measure(
    upstream: Upstream, served: Served, model: str, refs: list[str], clients: int, turns: int, tag: str, stagger: float
) -> Row:
    upstream.records()  # drop anything earlier
    cpu = (cpu_seconds(served.proc.pid), cpu_seconds(upstream.proc.pid or 0), _own_cpu())
    base_url, name = (upstream.base_url + "/v1", PASSTHROUGH) if model == DIRECT else (served.base_url, model)
    samples, wall = asyncio.run(run_load(base_url, name, clients, turns, tag, stagger))
    cpu_after = (cpu_seconds(served.proc.pid), cpu_seconds(upstream.proc.pid or 0), _own_cpu())
    by_prompt: dict[str, list[tuple[str, float, float]]] = {}
    for name, last_user, received, finished, status in upstream.records():
        if last_user is not None and finished is not None and status == 200:
            by_prompt.setdefault(last_user, []).append((name, received, finished))
    turn, first, critical, head, gap, tail = [], [], [], [], [], []
    errors = 0
    for sample in samples:
        calls = by_prompt.get(sample.prompt, [])
        if model in (PASSTHROUGH, DIRECT):
            final = [c for c in calls if c[0] == PASSTHROUGH]
            layer = []
        else:
            final = [c for c in calls if c[0] == AGGREGATOR]
            layer = [c for c in calls if c[0] in refs]
        if sample.error or len(final) != 1 or (model == "moa" and len(layer) != len(refs)):
            errors += 1
            if errors <= 3:
                why = sample.error or f"{len(final)} aggregator and {len(layer)} reference calls recorded upstream"
                print(f"    ! {sample.prompt}: {why}", file=sys.stderr)
            continue
        assert sample.ended is not None and sample.first is not None
        _, agg_received, agg_finished = final[0]
        path = max((f - r for _, r, f in layer), default=0.0) + (agg_finished - agg_received)
        critical.append(path)
        turn.append(sample.ended - sample.sent - path)
        first.append(sample.first - (agg_received + LATENCY))
        head.append(min(r for _, r, _ in [*layer, *final]) - sample.sent)
        gap.append(agg_received - max((f for _, _, f in layer), default=agg_received))
        tail.append(sample.ended - agg_finished)
    cost = [after - before for before, after in zip(cpu, cpu_after, strict=True)]
    warm = clients  # the warm-up requests ran inside the CPU window too
    per = 1000 / (len(samples) + warm)
    return Row(
        model,
        clients,
        len(samples),
        errors,
        turn,
        first,
        critical,
        head,
        gap,
        tail,
        wall,
        cost[0] * per,
        cost[1] * per,
        cost[2] * per,
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ms(value: float) -> str:
    return f"{value * 1000:.0f}" if abs(value) >= 0.0995 else f"{value * 1000:.1f}"


def print_table(rows: list[Row]) -> None:
    print()
    print(
        "| model | clients | turns | turn − critical path p50 / p95 (ms) | first byte − aggregator's first token"
        " p50 / p95 (ms) | critical path p50 (s) | CPU ms per turn: moa serve / fake upstream / client |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if not row.turn:
            print(f"| {row.model} | {row.clients} | 0 of {row.samples} ({row.errors} failed) | | | | |")
            continue
        failed = f" ({row.errors} failed)" if row.errors else ""
        print(
            f"| {row.model} | {row.clients} | {len(row.turn)}{failed}"
            f" | {ms(percentile(row.turn, 50))} / {ms(percentile(row.turn, 95))}"
            f" | {ms(percentile(row.first, 50))} / {ms(percentile(row.first, 95))}"
            f" | {statistics.median(row.critical):.3f}"
            f" | {row.serve_cpu:.0f} / {row.upstream_cpu:.0f} / {row.client_cpu:.0f} |"
        )
    print("\nWhere the overhead goes (p50 / p95, ms): request sent -> first upstream call; slowest reference done")
    print("-> aggregator call received; aggregator call done -> end of the stream at the client.\n")
    print("| model | clients | start | between the layers | end |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row.turn:
            cells = [f"{ms(percentile(v, 50))} / {ms(percentile(v, 95))}" for v in (row.head, row.gap, row.tail)]
            print(f"| {row.model} | {row.clients} | " + " | ".join(cells) + " |")


def wait_for_quiet(limit: float, patience: float) -> None:
    """Wait until the 1-minute load average is below `limit` (polled every 30 s)."""
    deadline = time.monotonic() + patience
    while (load := os.getloadavg()[0]) >= limit:
        if time.monotonic() > deadline:
            print(f"load average still {load:.2f} after {patience:.0f} s; measuring anyway", file=sys.stderr)
            return
        print(f"load average {load:.2f} >= {limit}; waiting 30 s", file=sys.stderr)
        time.sleep(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50", help="comma list of concurrent clients (default 10,50)")
    parser.add_argument("--turns", type=int, default=4, help="measured requests per client (default 4)")
    parser.add_argument("--refs", type=int, default=4, help="references in the line-up (default 4)")
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="spread the clients' first turns over this many seconds (default 0: all at once, in step)",
    )
    parser.add_argument("--workers", type=int, default=1, help="moa serve --workers (default 1)")
    parser.add_argument("--no-passthrough", action="store_true", help="skip the passthrough and direct runs")
    parser.add_argument("--wait-load", type=float, default=1.5, help="wait for a 1-min load below this (0: don't)")
    parser.add_argument("--wait-max", type=float, default=900, help="longest wait for the load, seconds")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",") if c]
    refs = [f"ref-{i}" for i in range(args.refs)]

    upstream = start_upstream([*refs, AGGREGATOR, PASSTHROUGH])
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "TOGETHER_BASE_URL": upstream.base_url,
            "TOGETHER_API_KEY": "bench",
            "MOA_HOME": home,
            "MOA_RETRIES": "0",
            "MOA_TIMEOUT": "120",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        most = max(counts)
        limits = ("--max-concurrent", str(most), "--queue", str(most), "--workers", str(args.workers))
        served = Served(
            [*("-r", ",".join(refs), "-a", AGGREGATOR, "--passthrough", PASSTHROUGH), *limits],
            env,
        )
        rows: list[Row] = []
        try:
            if args.wait_load > 0:
                wait_for_quiet(args.wait_load, args.wait_max)
            load_before = os.getloadavg()[0]
            models = ["moa"] + ([] if args.no_passthrough else [PASSTHROUGH, DIRECT])
            for clients in counts:
                for model in models:
                    row = measure(
                        upstream, served, model, refs, clients, args.turns, f"{model}-{clients}", args.stagger
                    )
                    rows.append(row)
                    print(
                        f"  {model:>5} x {clients:>2} clients: {len(row.turn)} turns in {row.wall:.1f} s"
                        f" (load {os.getloadavg()[0]:.2f})",
                        file=sys.stderr,
                    )
        finally:
            served.stop()
            upstream.stop()
        if "Traceback" in "".join(served.lines):
            print("".join(served.lines), file=sys.stderr)
    print(
        f"\n{args.refs} references + aggregator, each call {LATENCY:.1f} s to the first token then {TOKENS} tokens"
        f" {TOKEN_DELAY * 1000:.0f} ms apart; {args.turns} turns per client after a warm-up;"
        f" moa serve --max-concurrent {most} --workers {args.workers}; "
        + (f"first turns spread over {args.stagger:g} s" if args.stagger else "every client's first turn at once")
    )
    print_table(rows)
    print(
        f"\n1-minute load average {load_before:.2f} before the runs (others' load), {os.getloadavg()[0]:.2f} after"
        f" (ours included), {os.cpu_count()} CPUs. Targets: turn overhead at 50 clients p50 <= 100 ms and"
        " p95 <= 300 ms, at 10 clients p50 <= 20 ms; moa serve CPU <= 30 ms a turn."
    )
    for row in rows:
        if row.model == "moa" and row.clients in TARGETS and row.turn:
            p50, p95 = TARGETS[row.clients]
            met = percentile(row.turn, 50) <= p50 and (p95 is None or percentile(row.turn, 95) <= p95)
            print(f"Turn overhead at {row.clients} clients: {'met' if met else 'NOT met'}.")


if __name__ == "__main__":
    main()
