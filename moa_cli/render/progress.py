"""Per-model progress of a turn on stderr: a live table on a terminal, plain lines otherwise.

One row per model call (model, layer, state, seconds, tokens), cleared when the answer
starts. With the preview on and stdout a TTY too, the draft of the reference furthest along
streams dimmed under the rows, in the same transient region: it never reaches stdout and
leaves nothing behind when the answer replaces it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from moa_cli.errors import KIND_WORDS
from moa_cli.events import (
    AnswerDelta,
    CallDelta,
    CallFailed,
    CallFinished,
    CallFirstToken,
    CallRetrying,
    CallStarted,
    ContextFitted,
    Event,
    TurnDone,
    TurnWarning,
)
from moa_cli.redact import redact
from moa_cli.render.console import REFRESH_PER_SECOND
from moa_cli.types import CallInfo


@dataclass
class _Row:
    call: CallInfo
    state: str = "running"
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None
    tokens: int = 0  # streamed pieces until the provider reports usage, then its count
    exact: bool = False  # tokens is the provider's own count
    error: str | None = None
    parts: list[str] = field(default_factory=list)  # the streamed text, kept only for the draft

    def token_text(self, unit: str = "tok") -> str:
        # Pieces are not tokens: say "~" until the provider gives its count.
        return f"{self.tokens} {unit}" if self.exact else f"~{self.tokens} {unit}"


def _label(call: CallInfo) -> str:
    return "aggregator" if call.is_aggregator else f"layer {call.layer}"


def kind_word(kind: str | None, timed_out: bool = False) -> str:
    """What a failure is called in a row or a footer: "timed out", "cut off", "failed", ..."""
    if timed_out and kind in (None, "other"):  # made by a caller that set only `timed_out`
        return "timed out"
    return KIND_WORDS.get(kind or "other", "failed")


def one_line(console: Console) -> bool:
    """Whether a notice stays one line: yes for a file or a pipe (one line per notice, for grep
    and logs), no on a terminal, where rich wraps it at word boundaries to the width."""
    return not console.is_terminal


def retry_word(event: CallRetrying) -> str:
    """A row waiting to retry: "HTTP 429, waiting to retry (2s)" rather than "running ~0 tok"."""
    wait = f" ({event.wait:.0f}s)" if event.wait is not None else ""
    again = f", retry {event.attempt}" if event.attempt > 1 else ""
    return f"HTTP {event.status}, waiting to retry{wait}{again}"


def left_out_warning(event: CallFailed) -> Text:
    """The one warning line for a reference that failed: `moa: warning: M (layer 1) left out: why`.

    Each kind's reason names it in its own words ("timed out ...", "... (cut off)", "HTTP 401
    authentication failed ..."), so the line says only the reason.
    """
    reason = redact(" ".join(event.error.split()))
    return Text(f"moa: warning: {event.call.model} ({_label(event.call)}) left out: {reason}", style="yellow")


def incomplete_notice(model: str) -> Text:
    """Said on stderr after a failed aggregator had streamed part of its answer to stdout."""
    return Text(f"moa: the answer above is incomplete: the aggregator {model} failed before it finished", style="red")


class ProgressView:
    """One row per model call; a live table on a terminal, plain lines otherwise.

    With `draft=True` (and a live table), the text of the reference furthest along is shown
    under the rows, dimmed and labelled, cut to what fits on the screen: something to read
    while the references work. It lives in the same transient region as the rows, so it is
    redrawn at the same capped rate and vanishes with them when the answer starts.
    """

    def __init__(self, console: Console, *, draft: bool = False, auto_refresh: bool = True) -> None:
        self.console = console
        self.rows: dict[CallInfo, _Row] = {}
        self.live: Live | None = None
        self.draft = draft
        self.auto_refresh = auto_refresh  # False: drawn only by live.refresh() (the tests)
        self._lock = threading.Lock()

    @property
    def animated(self) -> bool:
        return self.console.is_terminal and not self.console.is_dumb_terminal

    def start(self) -> None:
        if self.animated and self.live is None:
            self.live = Live(
                self,
                console=self.console,
                refresh_per_second=REFRESH_PER_SECOND,
                auto_refresh=self.auto_refresh,
                transient=True,
                redirect_stdout=False,  # stdout is for the answer only
            )
            self.live.start()

    def stop(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            live.stop()

    def handle(self, event: Event) -> None:
        if isinstance(event, (TurnDone, TurnWarning, ContextFitted)):  # TurnView says these
            return
        with self._lock:
            if isinstance(event, CallStarted):
                self.rows[event.call] = _Row(event.call)
                return
            # A call cut off by a layer deadline while waiting for a slot never started.
            row = self.rows.setdefault(event.call, _Row(event.call))
            if isinstance(event, (CallDelta, AnswerDelta)):
                row.tokens += 1
                if self.draft and isinstance(event, CallDelta):
                    row.parts.append(event.text)
            elif isinstance(event, CallFirstToken):
                row.state = "streaming"
            elif isinstance(event, CallRetrying):
                row.state = retry_word(event)
            elif isinstance(event, CallFinished):
                row.state, row.seconds = "done", event.seconds
                if event.usage and event.usage.completion_tokens is not None:
                    row.tokens, row.exact = event.usage.completion_tokens, True
            elif isinstance(event, CallFailed):
                row.state = kind_word(event.kind, event.timed_out)
                row.seconds, row.error = event.seconds, event.error
        if isinstance(event, CallFailed) and event.kind == "quorum":
            if not self.animated:  # asked for, so not a warning: the row and the footer say it
                self.console.print(
                    f"moa: {event.call.model} ({_label(event.call)}) {KIND_WORDS['quorum']} after {event.seconds:.1f}s",
                    markup=False,
                    soft_wrap=True,
                )
        elif isinstance(event, CallFailed) and not event.call.is_aggregator:
            self.console.print(left_out_warning(event), soft_wrap=one_line(self.console))
        elif isinstance(event, CallRetrying) and not self.animated:
            self.console.print(
                f"moa: {event.call.model} ({_label(event.call)}) {retry_word(event)}", markup=False, soft_wrap=True
            )
        elif isinstance(event, CallFinished) and not self.animated and not event.call.is_aggregator:
            self.console.print(
                f"moa: {event.call.model} ({_label(event.call)}) done in {event.seconds:.1f}s, {row.token_text('tokens')}",
                markup=False,
                soft_wrap=True,
            )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=max(20, options.max_width - 45))
        table.add_column(no_wrap=True, style="dim")
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(justify="right", no_wrap=True, style="dim")
        now = time.perf_counter()
        with self._lock:
            rows = list(self.rows.values())
        for row in rows:
            seconds = row.seconds if row.seconds is not None else now - row.started
            if row.state in ("running", "streaming") or row.state.startswith("HTTP "):
                icon: Any = Spinner("dots", style="cyan")
                state = Text(row.state, style="cyan")
            elif row.state == "done":
                icon, state = Text("✓", style="green"), Text("done", style="green")
            else:
                icon, state = Text("✗", style="red"), Text(row.state, style="red")
            table.add_row(icon, row.call.model, _label(row.call), state, f"{seconds:.1f}s", row.token_text())
        yield table
        if self.draft and self.animated:
            yield from self._draft_lines(console, options, rows)

    def _draft_lines(self, console: Console, options: ConsoleOptions, rows: list[_Row]) -> RenderResult:
        """The draft furthest along in the latest layer: a label, then its last lines that fit."""
        # The screen holds the rows, a blank line, the label, the draft and the cursor's line.
        room = console.size.height - len(rows) - 3
        references = [
            r for r in rows if not r.call.is_aggregator and r.parts and r.state in ("running", "streaming", "done")
        ]
        if room < 1 or not references:
            return
        latest = max(r.call.layer for r in references)
        best = max((r for r in references if r.call.layer == latest), key=lambda r: (len(r.parts), -r.call.index))
        text = "".join(best.parts)
        # Wrapping costs what the text is long: wrap only the end that can show.
        keep = room * max(20, options.max_width) * 2
        text = text[-keep:].strip("\n")
        if not text.strip():
            return
        label = Text(f"draft from {best.call.model} ({_label(best.call)})", style="dim italic")
        lines = console.render_lines(Text(text, style="dim"), options, pad=False)
        yield Segment.line()
        yield from console.render(label, options)
        for line in lines[-room:]:
            yield from line
            yield Segment.line()
