"""The streamed answer on stdout: Markdown on a terminal, the plain text otherwise.

Finished blocks are printed once, for good; only the unfinished tail block is live, and only
its last screenful is drawn, so long answers never tear or duplicate lines. A token costs a
string append; drawing happens on a timer, at most `REFRESH_PER_SECOND` times a second.
"""

from __future__ import annotations

import threading

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment

from moa_cli.render.blocks import markdown, open_fence_tail, split_blocks
from moa_cli.render.console import REFRESH_PER_SECOND


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
        lines = _render(console, open_fence_tail(self.text, height), options)
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
