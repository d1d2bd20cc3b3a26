"""rich views of a turn and of its trace, one renderable per module (as rich has them).

    console.py   make_console: NO_COLOR, TERM=dumb and TTY detection
    blocks.py    Markdown split into finished blocks and a growing tail
    progress.py  ProgressView: one row per model call, on stderr
    answer.py    AnswerView: the streamed answer, on stdout
    turn.py      TurnView: a turn's events routed to the two; the footer line
    trace.py     TraceView: a logged turn's calls on a time axis (`moa trace`, `/trace`)

This face re-exports their public names: `from moa_cli.render import TurnView` is the way in.
"""

from moa_cli.render.answer import AnswerView
from moa_cli.render.blocks import markdown, open_fence_tail, split_blocks
from moa_cli.render.console import REFRESH_PER_SECOND, make_console
from moa_cli.render.progress import ProgressView, incomplete_notice, kind_word, left_out_warning
from moa_cli.render.trace import TraceView, render_text, save_svg
from moa_cli.render.turn import TurnView, aggregator_calls, footer_text

__all__ = [
    "REFRESH_PER_SECOND",
    "AnswerView",
    "ProgressView",
    "TraceView",
    "TurnView",
    "aggregator_calls",
    "footer_text",
    "incomplete_notice",
    "kind_word",
    "left_out_warning",
    "make_console",
    "markdown",
    "open_fence_tail",
    "render_text",
    "save_svg",
    "split_blocks",
]
