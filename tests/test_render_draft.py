"""The live draft (--preview): the reference furthest along, dimmed under the progress rows.

Replayed through the screen model of tests/test_render.py: the draft appears, is cut to the
screen, and vanishes without a trace when the answer starts; it never reaches stdout.
"""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from moa_cli.events import AnswerDelta, CallDelta, CallFinished, CallFirstToken, CallStarted
from moa_cli.render import TurnView
from moa_cli.types import CallInfo
from tests.test_render import HEIGHT, WIDTH, Screen, long_markdown, whole_rendering

A = CallInfo("model-a", 1, 0)
B = CallInfo("model-b", 1, 1)
AGG = CallInfo("agg", 2, 0, "aggregator")
ANSWER = "The final answer, written by the aggregator.\n\nIt has two paragraphs."


def terminal(file: StringIO, **kwargs: object) -> Console:
    return Console(
        file=file, width=WIDTH, height=HEIGHT, force_terminal=True, color_system=None, highlight=False, **kwargs
    )  # type: ignore[arg-type]


def plain(file: StringIO) -> Console:
    return Console(file=file, width=WIDTH, color_system=None)


def stream_draft(view: TurnView, words: int, call: CallInfo = A) -> None:
    for n in range(words):
        view.handle(CallDelta(call, f"draft{n} "))


def frame(view: TurnView) -> None:
    assert view.progress is not None and view.progress.live is not None
    view.progress.live.refresh()


def screen_of(data: str) -> list[str]:
    screen = Screen()
    screen.feed(data)
    return screen.text()


def test_the_draft_appears_then_vanishes_without_a_trace() -> None:
    screen_file = StringIO()  # stderr and stdout share the terminal, as they do
    view = TurnView(terminal(screen_file), terminal(screen_file), preview=True)
    view.progress.auto_refresh = False  # type: ignore[union-attr]  # draw only when told
    view.start()
    for call in (A, B):
        view.handle(CallStarted(call))
        view.handle(CallFirstToken(call, 0.1))
    stream_draft(view, 5, B)
    stream_draft(view, 12, A)  # A is furthest along
    frame(view)
    shown = screen_of(screen_file.getvalue())
    assert any(line.startswith("draft from model-a (layer 1)") for line in shown)
    assert any("draft0 draft1" in line for line in shown)
    assert not any("draft from model-b" in line for line in shown)
    # Many redraws while it grows past a screen: the region never outgrows the screen.
    for _ in range(40):
        stream_draft(view, 30, B)
        before = len(screen_file.getvalue())
        frame(view)
        assert screen_file.getvalue()[before:].count("\n") < HEIGHT
    shown = screen_of(screen_file.getvalue())
    assert any(line.startswith("draft from model-b") for line in shown)
    assert len(shown) <= HEIGHT  # nothing was pushed into the scrollback
    view.handle(CallFinished(A, "a", 1.0, None))
    view.handle(CallFinished(B, "b", 1.2, None))
    view.handle(CallStarted(AGG))
    frame(view)  # the aggregator reads: the draft still shows
    assert any(line.startswith("draft from model-b") for line in screen_of(screen_file.getvalue()))
    for piece in ANSWER.split(" "):
        view.handle(AnswerDelta(AGG, piece + " "))
    view.stop()
    shown = screen_of(screen_file.getvalue())
    assert shown == whole_rendering(ANSWER.replace(" \n", "\n"))
    assert not any("draft" in line for line in shown)


def test_the_draft_never_reaches_stdout() -> None:
    err_file, out_file = StringIO(), StringIO()
    view = TurnView(terminal(err_file), terminal(out_file), preview=True)
    view.progress.auto_refresh = False  # type: ignore[union-attr]
    view.start()
    view.handle(CallStarted(A))
    stream_draft(view, 50)
    frame(view)
    assert "draft from model-a" in err_file.getvalue()
    view.handle(AnswerDelta(AGG, "Answer."))
    view.stop()
    assert "draft" not in out_file.getvalue()
    assert screen_of(out_file.getvalue()) == ["Answer."]


def test_no_draft_without_a_terminal_on_stdout_or_with_the_preview_off() -> None:
    for out, preview in ((plain(StringIO()), True), (terminal(StringIO()), False)):
        err_file = StringIO()
        view = TurnView(terminal(err_file), out, preview=preview)
        assert view.progress is not None and not view.progress.draft
        view.start()
        view.handle(CallStarted(A))
        stream_draft(view, 20)
        frame(view)
        view.stop()
        assert "draft" not in err_file.getvalue()
        assert view.progress.rows[A].parts == []  # nothing kept either
    # --json: no answer view, so no draft.
    view = TurnView(terminal(StringIO()), terminal(StringIO()), preview=True, show_answer=False)
    assert view.progress is not None and not view.progress.draft


def test_a_long_markdown_draft_is_cut_to_the_screen_and_a_later_layer_wins() -> None:
    err_file = StringIO()
    view = TurnView(terminal(err_file), terminal(StringIO()), preview=True)
    view.progress.auto_refresh = False  # type: ignore[union-attr]
    view.start()
    view.handle(CallStarted(A))
    for line in long_markdown().splitlines(keepends=True):
        view.handle(CallDelta(A, line))
    second = CallInfo("model-b", 2, 1)
    view.handle(CallStarted(second))
    view.handle(CallFirstToken(second, 0.1))
    view.handle(CallDelta(second, "layer two draft"))
    before = len(err_file.getvalue())
    frame(view)
    drawn = err_file.getvalue()[before:]
    assert "draft from model-b (layer 2)" in drawn and "layer two draft" in drawn
    assert drawn.count("\n") < HEIGHT
    view.stop()
    assert screen_of(err_file.getvalue()) == []  # the rows and the draft are gone
