"""`moa eval ifeval`: score a line-up and each of its members on IFEval (moa_cli/evals/ifeval.py).

Exit codes: 0 scored, 1 prompts failed (the rest are scored and kept), 2 bad options or
the [eval] extra missing, 130/143/129 interrupted (finished prompts are kept: rerun the
same command to go on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moa_cli import longrun
from moa_cli.cli import options as opt
from moa_cli.cli.errors import EXIT_FAILED, handle_errors

if TYPE_CHECKING:
    from moa_cli.evals.ifeval import Report

app = typer.Typer(
    name="eval",
    help="Evaluate a line-up against its own members, with no judge model (needs the [eval] extra).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("ifeval")
@opt.setting_options("eval")
def ifeval(
    *,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", help="Score N prompts (default all 541).", show_default=False),
    ] = None,
    offset: Annotated[
        int,
        typer.Option(
            "--offset",
            metavar="K",
            help="Start at position K of the fixed shuffle of the prompts (a held-out slice: --offset 200).",
        ),
    ] = 0,
    parallel: Annotated[int, typer.Option("--parallel", "-p", metavar="N", help="Prompts in flight at once.")] = 4,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="Where answers and scores are kept (default: one directory per line-up and settings, under moa's data dir).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the answers kept from an earlier run.")] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print the report as one JSON object: accuracy per row, intervals, wins, tokens."),
    ] = False,
    local: opt.Local = False,
    verbose: opt.Verbose = False,
    quiet: opt.Quiet = False,
    flags: dict[str, Any],
) -> None:
    """Run a line-up over IFEval prompts and score the final answer and every layer-1 reference.

    Google's checker scores each answer (no judge model), so one run tells whether the
    mixture beats its members: accuracy with 95% intervals, paired wins and losses, the
    best-of-references upper bound, tokens and time. Finished prompts are kept: after
    Ctrl-C, the same command goes on where it stopped, and a larger --limit reuses them.

    Examples:

      moa eval ifeval --local --limit 50

      moa eval ifeval --lineup together --aggregation select --limit 150 --json
    """
    with handle_errors():
        from moa_cli import signals
        from moa_cli.cli.batch_cmd import progress_view
        from moa_cli.cli.runtime import load
        from moa_cli.evals import ifeval as core

        settings = load(opt.flag_overrides(flags, verbose=verbose), local=local)
        core.check_installed()
        prompts = core.choose(core.load_prompts(), limit=limit, offset=offset)
        if parallel < 1:
            from moa_cli.errors import ConfigError

            raise ConfigError("--parallel must be at least 1")
        job = core.EvalJob(
            work_dir=(work_dir or core.default_work_dir(settings)).expanduser(),
            prompts=tuple(prompts),
            parallel=parallel,
            restart=restart,
        )
        from moa_cli.api import MoA

        MoA(settings=settings).preload()
        longrun.freeze_startup()  # the SDKs' objects: out of every later full collection
        view = progress_view(quiet)
        try:
            report = signals.run(core.run_eval(settings, job, view), loop_factory=longrun.event_loop_factory())
        except KeyboardInterrupt:
            view.stop()
            sys.stderr.write(f"moa: finished prompts are kept in {job.work_dir}; run the same command to go on\n")
            raise
        finally:
            view.stop()
        if json_output:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        else:
            print_report(report, settings)
        if report.failed:
            sys.stderr.write(
                f"moa: warning: {report.failed} of {report.failed + len(report.scored)} prompts failed and are "
                "left out of the scores; run the same command to retry them\n"
            )
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def _pct(rate: Any) -> str:
    from moa_cli.evals.ifeval import wilson

    low, high = wilson(rate.k, rate.n)
    return f"{100 * rate.value:.1f} ({100 * low:.0f}–{100 * high:.0f})"


_SCORES = ("answer", "prompt strict %", "prompt loose %", "instr. strict %", "instr. loose %")
_EXTRAS = ("final wins/losses", "cut at limit", "repeats a line", "tokens", "seconds")


def report_tables(report: Report, title: str, width: int) -> list[Any]:
    """The report as one table, or as two (scores, then the rest) when one is wider than `width`.

    Ten columns of "81.2 (70–89)" do not fit 100 columns: rich would wrap every header and
    cell over several lines. Each half fits, with the answer's name repeated in both.
    """
    from rich.console import Console
    from rich.table import Table

    def table(columns: tuple[str, ...], heading: str | None, names: dict[str, str] | None = None) -> Table:
        made = Table(title=heading, title_justify="left", show_edge=False, pad_edge=False)
        for column in columns:
            name = (names or {}).get(column, column)
            made.add_column(name, justify="left" if column == "answer" else "right", no_wrap=column != "answer")
        return made

    def cells(row: Any) -> dict[str, str]:
        return {
            "answer": row.name,
            "prompt strict %": _pct(row.prompt_strict),
            "prompt loose %": _pct(row.prompt_loose),
            "instr. strict %": _pct(row.instruction_strict),
            "instr. loose %": _pct(row.instruction_loose),
            "final wins/losses": "" if row.wins is None else f"{row.wins}/{row.losses}",
            "cut at limit": "" if row.cut_at_limit is None else f"{row.cut_at_limit.k}",
            "repeats a line": "" if row.repeats is None else f"{row.repeats.k}",
            "tokens": "" if row.tokens is None else f"{row.tokens:,.0f}",
            "seconds": "" if row.seconds is None else f"{row.seconds:.1f}",
        }

    rows = [cells(row) for row in report.rows]
    whole = table(_SCORES + _EXTRAS, title)
    for row in rows:
        whole.add_row(*(row[c] for c in _SCORES + _EXTRAS))
    # The width the table needs with no cell wrapped: measured by rich, not guessed.
    needed = Console(width=10_000).measure(whole).maximum
    if needed <= width:
        return [whole]
    # Shorter headers (the "%" said once in the title; the notes explain wins/losses and repeats)
    # keep each half within 100 columns.
    scores = table(_SCORES, f"{title} · scores in %", {c: c.removesuffix(" %") for c in _SCORES})
    extras = table(("answer", *_EXTRAS), None, {"final wins/losses": "wins/losses", "repeats a line": "repeats"})
    for row in rows:
        scores.add_row(*(row[c] for c in _SCORES))
        extras.add_row(*(row[c] for c in ("answer", *_EXTRAS)))
    return [scores, extras]


def print_report(report: Report, settings: Any) -> None:
    """The report as a table on stdout (two when the terminal is narrow), and what it was measured on."""
    from moa_cli.render import make_console

    console = make_console()
    if not console.is_terminal:  # a file or a pipe: every column, unwrapped
        console.width = 200
    lineup = f"{', '.join(settings.references)} → {settings.aggregator} ({settings.aggregation})"
    title = f"IFEval, {len(report.scored)} prompts · {lineup}"
    for number, table in enumerate(report_tables(report, title, console.width)):
        if number:
            console.print()
        console.print(table)
    console.print()
    for note in report_notes(report, settings):
        console.print(note, style="dim", soft_wrap=True, highlight=False)


def report_notes(report: Report, settings: Any) -> list[str]:
    """The lines under the table: what the figures mean and what the run chose and cost."""
    notes = [
        "95% Wilson intervals in brackets; wins/losses: prompts the final answer passes and that one fails, strict.",
        "tokens: completion tokens per call (final answer: every call of the turn); seconds: per call (final: per turn).",
    ]
    total = f"{report.tokens:,} tokens" if report.tokens is not None else "tokens unknown"
    cost = f", ${report.cost:.4f}" if report.cost is not None else ""
    notes.append(f"in all: {total}{cost}, {report.seconds:.0f}s of turns")
    if report.selected or report.fallbacks:
        picks = ", ".join(f"reference {k + 1}: {v}" for k, v in sorted(report.selected.items()))
        strategy = settings.aggregation  # consensus gives an answer verbatim too: not "select"
        fell_back = f"; fell back to synthesize {report.fallbacks} times" if strategy == "select" else ""
        notes.append(f"{strategy} picked {picks or 'none'}{fell_back}")
    notes.append(f"per-prompt results: {Path(report.work_dir) / 'scores.jsonl'}")
    return notes
