"""The conversation log at scale: search over 100,000 logged turns, and what logging adds to a turn.

    python bench/bench_store.py [--turns 100000] [--keep DIR]

(a) search: a log of N turns (5 calls each, prompts and answers from a 5,000-word vocabulary
    with Zipf-like frequencies), made by this script in a temporary MOA_HOME; then
    `moa logs -q WORD` in-process (the command's own code, no interpreter start-up) for a
    rare, a middling and a common word, and the same as a subprocess for the wall time.
    Target: under 100 ms in-process.
(b) write overhead: the median time of a scripted turn (4 references + aggregator, no
    network) through MoA.arun with logging on minus off. Target: under 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moa_cli.store import CallRecord, Store, TurnRecord, new_conversation_id  # noqa: E402

VOCAB = [f"w{n:04d}" for n in range(5000)]
WEIGHTS = [1 / (n + 1) for n in range(len(VOCAB))]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(VOCAB, WEIGHTS, k=words))


def fill(path: Path, turns: int) -> float:
    """Write `turns` turns through Store.write_turn, 5 calls each; seconds taken."""
    rng = random.Random(42)
    started = time.perf_counter()
    with Store(path) as store:
        cid = new_conversation_id()
        for n in range(turns):
            if n % 5 == 0:
                cid = new_conversation_id()
            calls = [
                CallRecord(
                    1,
                    i,
                    "proposer",
                    f"ref-{i}",
                    "together",
                    f"ref-{i}",
                    {"temperature": 0.7, "max_tokens": 512},
                    text=_text(rng, 40),
                    prompt_tokens=300,
                    completion_tokens=120,
                    cost_usd=0.0001,
                    price_source="config",
                    started=0.0,
                    first_token=0.3,
                    duration=2.0,
                )
                for i in range(4)
            ]
            calls.append(
                CallRecord(2, 0, "aggregator", "judge", "together", "judge", {}, text="", started=2.0, duration=1.5)
            )
            answer = _text(rng, 60)
            calls[-1].text = answer
            store.write_turn(
                TurnRecord(
                    cid,
                    _text(rng, 15),
                    "ok",
                    time.time() - (turns - n),
                    answer=answer,
                    source="bench",
                    cost_usd=0.0005,
                    priced_usd=0.0005,
                    calls=calls,
                )
            )
    return time.perf_counter() - started


def search_in_process(word: str, runs: int = 5) -> tuple[float, int]:
    """Median seconds of `moa logs -q WORD --json` run in this process, and the hits."""
    import contextlib
    import io
    import json

    from moa_cli.cli.app import _dispatch

    times, hits = [], 0
    for _ in range(runs):
        out = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = _dispatch(["logs", "-q", word, "--json"], True)
        times.append(time.perf_counter() - started)
        assert code == 0
        hits = len(json.loads(out.getvalue())["turns"])
    return statistics.median(times), hits


def _timed(func: object) -> float:
    started = time.perf_counter()
    func()  # type: ignore[operator]
    return time.perf_counter() - started


def search_subprocess(word: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moa_cli", "logs", "-q", word], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def overhead(turns: int = 60) -> tuple[float, float]:
    """Median ms of a scripted turn through MoA.arun, logged and not."""
    from moa_cli.api import MoA
    from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter
    from moa_cli.store import flush_all

    def median(log: bool) -> float:
        moa = MoA(references=["a", "b", "c", "d"], aggregator="j", log=log, router=ScriptedRouter(ScriptedProvider()))

        async def run() -> list[float]:
            times = []
            for n in range(turns):
                started = time.perf_counter()
                await moa.arun(f"prompt {n} " + "word " * 200)
                times.append(time.perf_counter() - started)
            return times

        return statistics.median(asyncio.run(run())[10:]) * 1000

    median(True)
    flush_all()
    off = min(median(False) for _ in range(3))
    on = min(median(True) for _ in range(3))
    flush_all()
    return off, on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="build the log in this directory and keep it")
    args = parser.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="moa-bench-store-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MOA_HOME"] = str(home)
    path = home / "logs.db"
    if not path.exists():
        seconds = fill(path, args.turns)
        print(f"wrote {args.turns:,} turns ({args.turns * 5:,} calls) in {seconds:.1f}s: "
              f"{seconds / args.turns * 1000:.2f} ms a turn; {path.stat().st_size / 1e6:.0f} MB")  # fmt: skip
    for label, word in (
        ("rare", VOCAB[4999]),
        ("middling", VOCAB[200]),
        ("common", VOCAB[0]),
        ("two words", f"{VOCAB[3]} {VOCAB[50]}"),
    ):
        median, hits = search_in_process(word)
        mark = "ok" if median < 0.1 else "SLOW"
        with Store(path) as store:
            query = statistics.median(_timed(lambda w=word: store.turns(query=w)) for _ in range(5))
        print(f"moa logs -q {word!r:<14} ({label}): {median * 1000:6.1f} ms in-process, {hits} shown "
              f"(the query itself {query * 1000:.1f} ms)   [{mark}, target < 100 ms]")  # fmt: skip
    print(
        f"moa logs -q {VOCAB[200]!r} as a subprocess (interpreter start-up included): {search_subprocess(VOCAB[200]) * 1000:.0f} ms"
    )
    off, on = overhead()
    mark = "ok" if on - off < 2 else "SLOW"
    print(f"a scripted turn: {off:.2f} ms unlogged, {on:.2f} ms logged: +{on - off:.2f} ms   [{mark}, target < 2 ms]")


if __name__ == "__main__":
    main()
