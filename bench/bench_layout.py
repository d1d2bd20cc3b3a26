"""Where the references' answers go in the aggregator's prompt: `--aggregator-layout system|after`
(issue 24; not run in CI).

    python bench/bench_layout.py --limit 20 --long 4     # and 4 long inputs, for the reuse
    python bench/bench_layout.py --limit 100 --out aggregator-layout-100

For each layout, the built-in `local` line-up (three samples of SmolLM2-135M, max_tokens 256)
answers the same IFEval prompts with `--aggregation synthesize` (the offline default,
`consensus`, makes no aggregator call), through `moa eval ifeval`'s own code, one prompt at
a time: the references' prompts do not depend on the layout and their samples are seeded, so
both layouts aggregate the very same answers, and only the aggregator's prompt differs.

Every call goes through a recording wrapper, which keeps each aggregator call's usage: its
prompt tokens, and how many of them the local runtime copied from a kept prefix (the
references' evaluated prompt) rather than evaluated (`Usage.cached_tokens`). Those counts are
deterministic; the times depend on the machine's load, which is recorded with them.

`--long N` also asks N long inputs (sections of this README, about 1,500 tokens each, "Summarise
this"), unscored: where the conversation is long, the reuse is most of the aggregator's prompt.

The reports go to bench/results/OUT-{system,after}.json (moa eval ifeval's; OUT is --out,
aggregator-layout unless given), the figures to bench/results/OUT.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moa_cli.api import MoA  # noqa: E402
from moa_cli.config import load_settings  # noqa: E402
from moa_cli.evals import ifeval  # noqa: E402
from moa_cli.prompts import AGGREGATOR_PROMPT  # noqa: E402
from moa_cli.providers.registry import ProviderPool  # noqa: E402
from moa_cli.types import CompletionRequest, Usage  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MARK = AGGREGATOR_PROMPT.splitlines()[0][:60]  # how an aggregator's (synthesis) prompt is told apart


class Recording:
    """A provider as it is, with every aggregator call's usage and time kept."""

    def __init__(self, inner: Any, calls: list[dict[str, Any]]) -> None:
        self._inner = inner
        self._calls = calls
        self.name = inner.name
        self.kind = getattr(inner, "kind", None)
        self.shared_context = getattr(inner, "shared_context", False)
        self.max_concurrency = getattr(inner, "max_concurrency", None)

    def __getattr__(self, name: str) -> Any:  # context_window, tokenizer, list_models, aclose
        return getattr(self._inner, name)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Any]:
        aggregator = any(MARK in m["content"] for m in request.messages)
        started = time.perf_counter()
        usage: Usage | None = None
        async for item in self._inner.stream(request):
            if isinstance(item, Usage):
                usage = item
            yield item
        if aggregator:
            self._calls.append(
                {
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "reused": usage.cached_tokens if usage else None,
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )


class Router:
    def __init__(self, pool: ProviderPool, calls: list[dict[str, Any]]) -> None:
        self._pool = pool
        self._calls = calls
        self._wrapped: dict[str, Recording] = {}

    def resolve(self, spec: str) -> tuple[Any, str]:
        provider, model = self._pool.resolve(spec)
        wrapped = self._wrapped.setdefault(provider.name, Recording(provider, self._calls))
        return wrapped, model

    async def aclose(self) -> None:
        await self._pool.aclose()


def settings_for(layout: str, home: Path) -> Any:
    overrides = {"lineup": "local", "aggregation": "synthesize", "aggregator_layout": layout, "log": False}
    return load_settings(overrides, {"MOA_HOME": str(home)})


def aggregator_figures(calls: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(c["prompt_tokens"] or 0 for c in calls)
    reused = sum(c["reused"] or 0 for c in calls)
    return {
        "calls": len(calls),
        "prompt_tokens": prompt,
        "reused": reused,
        "evaluated": prompt - reused,
        "reused_share": round(reused / prompt, 4) if prompt else None,
        "calls_reusing": sum(1 for c in calls if c["reused"]),
        "mean_seconds": round(sum(c["seconds"] for c in calls) / len(calls), 2) if calls else None,
    }


def run_ifeval(layout: str, prompts: list[ifeval.Prompt], home: Path, restart: bool, out: str) -> dict[str, Any]:
    settings = settings_for(layout, home)
    work = RESULTS / "work" / f"{out}-{layout}"
    calls: list[dict[str, Any]] = []
    router = Router(ProviderPool(settings), calls)
    # One prompt at a time: prompts decoded together would share batches (and kept prefixes),
    # and the samples would depend on timing.
    job = ifeval.EvalJob(work_dir=work, prompts=tuple(prompts), parallel=1, restart=restart)
    load_before = os.getloadavg()

    async def main() -> ifeval.Report:
        try:
            return await ifeval.run_eval(settings, job, router=router)
        finally:
            await router.aclose()

    report = asyncio.run(main())
    load_after = os.getloadavg()
    (RESULTS / f"{out}-{layout}.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    shutil.copyfile(work / "scores.jsonl", RESULTS / f"scores-{out}-{layout}.jsonl")
    final = report.rows[0]
    return {
        "layout": layout,
        "prompts": len(report.scored),
        "failed": report.failed,
        "prompt_strict": final.prompt_strict.to_dict(),
        "instruction_strict": final.instruction_strict.to_dict(),
        "prompt_loose": final.prompt_loose.to_dict(),
        "instruction_loose": final.instruction_loose.to_dict(),
        "cut_at_limit": final.cut_at_limit.to_dict() if final.cut_at_limit else None,
        "repeats_a_line": final.repeats.to_dict() if final.repeats else None,
        "seconds_per_turn": round(report.seconds / max(1, len(report.scored)), 2),
        "aggregator": aggregator_figures(calls),  # the calls made in this run (kept prompts: none)
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "final_answers": {s.prompt.key: s.final.score.prompt_strict for s in report.scored},
    }


def long_inputs(count: int) -> list[str]:
    """`count` sections of the README of about 6,000 characters each (1,500 tokens or so)."""
    text = (ROOT / "README.md").read_text()
    sections = [s for s in text.split("\n## ") if len(s) > 3000]
    return [s[:6000] for s in sections[:count]]


def run_long(layout: str, inputs: list[str], home: Path) -> dict[str, Any]:
    settings = settings_for(layout, home)
    calls: list[dict[str, Any]] = []
    router = Router(ProviderPool(settings), calls)
    turns: list[float] = []
    load_before = os.getloadavg()

    async def main() -> None:
        try:
            moa = MoA(settings=settings, router=router)
            for text in inputs:
                result = await moa.arun(f"{text}\n\nSummarise this in three sentences.")
                turns.append(result.seconds)
        finally:
            await router.aclose()

    asyncio.run(main())
    return {
        "layout": layout,
        "inputs": len(inputs),
        "seconds_per_turn": round(sum(turns) / len(turns), 2),
        "aggregator": aggregator_figures(calls),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }


def markdown(rows: list[dict[str, Any]], long_rows: list[dict[str, Any]]) -> str:
    def rate(r: dict[str, Any]) -> str:
        low, high = r["ci95"]
        return f"{r['k']}/{r['n']} ({100 * low:.0f}-{100 * high:.0f}%)"

    lines = [
        "| layout | prompt strict (95% CI) | instruction strict | s per turn | aggregator s | "
        "aggregator prompt tokens: evaluated / reused | load average (1 min) before, after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["aggregator"]
        lines.append(
            f"| {r['layout']} | {rate(r['prompt_strict'])} | {rate(r['instruction_strict'])} | "
            f"{r['seconds_per_turn']} | {a['mean_seconds']} | {a['evaluated']:,} / {a['reused']:,} | "
            f"{r['load_average']['before'][0]}, {r['load_average']['after'][0]} |"
        )
    if long_rows:
        lines += [
            "",
            "| layout, long inputs | s per turn | aggregator s | aggregator prompt tokens: evaluated / reused | "
            "load average (1 min) before, after |",
            "|---|---|---|---|---|",
        ]
        for r in long_rows:
            a = r["aggregator"]
            lines.append(
                f"| {r['layout']} ({r['inputs']} inputs) | {r['seconds_per_turn']} | {a['mean_seconds']} | "
                f"{a['evaluated']:,} / {a['reused']:,} | "
                f"{r['load_average']['before'][0]}, {r['load_average']['after'][0]} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--layouts", default="system,after")
    parser.add_argument("--long", type=int, default=0, help="also this many long inputs (unscored)")
    parser.add_argument("--restart", action="store_true", help="answer every prompt again")
    parser.add_argument("--out", default="aggregator-layout", help="name of the results' files in bench/results")
    args = parser.parse_args()
    home = RESULTS / "work" / "moa-home"
    home.mkdir(parents=True, exist_ok=True)
    prompts = ifeval.choose(ifeval.load_prompts(), limit=args.limit)
    rows: list[dict[str, Any]] = []
    long_rows: list[dict[str, Any]] = []
    layouts = args.layouts.split(",")
    for layout in layouts:
        rows.append(run_ifeval(layout, prompts, home, args.restart, args.out))
        print(markdown(rows, long_rows), flush=True)
    for layout in layouts if args.long else ():
        long_rows.append(run_long(layout, long_inputs(args.long), home))
        print(markdown(rows, long_rows), flush=True)
    if len(rows) == 2:  # paired: the same prompts, the same references
        a, b = (rows[0]["final_answers"], rows[1]["final_answers"])
        paired = {"both": 0, "neither": 0, f"only {rows[0]['layout']}": 0, f"only {rows[1]['layout']}": 0}
        for key in a.keys() & b.keys():
            name = "both" if a[key] and b[key] else "neither" if not (a[key] or b[key]) else None
            name = name or (f"only {rows[0]['layout']}" if a[key] else f"only {rows[1]['layout']}")
            paired[name] += 1
        rows.append({"paired_prompt_strict": paired})
    out = RESULTS / args.out
    out.with_name(out.name + ".json").write_text(json.dumps({"ifeval": rows, "long": long_rows}, indent=2) + "\n")
    out.with_name(out.name + ".md").write_text(markdown([r for r in rows if "layout" in r], long_rows))


if __name__ == "__main__":
    main()
