"""The picture of a turn (`moa trace`, `/trace`): a rich renderable over `trace.Timeline`.

    ─  waiting for the first token      ┃  the first token      ━  streaming
    ✗  failed (its kind in words)       ✂  cut at the layer deadline, by the quorum, or at max_tokens

Each bar is labelled with seconds, tokens and cost; the call each layer waited for is
marked "◀ slowest", and the last line says where the time and the money went.
`save_svg` writes the same picture as an SVG with rich's own exporter.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from moa_cli.pricing import format_usd
from moa_cli.trace import Bar, Timeline

WAIT, FIRST, STREAM, FAILED, CUT = "─", "┃", "━", "✗", "✂"
_STYLE = {"ok": "green", "length": "yellow", "deadline": "yellow", "quorum": "yellow", "failed": "red"}


def _info(bar: Bar) -> str:
    parts = [f"{bar.seconds:.1f}s"]
    if bar.state in ("ok", "length"):
        parts.append(f"{bar.tokens} tok" if bar.tokens is not None else "? tok")
    else:
        parts.append(bar.what)
    if bar.cost_usd is not None:
        parts.append(format_usd(bar.cost_usd))
    elif bar.state in ("ok", "length"):
        parts.append("unpriced")
    if bar.state == "length":
        parts.append("cut at max_tokens")
    return "  ".join(parts)


def _track(bar: Bar, scale: float, width: int) -> Text:
    """The bar itself, on a track `width` cells wide; `scale` is cells per second."""

    def cell(t: float) -> int:
        return min(width - 1, max(0, round(t * scale)))

    start, end = cell(bar.start), max(cell(bar.start), cell(bar.end))
    style = _STYLE.get(bar.state, "red")
    text = Text(" " * start)
    first = cell(bar.first_token) if bar.first_token is not None else None
    for i in range(start, end + 1):
        if i == end and bar.state in ("failed",):
            text.append(FAILED, style="bold red")
        elif i == end and bar.state in ("deadline", "quorum", "length"):
            text.append(CUT, style="bold yellow")
        elif first is not None and i == first:
            text.append(FIRST, style=f"bold {style}")
        elif first is None or i < first:
            text.append(WAIT, style="dim")
        else:
            text.append(STREAM, style=style)
    text.append(" " * (width - len(text.plain)))
    return text


class TraceView:
    """`console.print(TraceView(timeline))` draws the picture at the console's width."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        tl = self.timeline
        bars = tl.bars
        width = options.max_width
        title_w = max([len(lane.title) for lane in tl.lanes] + [5])
        model_w = min(28, width // 5, max([len(b.model) for b in bars] + [5]))
        infos = {id(b): _info(b) for b in bars}
        slowest = len("  ◀ slowest") if any(lane.held_up_by for lane in tl.lanes) else 0
        info_w = min(40, max([len(i) for i in infos.values()] + [10])) + slowest
        track_w = max(10, width - title_w - model_w - info_w - 6)
        seconds = max(tl.seconds, 1e-3)
        scale = (track_w - 1) / seconds

        head = Text(f"turn {tl.turn_id}" if tl.turn_id is not None else "turn", style="bold")
        head.append(f" · {tl.status}", style="green" if tl.status == "ok" else "red")
        head.append(f" · {tl.seconds:.1f}s", style="dim")
        if tl.first_token is not None:
            head.append(f" · first answer token at {tl.first_token:.1f}s", style="dim")
        head.append(f" · {tl.cost.text() if tl.cost.calls else 'no calls'}", style="dim")
        yield head
        prompt = " ".join(tl.prompt.split())
        yield Text(prompt if len(prompt) <= width - 2 else prompt[: width - 3] + "…", style="italic dim")
        for lane in tl.lanes:
            for n, bar in enumerate(lane.bars):
                line = Text(f"{lane.title if n == 0 else '':<{title_w}}  ", style="bold")
                name = bar.model if len(bar.model) <= model_w else bar.model[: model_w - 1] + "…"
                line.append(f"{name:<{model_w}}  ")
                line.append_text(_track(bar, scale, track_w))
                line.append("  ")
                line.append(infos[id(bar)], style=_STYLE.get(bar.state, "red") if bar.state != "ok" else "")
                if lane.held_up_by is bar:
                    line.append("  ◀ slowest", style="bold")
                line.truncate(width)
                yield line
        axis = Text(" " * (title_w + model_w + 4), style="dim")
        ticks = [" "] * track_w
        used: list[tuple[int, int]] = []  # labels never overlap; the ends come first
        for fraction in (0.0, 1.0, 0.5, 0.25, 0.75):
            label = f"{seconds * fraction:.1f}s"
            at = min(round((track_w - 1) * fraction), track_w - len(label))
            if any(at <= end + 1 and start <= at + len(label) for start, end in used):
                continue
            ticks[at : at + len(label)] = label
            used.append((at, at + len(label) - 1))
        axis.append("".join(ticks), style="dim")
        yield axis
        yield Text(self._summary(), style="dim")

    def _summary(self) -> str:
        tl = self.timeline
        parts: list[str] = []
        for lane in tl.lanes:
            if lane.held_up_by is not None:
                parts.append(f"{lane.title} waited for {lane.held_up_by.model} ({lane.held_up_by.seconds:.1f}s)")
        priciest = tl.priciest
        if priciest is not None and tl.cost.priced_usd > 0:
            share = 100 * (priciest.cost_usd or 0.0) / tl.cost.priced_usd
            parts.append(f"most of the cost: {priciest.model} ({format_usd(priciest.cost_usd or 0.0)}, {share:.0f}%)")
        failed = [b for b in tl.bars if b.state in ("failed", "deadline", "quorum")]
        if failed:
            parts.append("left out: " + ", ".join(f"{b.model} ({b.what})" for b in failed))
        if tl.error and tl.status != "ok":
            parts.append(tl.error)
        return " · ".join(parts) if parts else ""


def render_text(timeline: Timeline, *, width: int = 100) -> str:
    """The picture as plain text (tests, logs)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(TraceView(timeline))
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def save_svg(timeline: Timeline, path: Path, *, width: int = 110) -> Path:
    """The picture as an SVG file (rich's exporter)."""
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=True, color_system="truecolor")
    console.print(TraceView(timeline))
    title = f"moa trace · turn {timeline.turn_id}" if timeline.turn_id is not None else "moa trace"
    console.save_svg(str(path), title=title)
    return path
