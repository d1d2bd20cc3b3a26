"""`moa batch INPUT -o OUTPUT`: answer a benchmark file; the work is in moa_cli/batch.py.

Exit codes: 0 every item answered by the whole line-up (or --allow-failures,
--allow-degraded), 1 items failed or were answered without a member of the line-up (no
output written), 2 bad input, options or a sidecar made with other settings, 130/143/129
interrupted (the finished items are kept: rerun the same command to resume).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moa_cli import longrun
from moa_cli.cli import options as opt
from moa_cli.cli.errors import EXIT_FAILED, handle_errors

if TYPE_CHECKING:
    from moa_cli.batch import Job, Outcome, Summary

PLAIN_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
_SHOWN_ERRORS = 3


@opt.setting_options("batch")
def batch(
    input_file: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="Benchmark file: AlpacaEval JSON, MT-Bench or FLASK JSONL, or JSONL prompts.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    *,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="OUTPUT",
            help="Where to write the answers (in the format the judge reads).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    input_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="alpaca|mtbench|flask|jsonl",
            help="Input and output format (default: detected from the input).",
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", "-p", metavar="N", help="Items in flight at once, each with its own fan-out.")
    ] = 4,
    rps: Annotated[
        float | None,
        typer.Option(
            "--rps",
            metavar="R",
            help="Most model requests started per second, across the run (Together's free tier: about 1).",
            show_default=False,
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            metavar="USD",
            help="Most USD this run may spend: an item starts only if its worst case (every call at "
            "max_tokens) fits in what is left; every model needs a price.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", help="Only the first N items (after --ids).", show_default=False),
    ] = None,
    ids: Annotated[
        str | None,
        typer.Option(
            "--ids",
            metavar="A,B,...",
            help="Only these items: question_id (MT-Bench, FLASK), id (jsonl), position from 0 (AlpacaEval).",
            show_default=False,
        ),
    ] = None,
    generator: Annotated[
        str | None,
        typer.Option(
            "--generator",
            metavar="NAME",
            help="Model name written into the output (default: the output file's name).",
            show_default=False,
        ),
    ] = None,
    allow_failures: Annotated[
        bool,
        typer.Option(
            "--allow-failures", help="Write the output even if items failed (empty answer; $ERROR$ for MT-Bench)."
        ),
    ] = False,
    allow_degraded: Annotated[
        bool,
        typer.Option(
            "--allow-degraded",
            help="Write the output even if items were answered without the whole line-up "
            "(a reference failed, select fell back); they are still counted in the manifest.",
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the answers kept from an earlier run and start over.")
    ] = False,
    fastchat_temperatures: Annotated[
        bool,
        typer.Option(
            "--fastchat-temperatures", help="MT-Bench: FastChat's per-category temperatures instead of --temperature."
        ),
    ] = False,
    reuse_proposals: Annotated[
        Path | None,
        typer.Option(
            "--reuse-proposals",
            metavar="PATH",
            help=(
                "Run only the aggregator, over the proposals an earlier run of the same input kept in PATH: "
                "its --format jsonl output, or its OUTPUT.moa-progress file (any format). No reference is called."
            ),
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    local: opt.Local = False,
    verbose: opt.Verbose = False,
    quiet: opt.Quiet = False,
    flags: dict[str, Any],
) -> None:
    """Answer a whole benchmark file, resumably: AlpacaEval, MT-Bench, FLASK or JSONL prompts.

    Finished items are kept next to OUTPUT as they finish: after a crash or Ctrl-C, the same
    command answers only what is left. The output is written once every item has an answer.

    Examples:

      moa batch alpaca_eval.json -o results/moa/model_outputs.json --parallel 8

      moa batch question.jsonl -o model_answer/moa.jsonl --fastchat-temperatures --rps 1

      moa batch prompts.jsonl -o other.jsonl --reuse-proposals answers.jsonl -a MODEL
    """
    with handle_errors():
        from moa_cli import batch as core
        from moa_cli import signals
        from moa_cli.cli.runtime import load

        core.read_input(input_file, input_format)  # a bad input file is the first thing said (exit 2)
        chosen = tuple(part.strip() for part in (ids or "").split(",") if part.strip())
        if ids is not None and not chosen:  # `--ids ,` or `--ids "$UNSET"` must not mean every item
            from moa_cli.errors import ConfigError

            raise ConfigError(f"--ids {ids!r} names no item: give ids separated by commas")
        settings = load(opt.flag_overrides(flags, verbose=verbose), local=local)
        job = core.Job(
            input=input_file,
            output=output,
            format=input_format,
            parallel=parallel,
            rps=rps,
            limit=limit,
            ids=chosen,
            generator=generator,
            allow_failures=allow_failures,
            allow_degraded=allow_degraded,
            restart=restart,
            fastchat_temperatures=fastchat_temperatures,
            reuse_proposals=reuse_proposals,
            budget=budget,
        )
        job = replace(job, command=resume_command(job, flags, local=local))
        prepared = core.prepare(job, settings)
        for warning in prepared.warnings:
            sys.stderr.write(f"moa: warning: {warning}\n")
        from moa_cli.api import MoA

        MoA(settings=settings).preload()  # import the SDKs before the loop runs
        longrun.freeze_startup()  # the SDKs' objects: out of every later full collection
        view = progress_view(quiet)
        try:
            summary = signals.run(core.run_batch(prepared, view), loop_factory=longrun.event_loop_factory())
        except KeyboardInterrupt:
            view.stop()
            if view.summary is not None:
                _say_kept(view.summary, job.command)
            raise
        finally:
            view.stop()
        code = _report(summary, job.command, quiet=quiet)
    if code:
        raise typer.Exit(code)


def resume_command(job: Job, flags: dict[str, Any], *, local: bool = False) -> str:
    """The command that goes on with this run: the same input, output, settings and options
    (never --restart, which would throw the kept answers away)."""
    from moa_cli.settings import SPECS

    words = ["moa", "batch", str(job.input), "-o", str(job.output)]
    if local:
        words.append("--local")
    for name, value in flags.items():
        if value is None or name not in SPECS or not SPECS[name].flags:
            continue
        spelling = SPECS[name].flags[0]
        if SPECS[name].kind == "bool":
            on, _, off = spelling.partition("/")
            words.append(on if value else off)
        elif isinstance(value, (list, tuple)):
            words += [spelling, ",".join(value)]
        else:
            words += [spelling, str(value)]
    options = {
        "--format": job.format, "--parallel": job.parallel, "--rps": job.rps, "--limit": job.limit,
        "--ids": ",".join(job.ids) or None, "--generator": job.generator, "--reuse-proposals": job.reuse_proposals,
        "--budget": job.budget,
    }  # fmt: skip
    for spelling, value in options.items():
        if value is not None:
            words += [spelling, f"{value:g}" if isinstance(value, float) else str(value)]
    words += [
        spelling
        for spelling, on in (
            ("--allow-failures", job.allow_failures),
            ("--allow-degraded", job.allow_degraded),
            ("--fastchat-temperatures", job.fastchat_temperatures),
        )
        if on
    ]
    return shlex.join(words)


# ---------------------------------------------------------------------------- progress on stderr


class _View:
    """Progress on stderr: a rich bar on a terminal, else a plain line every few seconds."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.summary: Summary | None = None
        self._started = time.monotonic()
        self._last_line = 0.0
        self._progress: Any = None
        self._task: Any = None
        self._new = 0  # answered by this run, for the rate
        self._stopped = False

    def started(self, summary: Summary) -> None:
        self.summary = summary
        self._started = time.monotonic()
        if self.quiet:
            return
        from moa_cli.render import make_console

        console = make_console(stderr=True)
        if console.is_terminal and not console.is_dumb_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]}"),
                TextColumn("{task.fields[tokens]}"),
                TextColumn("{task.fields[cost]}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(
                "batch", total=summary.total, completed=summary.done, **self._fields(summary)
            )
            self._progress.start()
        else:
            self._line(summary)

    def finished(self, outcome: Outcome, summary: Summary) -> None:
        self.summary = summary
        if outcome.ok:
            self._new += 1
        if self._progress is not None:
            self._progress.update(self._task, completed=summary.done + len(summary.failed), **self._fields(summary))
        elif not self.quiet and time.monotonic() - self._last_line >= PLAIN_INTERVAL:
            self._line(summary)

    def stop(self) -> None:
        """End the progress display: the bar, or the plain lines' last one (once)."""
        if self._stopped:
            return
        self._stopped = True
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif not self.quiet and self.summary is not None and self._last_line and self._new + len(self.summary.failed):
            self._line(self.summary)

    @staticmethod
    def _fields(summary: Summary) -> dict[str, str]:
        failed = f"{len(summary.failed)} failed" if summary.failed else ""
        tokens = f"{summary.tokens:,} tok" if summary.tokens is not None else "tokens unknown"
        return {"failed": failed, "tokens": tokens, "cost": _cost(summary)}

    def _line(self, summary: Summary) -> None:
        self._last_line = time.monotonic()
        elapsed = self._last_line - self._started
        finished = summary.done + len(summary.failed)
        parts = [f"{finished}/{summary.total} done"]
        if summary.resumed:
            parts.append(f"{summary.resumed} from an earlier run")
        if summary.failed:
            parts.append(f"{len(summary.failed)} failed")
        parts.append(f"{summary.tokens:,} tokens" if summary.tokens is not None else "tokens unknown")
        if _cost(summary):
            parts.append(_cost(summary))
        rate = (self._new + len(summary.failed)) / elapsed if elapsed > 0 else 0.0
        left = summary.total - finished
        if rate > 0 and left:
            parts.append(f"{rate:.2f} items/s, about {_duration(left / rate)} left")
        sys.stderr.write("moa: batch: " + ", ".join(parts) + "\n")
        sys.stderr.flush()


def _cost(summary: Summary) -> str:
    """The run's cost so far when every answered item was priced, else nothing (never a guess)."""
    return f"${summary.cost:.4f}" if summary.cost is not None and summary.done else ""


def progress_view(quiet: bool) -> _View:
    return _View(quiet)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ---------------------------------------------------------------------------- the end of a run


def _say_kept(summary: Summary, command: str) -> None:
    sys.stderr.write(
        f"moa: {summary.done} of {summary.total} items answered, kept in {summary.sidecar}; "
        f"run the same command to go on: {command}\n"
    )


def _degraded(summary: Summary) -> str:
    """'2 of 3 items were answered without the whole line-up (alpha failed on 2, ...)', or ''."""
    if not summary.degraded:
        return ""
    from moa_cli.batch import degraded_by_member

    what = ", ".join(f"{member} on {count}" for member, count in degraded_by_member(summary.degraded).items())
    return f"{len(summary.degraded)} of {summary.total} items were answered without the whole line-up ({what})"


def _report(summary: Summary, command: str, *, quiet: bool) -> int:
    """The closing lines on stderr; the exit code."""
    tokens = f"{summary.tokens:,} tokens" if summary.tokens is not None else "tokens unknown"
    seconds = summary.ended - summary.started
    resumed = f" ({summary.resumed} from an earlier run)" if summary.resumed else ""
    if summary.stopped_by_budget:
        from moa_cli.pricing import format_usd

        left = summary.total - summary.done - len(summary.failed)
        sys.stderr.write(
            f"moa: error: --budget reached: {format_usd(summary.spent)} spent in this run, and the next item's "
            f"worst case did not fit; {left} of {summary.total} items not answered, so {summary.output} was not "
            f"written ({summary.done} answers are kept)\n"
            f"moa: run the same command to go on, with a new --budget for what is left: {command}\n"
        )
        return EXIT_FAILED
    degraded = _degraded(summary)
    if degraded and not summary.allow_degraded:
        failed = f"{len(summary.failed)} items failed and " if summary.failed else ""
        sys.stderr.write(
            f"moa: error: {failed}{degraded}, so {summary.output} was not written (a judge would score a mixture that "
            f"was not one); listed in {summary.manifest}\n"
            f"moa: run the same command to ask them again ({summary.done - len(summary.degraded)} full answers "
            f"are kept): {command}; or add --allow-degraded to write them as they are\n"
        )
        return EXIT_FAILED
    if degraded:
        sys.stderr.write(f"moa: warning: {degraded}, listed in {summary.manifest}\n")
    if not summary.failed:
        if not quiet and summary.written:
            sys.stderr.write(
                f"moa: wrote {summary.total} answers to {summary.output}{resumed}, {tokens}, {seconds:.1f}s\n"
            )
        return 0
    count = f"{len(summary.failed)} of {summary.total} items failed"
    first = "; ".join(f"{o.id}: {o.error}" for o in summary.failed[:_SHOWN_ERRORS])
    more = f" (and {len(summary.failed) - _SHOWN_ERRORS} more)" if len(summary.failed) > _SHOWN_ERRORS else ""
    if summary.written:
        placeholder = "$ERROR$" if summary.format == "mtbench" else "an empty answer"
        sys.stderr.write(
            f"moa: warning: {count}, written with {placeholder} and listed in {summary.manifest}: {first}{more}\n"
        )
        return 0
    sys.stderr.write(
        f"moa: error: {count}, so {summary.output} was not written (a short file skews the judge): {first}{more}\n"
    )
    sys.stderr.write(
        f"moa: run the same command to retry them ({summary.done} answers are kept): {command}; "
        "or add --allow-failures to write the file with the failed items marked\n"
    )
    return EXIT_FAILED
