"""Does the offline `local` line-up beat its own members on IFEval? (issue 13; not run in CI)

    python bench/bench_quality.py --limit 150 --seeds 1,2 --penalties 1.0,1.2
    python bench/bench_quality.py --offset 200 --limit 150 --aggregations consensus --penalties 1.0 --out quality-heldout

For each repeat penalty and seed, the built-in `local` line-up (three samples of SmolLM2-135M,
max_tokens 256) answers the same IFEval prompts with `--aggregation synthesize`, through
`moa eval ifeval`'s own code (resumable: rerun the same command after an interruption). The
layer-1 answers of those runs are then also scored as `consensus` would pick among them (a
pure function of the answers: aggregation.consensus_choice), so one run measures both
strategies on the very same samples. `select` is measured on a few prompts only (--select N):
its question needs a model that can answer with a number.

Raw per-prompt results go to bench/results/ (scores-*.jsonl: every answer, every verdict),
the figures to bench/results/quality.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moa_cli.aggregation import consensus_choice  # noqa: E402
from moa_cli.config import load_settings  # noqa: E402
from moa_cli.evals import ifeval  # noqa: E402
from moa_cli.types import Proposal  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class Progress:
    """One line per finished prompt on stderr (batch's Listener)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()

    def started(self, summary) -> None:
        self.t0 = time.perf_counter()

    def finished(self, outcome, summary) -> None:
        done = summary.done + len(summary.failed)
        print(
            f"[{self.label}] {done}/{summary.total} ({time.perf_counter() - self.t0:.0f}s)", file=sys.stderr, flush=True
        )


def consensus_rescored(report: ifeval.Report) -> ifeval.Report:
    """The same prompts, with the final answer replaced by consensus's pick among the references."""
    scored = []
    for s in report.scored:
        proposals = [Proposal("m", 1, text=r.text, finish_reason=r.finish_reason) for r in s.references]
        answered = [i for i, p in enumerate(proposals) if p.text]
        if not answered:
            continue
        pick = answered[consensus_choice([proposals[i] for i in answered])]
        chosen = s.references[pick]
        final = ifeval.Answer(chosen.text, chosen.score, chosen.finish_reason, chosen.completion_tokens)
        final.seconds = max(r.seconds for r in s.references)  # the turn without its aggregator call
        tokens = sum((r.completion_tokens or 0) for r in s.references)
        scored.append(ifeval.Scored(s.prompt, final, s.references, pick, False, tokens, s.cost, final.seconds))
    return ifeval.build_report(scored)


def run_one(
    penalty: float,
    seed: int,
    prompts: list[ifeval.Prompt],
    aggregation: str,
    home: Path,
    tag: str = "",
    aggregator_prompt: str | None = None,
) -> ifeval.Report:
    overrides = {"lineup": "local", "repeat_penalty": penalty, "seed": seed, "aggregation": aggregation, "log": False}
    if aggregator_prompt is not None:
        overrides["aggregator_prompt"] = aggregator_prompt
    settings = load_settings(overrides, {"MOA_HOME": str(home)})
    label = f"{aggregation} rp={penalty:g} seed={seed}"
    name = f"{aggregation}-rp{penalty:g}-seed{seed}{tag}"
    work = RESULTS / "work" / name
    # One prompt at a time: prompts decoded together would share batches, and the samples would
    # depend on timing (llama.cpp's last bits change with a batch's size).
    job = ifeval.EvalJob(work_dir=work, prompts=tuple(prompts), parallel=1)
    report = asyncio.run(ifeval.run_eval(settings, job, Progress(label)))
    shutil.copyfile(work / "scores.jsonl", RESULTS / f"scores-{name}.jsonl")
    return report


def summary_row(name: str, report: ifeval.Report) -> dict[str, object]:
    final = report.rows[0]
    mean = next(r for r in report.rows if r.name == "mean of references")
    best = next(r for r in report.rows if r.name.startswith("best of"))
    first = report.rows[1]
    return {
        "run": name,
        "prompts": len(report.scored),
        "final_prompt_strict": final.prompt_strict.to_dict(),
        "final_instruction_strict": final.instruction_strict.to_dict(),
        "final_prompt_loose": final.prompt_loose.to_dict(),
        "sample1_prompt_strict": first.prompt_strict.to_dict(),
        "mean_sample_prompt_strict": mean.prompt_strict.to_dict(),
        "mean_sample_instruction_strict": mean.instruction_strict.to_dict(),
        "best_of_prompt_strict": best.prompt_strict.to_dict(),
        "wins_vs_sample1": first.wins,
        "losses_vs_sample1": first.losses,
        "final_cut_at_limit": final.cut_at_limit.to_dict() if final.cut_at_limit else None,
        "sample_cut_at_limit": mean.cut_at_limit.to_dict() if mean.cut_at_limit else None,
        "final_repeats": final.repeats.to_dict() if final.repeats else None,
        "sample_repeats": mean.repeats.to_dict() if mean.repeats else None,
        "seconds_per_turn": round(sum(s.seconds for s in report.scored) / max(1, len(report.scored)), 1),
        "fallbacks": report.fallbacks,
    }


def pct(rate: dict) -> str:
    return f"{100 * rate['rate']:.1f}"


def markdown(rows: list[dict]) -> str:
    head = (
        "| run | prompts | final, prompt strict | mean sample | sample 1 | best of 3 | final instr. strict | "
        "mean sample instr. | final wins/losses vs sample 1 | final cut at limit / sample | "
        "final repeats a line / sample | s per turn |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['prompts']} | {pct(r['final_prompt_strict'])} | {pct(r['mean_sample_prompt_strict'])} | "
            f"{pct(r['sample1_prompt_strict'])} | {pct(r['best_of_prompt_strict'])} | "
            f"{pct(r['final_instruction_strict'])} | {pct(r['mean_sample_instruction_strict'])} | "
            f"{r['wins_vs_sample1']}/{r['losses_vs_sample1']} | "
            f"{pct(r['final_cut_at_limit'])}% / {pct(r['sample_cut_at_limit'])}% | "
            f"{pct(r['final_repeats'])}% / {pct(r['sample_repeats'])}% | {r['seconds_per_turn']} |"
        )
    return head + "\n".join(lines) + "\n"


def judge_validity(work: Path, limit: int) -> dict[str, object]:
    """How often the bundled model, asked `select`'s question over kept layer-1 answers,
    names a valid answer number (and which)."""
    from moa_cli.aggregation import SELECT_MAX_TOKENS, parse_choice, select_messages
    from moa_cli.config import ProviderConfig
    from moa_cli.providers.local import LocalProvider
    from moa_cli.types import CompletionRequest

    provider = LocalProvider(ProviderConfig("local", "local"), verbose=False)
    lines = (work / "answers.jsonl.moa-progress").read_text().splitlines()[1:]
    replies: list[dict[str, object]] = []

    async def ask(messages: list) -> str:
        request = CompletionRequest("smollm2", messages, temperature=0.0, max_tokens=SELECT_MAX_TOKENS, seed=1)
        return "".join([item async for item in provider.stream(request) if isinstance(item, str)])

    for line in lines[:limit]:
        result = json.loads(line)["results"][-1]
        answers = [p["text"] for p in result["proposals"] if p["layer"] == 1 and p["text"]]
        prompt = next(p for p in ifeval.load_prompts() if p.id == json.loads(line)["id"])
        reply = asyncio.run(ask(select_messages([{"role": "user", "content": prompt.prompt}], answers)))
        replies.append({"id": prompt.id, "reply": reply, "choice": parse_choice(reply, len(answers))})
    valid = [r for r in replies if r["choice"] is not None]
    return {"asked": len(replies), "valid": len(valid), "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--penalties", default="1.0,1.2")
    parser.add_argument(
        "--aggregations", default="synthesize", help="run these (consensus is also rescored from synthesize)"
    )
    parser.add_argument("--out", default="quality", help="name of the figures' files in bench/results")
    parser.add_argument("--aggregator-prompt", type=Path, help="file whose text replaces the aggregator prompt")
    parser.add_argument("--select", type=int, default=0, help="also run select on this many prompts")
    parser.add_argument("--judge", type=int, default=0, help="only: ask select's question over N kept turns")
    args = parser.parse_args()
    if args.judge:
        work = RESULTS / "work" / "synthesize-rp1-seed1"
        found = judge_validity(work, args.judge)
        (RESULTS / "select-judge.json").write_text(json.dumps(found, indent=2) + "\n")
        print(f"select's question: {found['valid']} of {found['asked']} replies name a valid answer")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    home = RESULTS / "work" / "moa-home"
    home.mkdir(parents=True, exist_ok=True)
    prompts = ifeval.choose(ifeval.load_prompts(), limit=args.limit, offset=args.offset)
    tag = f"-offset{args.offset}" if args.offset else ""
    if args.out != "quality":  # a run of its own: its own kept answers
        tag += f"-{args.out}"
    prompt_text = args.aggregator_prompt.read_text() if args.aggregator_prompt else None
    if args.aggregator_prompt:
        tag += f"-prompt-{args.aggregator_prompt.stem}"
    out = RESULTS / args.out
    rows: list[dict] = []

    def save() -> None:
        # with_name, not with_suffix: "quality-rp1.1" keeps its ".1"
        out.with_name(out.name + ".json").write_text(json.dumps(rows, indent=2) + "\n")
        out.with_name(out.name + ".md").write_text(markdown(rows))

    for penalty in [float(p) for p in args.penalties.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for aggregation in args.aggregations.split(","):
                report = run_one(penalty, seed, prompts, aggregation, home, tag, prompt_text)
                rows.append(summary_row(f"{aggregation}{tag}, repeat_penalty {penalty:g}, seed {seed}", report))
                if aggregation == "synthesize":
                    rescored = consensus_rescored(report)
                    rows.append(summary_row(f"consensus (rescored), repeat_penalty {penalty:g}, seed {seed}", rescored))
                save()
                print(markdown(rows), flush=True)
        if args.select:
            report = run_one(penalty, 1, prompts[: args.select], "select", home, tag)
            rows.append(summary_row(f"select, repeat_penalty {penalty:g}, seed 1", report))
            save()
    print(markdown(rows))


if __name__ == "__main__":
    main()
