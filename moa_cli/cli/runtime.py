"""What every front end does before and around a turn: settings, logging, notices, views."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from moa_cli import defaults
from moa_cli.config import Settings, load_settings


def load(flags: dict[str, Any], *, local: bool = False) -> Settings:
    """Load settings, set up logging and say so when the offline line-up is chosen."""
    from moa_cli import logs

    settings = load_settings(flags, force_local=local)
    logs.configure(settings.log_level)
    if settings.local_lineup:  # without the [local] extra: the install hint (exit 2), not the notice
        from moa_cli.providers.registry import ProviderPool

        ProviderPool(settings).check([*settings.references, settings.aggregator])
    if settings.local_lineup and not local:
        sys.stderr.write(
            f"moa: no TOGETHER_API_KEY and no provider configured: using the offline line-up "
            f"({len(settings.references)} samples of {defaults.LOCAL_MODEL}). "
            "Set TOGETHER_API_KEY (or pass --reference-models/--aggregator) to use real models.\n"
        )
    return settings


def run_one_turn(settings: Settings, prompt: str, *, json_output: bool = False, quiet: bool = False) -> Any:
    """Run one turn with live progress on stderr and the answer on stdout (unless JSON)."""
    from moa_cli.api import MoA
    from moa_cli.render import TurnView, make_console

    moa = MoA(settings=settings)
    moa.check(preload=True)
    err, out = make_console(stderr=True), make_console()
    view = TurnView(err, out, show_answer=not json_output, progress=not quiet)

    async def turn() -> Any:
        view.start()
        try:
            async with moa:
                return await moa.arun(prompt, on_event=view.handle)
        finally:
            view.stop()

    result = asyncio.run(turn())
    if not quiet:
        view.footer(result)
    return result
