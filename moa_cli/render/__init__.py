"""rich views of a turn and of its trace, one renderable per module (as rich has them).

This face re-exports their public names: `from moa_cli.render import TurnView` is the way in.
"""

from moa_cli.render.answer import (
    REFRESH_PER_SECOND,
    AnswerView,
    ProgressView,
    TurnView,
    aggregator_calls,
    footer_text,
    incomplete_notice,
    kind_word,
    left_out_warning,
    make_console,
    markdown,
    split_blocks,
)
from moa_cli.render.trace import TraceView, render_text, save_svg

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
    "render_text",
    "save_svg",
    "split_blocks",
]
