"""The run: prepare a job (read, select, fingerprint), answer every item not answered yet on
parallel workers, record each in the sidecar as it finishes, then write the output and the manifest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from moa_cli.api import MoA
from moa_cli.batch.fingerprint import fingerprint, fingerprint_parts
from moa_cli.batch.formats import (
    FASTCHAT_TEMPERATURES,
    BatchInputError,
    Input,
    Item,
    answer_id,
    default_generator,
    read_input,
    render,
    select,
)
from moa_cli.batch.job import Job, Listener, Prepared, Summary
from moa_cli.batch.manifest import manifest
from moa_cli.batch.outcome import Outcome
from moa_cli.batch.pacing import Budget, LimitedRouter, RateLimiter
from moa_cli.batch.reuse import Stored, read_stored
from moa_cli.batch.sidecar import REUSE_PART, SIDECAR_VERSION, Sidecar, manifest_path, sidecar_path
from moa_cli.errors import MoaError, TurnFailed
from moa_cli.files import check_output, write_atomic
from moa_cli.redact import redact
from moa_cli.settings import SPECS, Settings
from moa_cli.types import Message, Proposal

#: Settings only the references' calls use: a re-aggregation (--reuse-proposals) ignores them.
_REFERENCES_ONLY = tuple(name for name, spec in SPECS.items() if spec.decides == "references")


class _Quiet:
    def started(self, summary: Summary) -> None:
        pass

    def finished(self, outcome: Outcome, summary: Summary) -> None:
        pass


def prepare(job: Job, settings: Settings) -> Prepared:
    """Read and check everything (input, selection, generator); BatchInputError on a problem."""
    if job.parallel < 1:
        raise BatchInputError("--parallel must be at least 1")
    if job.rps is not None and not job.rps > 0:
        raise BatchInputError("--rps must be more than 0")
    if job.budget is not None and not 0 < job.budget < float("inf"):
        raise BatchInputError("--budget must be a number of USD more than 0")
    if job.limit is not None and job.limit < 1:
        raise BatchInputError("--limit must be at least 1")
    for path, what in ((job.output, "--output"), (sidecar_path(job.output), "the progress file"),
                       (manifest_path(job.output), "the manifest")):  # fmt: skip
        check_output(path, what)  # a FIFO, link or device is never replaced (exit 2)
    if job.output.resolve() == job.input.resolve():
        raise BatchInputError("the output file must not be the input file")
    data = read_input(job.input, job.format)
    items = select(data.items, ids=job.ids, limit=job.limit)
    warnings: list[str] = []
    stem = default_generator(job.output)
    generator = job.generator or stem
    if data.format == "mtbench" and job.generator and job.generator != stem:
        warnings.append(
            f"FastChat names a model by its answer file's name ({stem!r}), not by model_id "
            f"({job.generator!r}): name the output {job.generator}.jsonl to judge it as {job.generator!r}"
        )
    if job.fastchat_temperatures and data.format != "mtbench":
        raise BatchInputError("--fastchat-temperatures applies to MT-Bench input only")
    reuse = _reuse(job, data, items) if job.reuse_proposals is not None else None
    parts = fingerprint_parts(settings, data.format, data.sha256, job.fastchat_temperatures)
    if reuse is not None:  # other answers than a full run's: never mixed with one in a sidecar
        for name in _REFERENCES_ONLY:  # no reference is called: these change nothing
            parts.pop(name, None)
        parts["routes"] = {settings.aggregator: parts["routes"][settings.aggregator]}
        parts[REUSE_PART] = reuse.sha256
    header = {
        "moa_batch": SIDECAR_VERSION,
        "fingerprint": fingerprint(parts),
        "parts": parts,
        "input": str(job.input),
        "created": time.time(),
    }
    return Prepared(job, settings, data, items, generator, header, warnings, reuse)


def _reuse(job: Job, data: Input, items: Sequence[Item]) -> Stored:
    """The stored proposals for `--reuse-proposals`, checked to hold every selected item."""
    path = job.reuse_proposals
    assert path is not None
    if path.resolve() in (job.output.resolve(), sidecar_path(job.output).resolve()):
        raise BatchInputError("--reuse-proposals must be an earlier run's file, not this run's output or progress")
    stored = read_stored(path)
    if stored.input_sha256 is not None and stored.input_sha256 != data.sha256:
        raise BatchInputError(
            f"--reuse-proposals {path} was made from another input file than {job.input} (its sha256 differs), "
            "so its proposals answer other prompts"
        )
    missing = [item.id for item in items if not stored.covers(item)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BatchInputError(
            f"--reuse-proposals {path} has no proposals for {len(missing)} of the {len(items)} items selected "
            f"(id {shown}): they failed or were not run there; answer them there first, or leave them out with --ids"
        )
    return stored


def _temperature(prepared: Prepared, item: Item) -> float:
    if prepared.job.fastchat_temperatures:  # as FastChat's gen_api_answer: 0.7 for a category it does not list
        return FASTCHAT_TEMPERATURES.get(item.category or "", 0.7)
    return prepared.settings.temperature


async def answer_item(moa: MoA, item: Item, stored: Sequence[Sequence[Proposal]] | None = None) -> Outcome:
    """Ask every turn of `item`, each with the earlier turns and answers; never raises for a model failure.

    With `stored` (one list of proposals per turn), only the aggregator runs, over them.
    """
    started = time.perf_counter()
    messages: list[Message] = list(item.prefix)
    answers: list[str | None] = []
    results: list[dict[str, Any]] = []
    tokens: int | None = 0
    cost: float | None = 0.0
    for number, turn in enumerate(item.turns):
        messages.append({"role": "user", "content": turn})
        try:
            # No one reads a batch's calls as they stream: every one is asked for whole.
            if stored is None:
                result = await moa.arun(messages, watch_references=False, watch_answer=False)
            else:
                result = await moa.aaggregate(messages, stored[number], watch_answer=False)
        except TurnFailed as exc:
            return _failed(item, answers, results, redact(str(exc)), exc.kind, exc.status, started)
        except MoaError as exc:
            kind, status = getattr(exc, "kind", "other"), getattr(exc, "status", None)
            return _failed(item, answers, results, redact(str(exc)), kind, status, started)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one item, not the run
            return _failed(
                item, answers, results, f"unexpected error: {type(exc).__name__}: {exc}", "other", None, started
            )
        answers.append(result.answer)
        results.append(result.to_dict())
        total = result.usage.total_tokens
        tokens = None if tokens is None or total is None else tokens + total
        turn_cost = getattr(result, "cost_usd", None)
        cost = None if cost is None or turn_cost is None else cost + turn_cost
        messages.append({"role": "assistant", "content": result.answer})
    return Outcome(
        item.id, True, answers, results, tokens=tokens, cost=cost, seconds=time.perf_counter() - started,
        answer_id=answer_id(), tstamp=time.time(),
    )  # fmt: skip


def _failed(
    item: Item,
    answers: list[str | None],
    results: list[dict[str, Any]],
    error: str,
    kind: str,
    status: int | None,
    started: float,
) -> Outcome:
    answers = answers + [None] * (len(item.turns) - len(answers))
    return Outcome(
        item.id, False, answers, results, error=error, error_kind=kind, status=status, tokens=None,
        seconds=time.perf_counter() - started, answer_id=answer_id(), tstamp=time.time(),
    )  # fmt: skip


async def run_batch(prepared: Prepared, listener: Listener | None = None, *, router: Any = None) -> Summary:
    """Answer every selected item not answered yet, record each as it finishes, then write the output.

    Cancelling it (a signal) keeps every finished item in the sidecar and writes the
    manifest; the output is written only once every selected item has an answer (or with
    `allow_failures`). `router` replaces the provider pool (tests).
    """
    from moa_cli.providers.registry import ProviderPool

    job, listener = prepared.job, listener or _Quiet()
    budget: Budget | None = None
    worst_cases: dict[str, float] = {}
    if job.budget is not None:
        from moa_cli.recorder import price_book

        budget = Budget(job.budget, await price_book(prepared.settings))
        # Every item priced before anything starts (a gap is exit 2). Prices do not depend on
        # the temperature, the one setting an item may change.
        worst_cases = {item.id: budget.worst_case(item, prepared.settings) for item in prepared.items}
    sidecar = Sidecar(sidecar_path(job.output), prepared.header)
    known = sidecar.open(restart=job.restart)

    def kept(item: Item) -> bool:  # answered by an earlier run; a degraded answer is asked again unless allowed
        outcome = known.get(item.id)
        return outcome is not None and outcome.ok and (job.allow_degraded or not outcome.degraded)

    summary = Summary(
        format=prepared.input.format,
        total=len(prepared.items),
        resumed=sum(1 for item in prepared.items if kept(item)),
        generator=prepared.generator,
        output=job.output,
        sidecar=sidecar.path,
        manifest=manifest_path(job.output),
        warnings=list(prepared.warnings),
        started=time.time(),
    )
    summary.done = summary.resumed
    answered = [known[i.id] for i in prepared.items if kept(i)]
    summary.tokens, summary.cost = _sum_tokens(answered), _sum_cost(answered)
    summary.degraded = [o for o in answered if o.degraded]
    summary.allow_degraded = job.allow_degraded
    todo = [item for item in prepared.items if not kept(item)]
    outcomes = dict(known)
    shared = router or LimitedRouter(ProviderPool(prepared.settings), RateLimiter(job.rps) if job.rps else None)
    settings_at: dict[float, Settings] = {}

    def moa_for(item: Item) -> MoA:
        temperature = _temperature(prepared, item)
        if temperature not in settings_at:
            settings = prepared.settings
            if temperature != settings.temperature:
                settings = settings.with_changes(temperature=temperature)
            settings_at[temperature] = settings
        # Every item's turns go through the batch's router (shared by every item) and are
        # logged as one conversation from source "batch" (when the log is on).
        return MoA(settings=settings_at[temperature], router=shared, source="batch", continue_conversation=True)

    pending = iter(todo)

    async def worker() -> None:
        for item in pending:  # one iterator shared by the workers: each item is taken once
            if summary.stopped_by_budget:
                return
            stored = prepared.reuse.turns[item.id] if prepared.reuse is not None else None
            worst = 0.0
            if budget is not None:
                worst = worst_cases[item.id]
                if not await budget.reserve(worst):
                    summary.stopped_by_budget = True
                    return
            outcome: Outcome | None = None
            try:
                outcome = await answer_item(moa_for(item), item, stored)
            finally:
                if budget is not None:
                    budget.settle(worst, outcome.cost if outcome is not None else None)
                    summary.spent = budget.spent
            await sidecar.write(outcome)
            outcomes[item.id] = outcome
            if outcome.ok:
                summary.done += 1
                if outcome.degraded:
                    summary.degraded.append(outcome)
                summary.tokens = _sum_tokens([outcome], summary.tokens)
                summary.cost = _sum_cost([outcome], summary.cost)
            else:
                summary.failed.append(outcome)
            listener.finished(outcome, summary)

    listener.started(summary)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(job.parallel, len(todo))):
                group.create_task(worker())
        complete = all(item.id in outcomes for item in prepared.items)
        if complete and (not summary.failed or job.allow_failures) and (not summary.degraded or job.allow_degraded):
            write_atomic(job.output, render(summary.format, prepared.items, outcomes, prepared.generator))
            summary.written = True
    except asyncio.CancelledError:
        summary.interrupted = True
        raise
    finally:
        try:
            if router is None:
                await shared.aclose()
        finally:
            sidecar.close()
            summary.ended = time.time()
            write_atomic(summary.manifest, manifest(prepared, summary))  # type: ignore[arg-type]
    return summary


def _sum_tokens(outcomes: Iterable[Outcome], start: int | None = 0) -> int | None:
    total = start
    for outcome in outcomes:
        total = None if total is None or outcome.tokens is None else total + outcome.tokens
    return total


def _sum_cost(outcomes: Iterable[Outcome], start: float | None = 0.0) -> float | None:
    total = start
    for outcome in outcomes:
        total = None if total is None or outcome.cost is None else total + outcome.cost
    return total
