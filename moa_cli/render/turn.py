"""A turn's events routed: progress and warnings to the stderr console, the answer alone to
the stdout console; and the footer line after it."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from moa_cli.events import (
    AnswerDelta,
    CallFailed,
    ContextFitted,
    Event,
    TurnWarning,
)
from moa_cli.redact import redact
from moa_cli.render.answer import AnswerView
from moa_cli.render.progress import ProgressView, incomplete_notice, left_out_warning, one_line
from moa_cli.types import TurnResult


def aggregator_calls(result: TurnResult) -> int:
    """The calls the aggregator step made upstream: none for consensus (or select over one
    answer), two when select fell back to synthesizing, else one."""
    if result.aggregation == "consensus":
        return 0
    if result.aggregation == "select":
        if result.warnings:
            return 2
        last = max((p.layer for p in result.proposals), default=0)
        answered = [p for p in result.proposals if p.layer == last and p.text is not None]
        return 0 if result.selected is not None and len(answered) <= 1 else 1
    return 1


def footer_text(result: TurnResult) -> str:
    """`3.2s · 1,234 tokens · 5 calls · left out: model-b (failed) · answer cut at the token limit (max_tokens 512)`"""
    parts = [f"{result.seconds:.1f}s"]
    total = result.usage.total_tokens
    parts.append(f"{total:,} tokens" if total is not None else "tokens unknown")
    calls = len(result.proposals) + aggregator_calls(result)
    parts.append(f"{calls} call{'s' * (calls != 1)}")
    if result.cost_usd is not None or result.unpriced_calls:  # priced by pricing.py (None: not priced)
        from moa_cli.pricing import cost_text

        parts.append(cost_text(result.priced_usd or 0.0, result.unpriced_calls, calls))
    if result.failed:  # "3 of 4 references (model-b timed out)": the answer is made of fewer
        parts.append(result.references_summary())
    if result.finish_reason == "length":
        limit = f" (max_tokens {result.max_tokens})" if result.max_tokens is not None else ""
        parts.append(f"answer cut at the token limit{limit}")
    return redact(" · ".join(parts))


class TurnView:
    """Routes a turn's events: progress to stderr, the answer to stdout."""

    def __init__(
        self,
        err: Console,
        out: Console,
        *,
        markdown: bool | None = None,
        progress: bool = True,
        show_answer: bool = True,
        preview: bool = False,
    ) -> None:
        # The draft is for someone watching the answer arrive: both streams on a terminal.
        draft = preview and show_answer and out.is_terminal and not out.is_dumb_terminal
        self.progress = ProgressView(err, draft=draft) if progress else None
        self.answer = AnswerView(out, markdown=markdown) if show_answer else None
        self.err = err
        self._fitted: set[str] = set()  # what was said about fitting this turn: each once

    @property
    def watches_references(self) -> bool:
        """Whether the references' pieces are read as they arrive: the progress rows count
        them (and the live table draws the draft); with --quiet there are no rows."""
        return self.progress is not None

    def start(self) -> None:
        if self.progress:
            self.progress.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, TurnWarning):  # aggregation.py's fallback, for one: said even with --quiet
            self.err.print(Text(redact(f"moa: warning: {event.message}"), style="yellow"), soft_wrap=one_line(self.err))
            return
        if isinstance(event, ContextFitted):  # said once, even with --quiet: the input was shortened
            if event.message not in self._fitted:
                self._fitted.add(event.message)
                self.err.print(Text(redact(f"moa: {event.message}"), style="yellow"), soft_wrap=one_line(self.err))
            return
        if isinstance(event, AnswerDelta):
            if self.answer is not None:
                if self.progress and self.progress.live is not None:
                    self.progress.stop()  # one live region at a time: the answer takes over
                self.answer.feed(event.text)
            return
        if self.progress:
            self.progress.handle(event)
        elif isinstance(event, CallFailed) and not event.call.is_aggregator and event.kind != "quorum":
            self.err.print(left_out_warning(event), soft_wrap=one_line(self.err))

    def stop(self) -> None:
        """Stop every live region (after success, failure or cancellation)."""
        if self.progress:
            self.progress.stop()
        if self.answer is not None:
            self.answer.close()

    @property
    def answer_started(self) -> bool:
        """Some of the answer has been written to stdout."""
        return self.answer is not None and bool(self.answer.text)

    def footer(self, result: TurnResult) -> None:
        self.err.print(Text(footer_text(result), style="dim"), soft_wrap=one_line(self.err))

    def incomplete(self, model: str) -> None:
        """Say that the text already on stdout is not a whole answer (the aggregator failed)."""
        self.err.print(incomplete_notice(model), soft_wrap=one_line(self.err))
