"""Benchmarks for `moa chat`: start-up, rendering speed and memory over a long session.

    python bench/bench_chat.py [--runs 7] [--tokens 5000] [--turns 50]

1. Start-up: time from spawning `moa chat` in a pseudo-terminal to the `>>>` prompt
   (median of --runs).
2. Rendering: a 5,000-token Markdown answer streamed at full speed from the fake server
   (in its own process, as a real server would be) through the together SDK, timed from
   the aggregator's first request to its last token. Raw (events dropped) against the
   live view drawing into a 80x24 terminal console, interleaved runs, medians. Also the
   renderer alone: the same tokens fed straight into the view, no network.
3. Memory: resident set size of the REPL after 1 turn and after --turns turns.

Run it from anywhere; it uses the repo's own fake server (tests/fakes/llm_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.llm_server import split_pieces  # noqa: E402

PROMPT = ">>>"


def markdown_answer(tokens: int) -> str:
    """Markdown of about `tokens` word pieces: headings, paragraphs, lists, code, tables."""
    parts: list[str] = []
    n = 0
    while len(split_pieces("\n".join(parts))) < tokens:
        n += 1
        parts += [
            f"## Part {n}",
            "",
            "This paragraph carries the argument forward with **emphasis**, *nuance* and `code`, "
            "long enough to wrap across a terminal line or two, as real answers do when they explain.",
            "",
            f"1. first point of part {n}",
            "2. second point, with a [link](https://example.com)",
            "",
            "```python",
            f"def part_{n}(x: int) -> int:",
            f"    return x * {n}",
            "```",
            "",
            "| name | value |",
            "|------|-------|",
            f"| n    | {n}     |",
            "",
        ]
    text = "\n".join(parts)
    return "".join(split_pieces(text)[:tokens])


class ServerProcess:
    """The fake LLM server in a subprocess, so its CPU does not compete with the client's GIL."""

    def __init__(self, answer: str, paced_rate: float = 2000) -> None:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "from tests.fakes.llm_server import FakeLLMServer, Reply\n"
            "server = FakeLLMServer(port=0)\n"
            "server.default_reply = Reply(text='A short reference answer.')\n"
            "answer = open(sys.argv[2]).read()\n"
            "server.set_default('agg', Reply(text=answer))\n"
            "server.set_default('agg-paced', Reply(text=answer, token_delay=float(sys.argv[3])))\n"
            "server.serve_forever()\n"
        )
        self._file = tempfile.NamedTemporaryFile("w", suffix=".md", delete=False)  # noqa: SIM115 - removed in close()
        self._file.write(answer)
        self._file.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(ROOT), self._file.name, str(1 / paced_rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        os.unlink(self._file.name)


def chat_env(base_url: str, home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOA_", "TOGETHER_"))}
    env.update(
        MOA_HOME=home,
        TOGETHER_API_KEY="bench",
        TOGETHER_BASE_URL=base_url,
        MOA_RETRIES="0",
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


LINEUP = ["-r", "ref-a", "-r", "ref-b", "-a", "agg"]


# ---------------------------------------------------------------------------- 1. start-up


def bench_startup(base_url: str, runs: int) -> list[float]:
    import pexpect

    times = []
    with tempfile.TemporaryDirectory() as home:
        for _ in range(runs):
            started = time.perf_counter()
            child = pexpect.spawn(
                sys.executable,
                ["-m", "moa_cli", "chat", *LINEUP],
                env=chat_env(base_url, home),
                cwd=str(ROOT),
                dimensions=(24, 80),
                encoding="utf-8",
                timeout=20,
            )
            child.expect(PROMPT)
            times.append(time.perf_counter() - started)
            child.sendcontrol("d")
            child.expect(pexpect.EOF)
            child.close()
    return times


# ---------------------------------------------------------------------------- 2. rendering


async def one_turn(base_url: str, view: bool, aggregator: str = "agg") -> float:
    """Seconds from the aggregator's request to its last token, with or without the live view."""
    from rich.console import Console

    from moa_cli.api import MoA
    from moa_cli.config import load_settings
    from moa_cli.events import CallFinished, Event
    from moa_cli.render import TurnView

    with tempfile.TemporaryDirectory() as home:
        env = chat_env(base_url, home)
        settings = load_settings({"references": ["ref-a", "ref-b"], "aggregator": aggregator, "max_tokens": 8192}, env)
    aggregator_seconds: list[float] = []
    turn_view = None
    if view:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - kept open for the run
        terminal = Console(file=devnull, width=80, height=24, force_terminal=True, color_system="truecolor")
        progress = Console(file=devnull, width=80, height=24, force_terminal=True, color_system="truecolor")
        turn_view = TurnView(progress, terminal)

    def on_event(event: Event) -> None:
        if turn_view is not None:
            turn_view.handle(event)
        if isinstance(event, CallFinished) and event.call.is_aggregator:
            aggregator_seconds.append(event.seconds)

    async with MoA(settings=settings) as moa:
        if turn_view is not None:
            turn_view.start()
        try:
            await moa.arun("Write a long answer.", on_event=on_event)
        finally:
            if turn_view is not None:
                closing = time.perf_counter()
                turn_view.stop()  # prints the last block: part of the render cost
                aggregator_seconds[-1] += time.perf_counter() - closing
    return aggregator_seconds[-1]


def raw_and_viewed(base_url: str, runs: int, aggregator: str) -> tuple[float, float]:
    """Median aggregator stream time without and with the live view, runs interleaved."""
    raw, viewed = [], []
    for _ in range(runs):
        raw.append(asyncio.run(one_turn(base_url, view=False, aggregator=aggregator)))
        viewed.append(asyncio.run(one_turn(base_url, view=True, aggregator=aggregator)))
    return statistics.median(raw), statistics.median(viewed)


def bench_render(base_url: str, tokens: int, runs: int, answer: str) -> dict[str, float]:
    asyncio.run(one_turn(base_url, view=False))  # warm up imports and connections
    asyncio.run(one_turn(base_url, view=True))
    raw_s, view_s = raw_and_viewed(base_url, runs, "agg")
    paced_raw_s, paced_view_s = raw_and_viewed(base_url, max(1, runs // 2), "agg-paced")

    # The renderer alone, no network: every token fed as fast as Python can.
    from rich.console import Console

    from moa_cli.render import AnswerView

    pieces = split_pieces(answer)
    alone = []
    for _ in range(runs):
        devnull = open(os.devnull, "w")  # noqa: SIM115 - the console writes to it for the whole run
        terminal = Console(file=devnull, width=80, height=24, force_terminal=True, color_system="truecolor")
        answer_view = AnswerView(terminal, markdown=True)
        started = time.perf_counter()
        for piece in pieces:
            answer_view.feed(piece)
        answer_view.close()
        alone.append(time.perf_counter() - started)
    return {
        "raw_s": raw_s,
        "view_s": view_s,
        "overhead_pct": 100 * (view_s - raw_s) / raw_s,
        "per_token_us": 1e6 * (view_s - raw_s) / tokens,
        "paced_raw_s": paced_raw_s,
        "paced_view_s": paced_view_s,
        "paced_overhead_pct": 100 * (paced_view_s - paced_raw_s) / paced_raw_s,
        "alone_s": statistics.median(alone),
        "alone_per_token_us": 1e6 * statistics.median(alone) / len(pieces),
    }


# ---------------------------------------------------------------------------- 3. memory


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def bench_memory(base_url: str, turns: int) -> dict[int, int]:
    import pexpect

    marks = {1, 10, 25, turns}
    rss: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as home:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "moa_cli", "chat", *LINEUP, "--max-tokens", "8192"],
            env=chat_env(base_url, home),
            cwd=str(ROOT),
            dimensions=(24, 80),
            encoding="utf-8",
            timeout=60,
            maxread=65536,
        )
        child.expect(PROMPT)
        for turn in range(1, turns + 1):
            child.sendline(f"Question number {turn}?")
            child.expect(r"\d+ calls")
            child.expect(PROMPT)
            if turn in marks:
                rss[turn] = rss_kib(child.pid)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.close()
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--paced-rate", type=float, default=2000, help="tokens per second of the paced run")
    parser.add_argument("--memory-tokens", type=int, default=300, help="answer length in the memory run")
    args = parser.parse_args()
    from moa_cli import diagnostics

    diagnostics.configure("WARNING")  # the in-process turns log nothing
    answer = markdown_answer(args.tokens)
    server = ServerProcess(answer, args.paced_rate)
    try:
        times = bench_startup(server.base_url, args.runs)
        print(
            f"1. start-up to a usable prompt: median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)"
        )

        r = bench_render(server.base_url, args.tokens, max(3, args.runs // 2), answer)
        print(
            f"2. {args.tokens}-token Markdown answer at full speed: raw stream {r['raw_s']:.3f} s, "
            f"with the live view {r['view_s']:.3f} s -> overhead {r['overhead_pct']:+.1f}% "
            f"({r['per_token_us']:.1f} µs per token)"
        )
        rate = args.tokens / r["paced_raw_s"]
        print(
            f"   paced like a fast hosted model ({rate:,.0f} tokens/s): raw {r['paced_raw_s']:.3f} s, "
            f"with the live view {r['paced_view_s']:.3f} s -> overhead {r['paced_overhead_pct']:+.1f}%"
        )
        print(f"   renderer alone (no network): {r['alone_s']:.3f} s, {r['alone_per_token_us']:.1f} µs per token")
    finally:
        server.close()

    server = ServerProcess(markdown_answer(args.memory_tokens))
    try:
        rss = bench_memory(server.base_url, args.turns)
    finally:
        server.close()
    first, last = rss[1], rss[args.turns]
    marks = ", ".join(f"turn {t}: {kib / 1024:.1f} MiB" for t, kib in sorted(rss.items()))
    print(
        f"3. REPL resident memory ({args.memory_tokens}-token answers): {marks}; "
        f"growth from turn 1 to {args.turns}: {(last - first) / 1024:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
