"""The renderer, into in-memory consoles: block splitting, the streamed answer, progress, footer.

The long-answer tests replay what rich writes to a terminal through a tiny VT100 model
(`Screen`) in which, as on a real terminal, the cursor cannot move up into the
scrollback. That is exactly how a live region taller than the screen duplicates lines,
so these tests fail if the streamed answer ever tears or repeats.
"""

from __future__ import annotations

import re
import time
from io import StringIO

import pytest
from rich.console import Console
from rich.markdown import Markdown

from moa_cli.events import AnswerDelta, CallDelta, CallFailed, CallFinished, CallFirstToken, CallStarted
from moa_cli.render import AnswerView, ProgressView, TurnView, footer_text, split_blocks
from moa_cli.types import CallInfo, Proposal, TurnResult, Usage
from tests.fakes.llm_server import split_pieces

WIDTH, HEIGHT = 80, 24


def long_markdown(sections: int = 8) -> str:
    """An answer of several screens with every kind of block the models like to write."""
    parts = ["# A long answer", ""]
    for n in range(1, sections + 1):
        parts += [
            f"## Section {n}",
            "",
            f"Paragraph {n} explains the idea in some detail, with **bold**, *italic* and `inline code`, "
            "and it is long enough to wrap over more than one line of an eighty-column terminal.",
            "",
            f"1. point {n}.1",
            f"2. point {n}.2, which also",
            "   continues on an indented line",
            "",
            "```python",
            f"def section_{n}():",
            "",  # a blank line inside a fence must not end the block
            f"    return {n}",
            "```",
            "",
            "| key | value |",
            "|-----|-------|",
            f"| n   | {n}     |",
            "",
            f"> A quote closing section {n}.",
            "",
        ]
    parts.append("The end.")
    return "\n".join(parts)


def plain_console(**kwargs: object) -> Console:
    return Console(file=StringIO(), width=WIDTH, color_system=None, **kwargs)  # type: ignore[arg-type]


def lines_of(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def whole_rendering(text: str) -> list[str]:
    console = plain_console()
    console.print(Markdown(text))
    return lines_of(console.file.getvalue())  # type: ignore[attr-defined]


class Screen:
    """Just enough of a VT100 for rich's Live: text, CR, LF, erase line, cursor up.

    The terminal shows the last `height` lines; lines scrolled above it are scrollback,
    which no control sequence can reach again.
    """

    _TOKEN = re.compile(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)")

    def __init__(self, height: int = HEIGHT) -> None:
        self.height = height
        self.lines: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, data: str) -> None:
        for token in self._TOKEN.split(data):
            if not token:
                continue
            if token == "\r":
                self.col = 0
            elif token == "\n":  # the tty turns LF into CR LF
                self.row += 1
                self.col = 0
                if self.row == len(self.lines):
                    self.lines.append("")
            elif token.startswith("\x1b["):
                self._control(token[2:-1], token[-1])
            else:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[: self.col] + token + line[self.col + len(token) :]
                self.col += len(token)

    def _control(self, params: str, final: str) -> None:
        if final == "K":
            self.lines[self.row] = "" if params == "2" else self.lines[self.row][: self.col]
        elif final == "A":
            top = max(0, len(self.lines) - self.height)  # can't go above the screen
            self.row = max(top, self.row - int(params or 1))
        elif final in "hlm":  # cursor visibility, modes, colours: nothing to draw
            pass
        else:
            raise AssertionError(f"unexpected control sequence ESC[{params}{final}")

    def text(self) -> list[str]:
        lines = [line.rstrip() for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def terminal_console(file: StringIO) -> Console:
    return Console(file=file, width=WIDTH, height=HEIGHT, force_terminal=True, color_system=None, highlight=False)


# ---------------------------------------------------------------------------- split_blocks


def test_split_blocks_keeps_the_growing_tail_and_splits_at_blank_lines() -> None:
    blocks, tail = split_blocks("Para one.\n\nPara two\nstill two.\n\nPara thr")
    assert blocks == ["Para one.", "Para two\nstill two."]
    assert tail == "Para thr"


def test_split_blocks_does_not_split_before_an_indented_continuation() -> None:
    blocks, tail = split_blocks("- item\n\n  more of the item\n\nNext")
    assert blocks == ["- item\n\n  more of the item"]
    assert tail == "Next"


def test_split_blocks_never_splits_inside_a_fence() -> None:
    text = "````md\n```python\n\nx = 1\n```\n\nstill fenced\n````\n\nafter"
    blocks, tail = split_blocks(text)
    assert blocks == ["````md\n```python\n\nx = 1\n```\n\nstill fenced\n````"]
    assert tail == "after"


def test_split_blocks_waits_for_an_unclosed_fence() -> None:
    blocks, tail = split_blocks("Intro\n\n```\ncode\n\nmore code\n")
    assert blocks == ["Intro"]
    assert tail == "```\ncode\n\nmore code\n"


def test_blocks_rendered_one_by_one_look_like_the_whole_answer() -> None:
    text = long_markdown()
    console = plain_console()
    view = AnswerView(console, markdown=True)
    for piece in split_pieces(text):
        view.feed(piece)
    view.close()
    assert lines_of(console.file.getvalue()) == whole_rendering(text)  # type: ignore[attr-defined]
    assert view.text == text


# ---------------------------------------------------------------------------- long answers on a terminal


@pytest.mark.parametrize("chunking", ["words", "lines"])
def test_an_answer_several_screens_long_streams_without_duplicated_or_lost_lines(chunking: str) -> None:
    text = long_markdown()
    expected = whole_rendering(text)
    assert len(expected) > 5 * HEIGHT  # really several screens

    file = StringIO()
    view = AnswerView(terminal_console(file), markdown=True, auto_refresh=False)
    pieces = split_pieces(text) if chunking == "words" else text.splitlines(keepends=True)
    for piece in pieces:
        view.feed(piece)
        view.refresh()  # redraw after every token: the worst case for tearing
    view.close()

    screen = Screen()
    screen.feed(file.getvalue())
    assert screen.text() == expected


def test_the_screen_model_catches_the_known_trap() -> None:
    """Re-rendering the whole answer in one `Live` duplicates lines once it outgrows the screen."""
    from rich.live import Live

    text = long_markdown(sections=3)
    file = StringIO()
    live = Live(console=terminal_console(file), auto_refresh=False, vertical_overflow="visible")
    live.start()
    so_far = ""
    for piece in text.splitlines(keepends=True):
        so_far += piece
        live.update(Markdown(so_far), refresh=True)
    live.stop()
    screen = Screen()
    screen.feed(file.getvalue())
    assert len(screen.text()) > 2 * len(whole_rendering(text))


def test_the_live_tail_never_grows_past_the_screen() -> None:
    # One giant code block can't be split: its live part must still fit on the screen.
    code = "Some code:\n\n```\n" + "".join(f"line {n}\n" for n in range(120)) + "```\n"
    file = StringIO()
    view = AnswerView(terminal_console(file), markdown=True, auto_refresh=False)
    tallest = 0
    for piece in code.splitlines(keepends=True):
        view.feed(piece)
        before = file.tell()
        view.refresh()
        frame = file.getvalue()[before:]
        tallest = max(tallest, frame.count("\n") + 1)
    view.close()
    assert tallest <= HEIGHT
    screen = Screen()
    screen.feed(file.getvalue())
    assert screen.text() == whole_rendering(code)


def test_streaming_with_rich_refreshing_on_its_own_thread_gives_the_same_screen() -> None:
    text = long_markdown(sections=4)
    file = StringIO()
    view = AnswerView(terminal_console(file), markdown=True, refresh_per_second=200)
    for piece in split_pieces(text):
        view.feed(piece)
        time.sleep(0.0005)  # let the refresh thread in between tokens
    view.close()
    screen = Screen()
    screen.feed(file.getvalue())
    assert screen.text() == whole_rendering(text)


def test_plain_mode_writes_the_text_as_it_arrives() -> None:
    console = plain_console()
    view = AnswerView(console, markdown=False)
    view.feed("**Hello**")
    assert console.file.getvalue() == "**Hello**"  # type: ignore[attr-defined]
    view.feed(" world")
    view.close()
    assert console.file.getvalue() == "**Hello** world\n"  # type: ignore[attr-defined]


def test_markdown_is_the_default_only_on_a_terminal() -> None:
    assert AnswerView(plain_console()).markdown is False
    assert AnswerView(terminal_console(StringIO())).markdown is True


# ---------------------------------------------------------------------------- progress and footer

A = CallInfo("model-a", 1, 0)
B = CallInfo("model-b", 1, 1)
C = CallInfo("model-c", 1, 2)
AGG = CallInfo("agg", 2, 0, "aggregator")


def test_progress_shows_one_row_per_call_with_state_seconds_and_tokens() -> None:
    console = plain_console()
    view = ProgressView(console)
    for call in (A, B, C):
        view.handle(CallStarted(call))
    view.handle(CallFirstToken(A, 0.1))
    view.handle(CallDelta(A, "hi"))
    view.handle(CallFinished(A, "hi there", 1.25, Usage(3, 7, 10)))
    view.handle(CallFailed(B, "HTTP 500: boom", 0.5))
    view.handle(CallFailed(C, "timed out at the layer deadline", 2.0, timed_out=True))
    view.handle(CallStarted(AGG))

    console.file.truncate(0)  # type: ignore[attr-defined]
    console.file.seek(0)  # type: ignore[attr-defined]
    console.print(view)
    rows = lines_of(console.file.getvalue())  # type: ignore[attr-defined]
    assert len(rows) == 4
    assert re.search(r"model-a\s+layer 1\s+done\s+1\.2s\s+7 tok", rows[0])
    assert re.search(r"model-b\s+layer 1\s+failed\s+0\.5s", rows[1])
    assert re.search(r"model-c\s+layer 1\s+timed out\s+2\.0s", rows[2])
    assert re.search(r"agg\s+aggregator\s+running", rows[3])


def test_a_row_waiting_to_retry_says_so_until_its_first_token() -> None:
    from moa_cli.events import CallRetrying

    console = plain_console()
    view = ProgressView(console)
    view.handle(CallStarted(A))
    view.handle(CallRetrying(A, 429, 2.0, 1))
    console.print(view)
    row = lines_of(console.file.getvalue())[-1]  # type: ignore[attr-defined]
    assert re.search(r"model-a\s+layer 1\s+HTTP 429, waiting to retry \(2s\)", row) and "running" not in row
    view.handle(CallFirstToken(A, 2.1))
    console.file.truncate(0)  # type: ignore[attr-defined]
    console.file.seek(0)  # type: ignore[attr-defined]
    console.print(view)
    assert "streaming" in lines_of(console.file.getvalue())[-1]  # type: ignore[attr-defined]


def test_progress_without_a_terminal_prints_plain_lines_and_warnings() -> None:
    console = plain_console()
    view = ProgressView(console)
    view.start()  # no live region without a terminal
    assert view.live is None
    view.handle(CallStarted(A))
    view.handle(CallStarted(B))
    view.handle(CallFinished(A, "x", 0.3, Usage(1, 4, 5)))
    view.handle(CallFailed(B, "HTTP 401 authentication failed", 0.1))
    view.stop()
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "moa: model-a (layer 1) done in 0.3s, 4 tokens" in out
    assert "moa: warning: model-b (layer 1) left out: HTTP 401 authentication failed" in out


def test_turn_view_sends_the_answer_to_out_and_the_rest_to_err() -> None:
    err, out = plain_console(), plain_console()
    view = TurnView(err, out)
    view.start()
    for event in (CallStarted(A), CallFinished(A, "a", 0.1, None), CallStarted(AGG)):
        view.handle(event)
    view.handle(AnswerDelta(AGG, "The answer."))
    view.stop()
    result = TurnResult("The answer.", "agg", [Proposal("model-a", 1, text="a", seconds=0.1)], Usage(5, 5, 10), 1.5)
    view.footer(result)
    assert out.file.getvalue() == "The answer.\n"  # type: ignore[attr-defined]
    err_text = err.file.getvalue()  # type: ignore[attr-defined]
    assert "The answer." not in err_text
    assert "1.5s · 10 tokens · 2 calls" in err_text


def test_footer_names_the_references_left_out() -> None:
    proposals = [
        Proposal("model-a", 1, text="a"),
        Proposal("model-b", 1, error="HTTP 500"),
        Proposal("model-c", 1, error="deadline", timed_out=True),
    ]
    result = TurnResult("x", "agg", proposals, Usage(), 2.04)
    assert (
        footer_text(result) == "2.0s · tokens unknown · 4 calls · 1 of 3 references (model-b failed, model-c timed out)"
    )


def test_streamed_pieces_are_not_called_tokens_until_the_provider_counts_them() -> None:
    console = plain_console()
    view = ProgressView(console)
    view.handle(CallStarted(A))
    view.handle(CallDelta(A, "x"))
    view.handle(CallDelta(A, "y"))
    view.handle(CallFinished(A, "xy", 0.2, None))
    assert "done in 0.2s, ~2 tokens" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_call_cut_off_before_it_started_does_not_break_the_view() -> None:
    console = plain_console()
    view = ProgressView(console)
    view.handle(CallFailed(B, "timed out at the layer deadline (0.3s)", 0.3, timed_out=True))
    assert "model-b (layer 1) left out: timed out" in console.file.getvalue()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- failure kinds, cut answers, secrets


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        ("timeout", "timed out"),
        ("deadline", "timed out"),
        ("cut_off", "cut off"),
        ("auth", "authentication failed"),
        ("rate_limit", "rate limited"),
        ("not_found", "not found"),
        ("connection", "connection failed"),
        ("bad_response", "bad response"),
        ("empty", "empty"),
        ("cancelled", "cancelled"),
        ("other", "failed"),
    ],
)
def test_the_footer_and_the_row_name_the_kind(kind: str, word: str) -> None:
    result = TurnResult(
        "x", "agg", [Proposal("model-a", 1, text="a"), Proposal("model-b", 1, error="why", error_kind=kind)]
    )
    assert footer_text(result).endswith(f"1 of 2 references (model-b {word})")
    console = plain_console()
    view = ProgressView(console)
    view.handle(CallStarted(B))
    view.handle(CallFailed(B, "why", 0.5, kind=kind))
    assert view.rows[B].state == word
    assert "moa: warning: model-b (layer 1) left out: why" in console.file.getvalue()  # type: ignore[attr-defined]


def test_every_kind_has_a_word() -> None:
    from moa_cli.errors import KIND_WORDS, KINDS

    assert set(KIND_WORDS) == set(KINDS)


def test_the_footer_says_when_the_answer_was_cut_at_the_token_limit() -> None:
    result = TurnResult(
        "x",
        "agg",
        [Proposal("model-a", 1, text="a", finish_reason="length")],
        Usage(1, 2, 3),
        1.0,
        finish_reason="length",
        max_tokens=256,
    )
    assert footer_text(result) == "1.0s · 3 tokens · 2 calls · answer cut at the token limit (max_tokens 256)"
    result.finish_reason = "stop"
    assert "token limit" not in footer_text(result)  # a reference cut at the limit is not the answer


def test_a_partial_answer_is_flagged_incomplete() -> None:
    err, out = plain_console(), plain_console()
    view = TurnView(err, out, progress=False)
    assert not view.answer_started
    view.handle(AnswerDelta(AGG, "The answer is"))
    view.stop()
    assert view.answer_started
    view.incomplete("agg")
    assert out.file.getvalue() == "The answer is\n"  # type: ignore[attr-defined]
    assert err.file.getvalue() == (  # type: ignore[attr-defined]
        "moa: the answer above is incomplete: the aggregator agg failed before it finished\n"
    )


def test_warnings_and_footers_never_show_a_key() -> None:
    from moa_cli import redact

    redact.register_secret("sk-live-0123456789")
    try:
        console = plain_console()
        view = ProgressView(console)
        view.handle(
            CallFailed(B, "HTTP 401: bad key sk-live-0123456789 at http://u:p@host", 0.1, kind="auth", status=401)
        )
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert "sk-live" not in text and "u:p@" not in text
        assert "bad key **** at http://****@host" in text
        result = TurnResult("x", "sk-live-0123456789", [Proposal("sk-live-0123456789", 1, error="e")])
        assert "sk-live" not in footer_text(result)
    finally:
        redact.forget_secrets()


def test_warnings_wrap_at_words_on_a_terminal_and_stay_one_line_in_a_file() -> None:
    from moa_cli.events import TurnWarning
    from moa_cli.render import TurnView

    message = "select fell back to synthesizing because the selection call answered with no usable number at all"
    terminal = Console(file=StringIO(), width=40, color_system=None, force_terminal=True)
    TurnView(terminal, plain_console(), progress=False).handle(TurnWarning(message))
    wrapped = [line.rstrip() for line in terminal.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert len(wrapped) > 2 and all(len(line) <= 40 for line in wrapped)
    assert " ".join(wrapped) == f"moa: warning: {message}"  # broken between words only
    piped = Console(file=StringIO(), width=40, color_system=None)  # not a terminal
    TurnView(piped, plain_console(), progress=False).handle(TurnWarning(message))
    assert piped.file.getvalue() == f"moa: warning: {message}\n"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- NO_COLOR


class _Tty(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("value", "off"), [("1", True), ("", False)])
def test_no_color_is_one_answer_for_every_writer(monkeypatch: pytest.MonkeyPatch, value: str, off: bool) -> None:
    """An empty NO_COLOR leaves colour on (no-color.org); set, the rich consoles, the REPL's
    prompt and its first dim line all turn colour off (the logger: test_architecture)."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import ColorDepth, DummyOutput

    from moa_cli.render import make_console
    from moa_cli.repl.loop import write_dim
    from moa_cli.repl.session import make_session
    from moa_cli.terminal import colour_off

    monkeypatch.setenv("NO_COLOR", value)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert colour_off() is off
    console = make_console(file=_Tty(), force_terminal=True, color_system="truecolor")
    console.print("red", style="red")
    assert ("\x1b[31m" in console.file.getvalue()) is not off  # type: ignore[attr-defined]
    stream = _Tty()
    write_dim(stream, "banner")
    assert (stream.getvalue() == "banner\n") is off
    with create_pipe_input() as pipe:
        session = make_session(None, input=pipe, output=DummyOutput())
        assert (session.color_depth == ColorDepth.DEPTH_1_BIT) is off
