"""`moa trace [TURN_ID] [--svg FILE]`: the timeline of one logged turn (default: the latest).

One bar per model call on a shared time axis, grouped by layer, with the first token,
failures (their kind) and deadline cuts marked, each bar labelled with seconds, tokens and
cost: which reference held the turn up, and where the money went.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from moa_cli.cli.errors import handle_errors
from moa_cli.errors import ConfigError


def trace(
    turn_id: Annotated[
        int | None, typer.Argument(metavar="TURN_ID", help="A turn's number (moa logs lists them); default the latest.")
    ] = None,
    svg: Annotated[
        Path | None,
        typer.Option("--svg", metavar="FILE", help="Also write the picture as an SVG file.", dir_okay=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the timeline as JSON instead.")] = False,
) -> None:
    """Draw the timeline of a turn: one bar per model call, grouped by layer."""
    with handle_errors(json_mode=json_output):
        from dataclasses import asdict

        from moa_cli.cli.logs_cmd import open_log
        from moa_cli.store import StoreError
        from moa_cli.trace import timeline

        with open_log() as store:
            try:
                turn = store.turn(turn_id)
            except StoreError as exc:
                raise ConfigError(str(exc)) from None
        picture = timeline(turn)
        if svg is not None:
            from moa_cli.render.trace import save_svg

            try:
                save_svg(picture, svg.expanduser())
            except OSError as exc:
                raise ConfigError(f"cannot write {svg}: {exc.strerror or exc}") from None
        if json_output:
            data = asdict(picture)
            data["cost"] = {"cost_usd": picture.cost.cost_usd, "priced_usd": picture.cost.priced_usd,
                            "unpriced_calls": picture.cost.unpriced}  # fmt: skip
            sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
            return
        from moa_cli.render import make_console
        from moa_cli.render.trace import TraceView

        make_console().print(TraceView(picture))
        if svg is not None:
            sys.stderr.write(f"moa: wrote {svg}\n")
