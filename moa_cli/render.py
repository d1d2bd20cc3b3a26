"""Terminal rendering of a turn's events with rich: per-model progress and the streamed answer.

Progress and warnings go to the stderr console; the answer alone goes to the stdout console.

* stderr is a TTY: a live table, one row per model call (model, layer, state, seconds,
  tokens), cleared when the answer starts. Otherwise: one plain line per finished call.
  With the preview on and stdout a TTY too, the draft of the reference furthest along
  streams dimmed under the rows, in the same transient region: it never reaches stdout
  and leaves nothing behind when the answer replaces it.
* stdout is a TTY: the answer renders as Markdown while it streams. Finished blocks are
  printed once, for good; only the unfinished tail block is live, and only its last
  screenful is drawn, so long answers never tear or duplicate lines. A token costs a
  string append; drawing happens on a timer, at most `REFRESH_PER_SECOND` times a second.
  Otherwise: the plain text, written as it arrives.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

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
from moa_cli.types import CallInfo, TurnResult

REFRESH_PER_SECOND = 8


def make_console(*, stderr: bool = False, file: IO[str] | None = None, **kwargs: Any) -> Console:
    """A console that honours NO_COLOR, TERM=dumb and TTY detection (rich does all three)."""
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=False, **kwargs)


# ---------------------------------------------------------------------------- progress


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


# ---------------------------------------------------------------------------- answer


def markdown(text: str) -> Any:
    """A rich Markdown renderable. rich.markdown loads markdown_it (~80 ms), so only on first use."""
    from rich.markdown import Markdown

    return Markdown(text)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def split_blocks(text: str) -> tuple[list[str], str]:
    """Split Markdown into finished blocks and the unfinished tail.

    A block ends at a blank line outside a code fence that is followed by a line starting
    in column 0 (so an indented continuation of a list item stays with its item). The
    last line may still be growing, but once its first character is known it can start
    a new block.
    """
    blocks: list[str] = []
    lines = text.split("\n")
    start = 0
    fence = ""  # the opening fence while inside a fenced code block
    blank_before = False
    for i, line in enumerate(lines):
        last = i == len(lines) - 1  # still growing: only its first character is final
        if fence:
            if not last and _closes(line, fence):
                fence = ""
            blank_before = False
            continue
        if not line.strip():
            blank_before = True
            continue
        if blank_before and not line[:1].isspace() and i > start:
            block = "\n".join(lines[start:i]).strip("\n")
            if block:
                blocks.append(block)
            start = i
        blank_before = False
        if not last and (match := _FENCE.match(line)):
            fence = match.group(1)
    return blocks, "\n".join(lines[start:])


def _closes(line: str, fence: str) -> bool:
    """A closing fence: the opener's character, at least as many times, and nothing else."""
    match = _FENCE.match(line)
    return bool(
        match
        and match.group(1)[0] == fence[0]
        and len(match.group(1)) >= len(fence)
        and not line[match.end() :].strip()
    )


def _open_fence_tail(text: str, keep: int) -> str:
    """Inside a long, still open code block, only its opening line and last `keep` lines.

    The live tail is redrawn several times a second; highlighting a 300-line code block
    each time would make the cost grow with the block. The last lines are all that show.
    """
    lines = text.split("\n")
    if len(lines) <= keep + 1:
        return text
    opened = -1
    fence = ""
    for i, line in enumerate(lines[:-1]):
        if fence:
            if _closes(line, fence):
                fence, opened = "", -1
        elif match := _FENCE.match(line):
            fence, opened = match.group(1), i
    if opened < 0 or len(lines) - opened <= keep + 1:
        return text
    return "\n".join([*lines[: opened + 1], *lines[-keep:]])


class _Block:
    """A finished block, printed for good, one blank line after the block before it.

    rich starts some elements (lists, quotes) with a blank line of its own; that line is
    dropped so the blocks together look exactly like the whole answer rendered at once.
    """

    def __init__(self, text: str, *, first: bool) -> None:
        self.text = text
        self.first = first

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.first:
            yield Segment.line()
        leading = True
        for segment in console.render(markdown(self.text), options):
            if leading and segment.text == "\n" and not segment.control:
                continue
            leading = False
            yield segment


def _render(console: Console, text: str, options: ConsoleOptions) -> list[list[Segment]]:
    """Markdown as lines, without leading empty lines (a code block's padding line stays)."""
    lines = console.render_lines(markdown(text), options, pad=False)
    start = 0
    while start < len(lines) and not Segment.get_line_length(lines[start]):
        start += 1
    return lines[start:]


class _Tail:
    """The live part of an answer: Markdown, cut to its last screenful so it never overflows.

    A live region taller than the terminal cannot be redrawn (the cursor cannot move up
    into the scrollback), which is what makes long answers duplicate lines; so never let it.
    """

    def __init__(self) -> None:
        self.text = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.text.strip():
            return
        height = max(1, console.size.height - 2)
        lines = _render(console, _open_fence_tail(self.text, height), options)
        for line in lines[-height:]:
            yield from line
            yield Segment.line()


class AnswerView:
    """Streams the aggregator's answer: Markdown on a terminal, plain text otherwise.

    Per token, `feed` only appends to the unfinished tail and, at a new line, moves the
    blocks it finished to a queue: no rendering. Rendering happens at most
    `refresh_per_second` times a second, on a timer thread: the queued blocks are printed
    for good (rendered once, together) and the live tail is redrawn. So the work is
    linear in the answer's length and the screen is redrawn at a capped rate.
    """

    def __init__(
        self,
        console: Console,
        *,
        markdown: bool | None = None,
        auto_refresh: bool = True,
        refresh_per_second: float = REFRESH_PER_SECOND,
    ) -> None:
        self.console = console
        self.markdown = console.is_terminal if markdown is None else markdown
        self._parts: list[str] = []
        self._auto_refresh = auto_refresh
        self._interval = 1 / refresh_per_second
        self._lock = threading.Lock()  # guards _pending and _unfinished: feed vs the timer
        self._pending: list[str] = []  # finished blocks not printed yet
        self._unfinished = ""  # the text after them
        self._draw_lock = threading.Lock()  # one drawer at a time: the timer or close()
        self._printed_any = False
        self._tail = _Tail()  # what the live region shows
        self._live: Live | None = None
        self._timer: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._parts)

    def feed(self, piece: str) -> None:
        if not piece:
            return
        self._parts.append(piece)
        if not self.markdown:
            self.console.file.write(piece)
            self.console.file.flush()
            return
        if self._live is None:
            self._start()
        with self._lock:
            unfinished = self._unfinished + piece
            if "\n" in piece:  # a block can only end at a new line
                blocks, unfinished = split_blocks(unfinished)
                self._pending.extend(blocks)
            self._unfinished = unfinished

    def _start(self) -> None:
        self._live = Live(
            self._tail,
            console=self.console,
            auto_refresh=False,  # the timer below draws, blocks and tail together
            transient=True,
            redirect_stderr=False,  # stray stderr output must not end up on stdout
            vertical_overflow="visible",  # _Tail keeps it within the screen
        )
        self._live.start()
        if self._auto_refresh:
            self._timer = threading.Thread(target=self._tick, name="moa-answer-refresh", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stopping.wait(self._interval):
            self.refresh()

    def refresh(self) -> None:
        """Print the finished blocks for good and redraw the live tail (the timer calls this)."""
        with self._draw_lock:
            live = self._live
            if live is None:
                return
            with self._lock:
                blocks, self._pending = self._pending, []
                self._tail.text = self._unfinished
            if blocks:  # printing above a live region redraws the region too
                self._print_block("\n\n".join(blocks))
            else:
                live.refresh()

    def _print_block(self, block: str) -> None:
        self.console.print(_Block(block, first=not self._printed_any))
        self._printed_any = True

    def close(self) -> None:
        """Print what is left for good and stop the live region."""
        if not self.markdown:
            if self._parts and not self._parts[-1].endswith("\n"):
                self.console.file.write("\n")
            self.console.file.flush()
            return
        self._stopping.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        with self._draw_lock:
            live, self._live = self._live, None
            if live is None:
                return
            with self._lock:
                rest = [*self._pending, self._unfinished.strip("\n")]
                self._pending, self._unfinished = [], ""
            self._tail.text = ""
            live.stop()  # transient: the live tail is erased ...
            rest = [block for block in rest if block.strip()]
            if rest:  # ... and everything not printed yet is printed for good
                self._print_block("\n\n".join(rest))


# ---------------------------------------------------------------------------- a turn


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
                self.err.print(Text(redact(f"moa: {event.message}"), style="yellow"), soft_wrap=True)
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
