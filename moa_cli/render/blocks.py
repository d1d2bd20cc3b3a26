"""Markdown split into blocks while it streams: the finished ones, and the tail still growing."""

from __future__ import annotations

import re
from typing import Any


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


def open_fence_tail(text: str, keep: int) -> str:
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
