"""What every front end does before and around a turn: settings, logging, notices, views."""

from __future__ import annotations

import sys
from typing import Any

from moa_cli import defaults
from moa_cli.config import Settings, load_settings


def load(flags: dict[str, Any], *, local: bool = False) -> Settings:
    """Load settings, set up logging, check the line-up once, and say when it is the offline one."""
    from moa_cli import logs
    from moa_cli.providers.registry import check_lineup

    settings = load_settings(flags, force_local=local)
    logs.configure(settings.log_level)
    # Without the [local] extra this gives the install hint (exit 2), before the notice.
    check_lineup(settings)
    if settings.local_lineup:
        sys.stderr.write(
            f"moa: no TOGETHER_API_KEY and no provider configured: using the offline line-up "
            f"({len(settings.references)} samples of {defaults.LOCAL_MODEL}). "
            "Set TOGETHER_API_KEY (or pass --reference-models/--aggregator) to use real models.\n"
        )
    return settings


def run_one_turn(
    settings: Settings,
    prompt: Any,
    *,
    json_output: bool = False,
    quiet: bool = False,
    conversation_id: str | None = None,
    source: str = "ask",
    response_format: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run one turn with live progress on stderr and the answer on stdout (unless JSON).

    Returns the TurnResult and, with `json_output`, where the turn is in the log.
    `response_format` (`moa ask --schema`): the answer is JSON checked against it (structured.py).

    When the aggregator fails after part of its answer reached stdout, stderr says that
    text is incomplete before the error propagates (exit 1).
    """
    from moa_cli import signals
    from moa_cli.api import MoA
    from moa_cli.errors import TurnFailed
    from moa_cli.render import TurnView, make_console

    moa = MoA(settings=settings)
    moa.conversation_id, moa.source = conversation_id, source  # the log (recorder.py)
    moa.check(preload=True)
    err, out = make_console(stderr=True), make_console()
    view = TurnView(err, out, show_answer=not json_output, progress=not quiet, preview=settings.preview)

    async def turn() -> Any:
        view.start()
        try:
            async with moa:
                return await moa.arun(prompt, on_event=view.handle, response_format=response_format)
        finally:
            view.stop()

    try:
        result = signals.run(turn())  # SIGINT/SIGTERM/SIGHUP cancel the turn, then 130/143/129
    except TurnFailed as exc:
        if exc.aggregator and view.answer_started:
            view.incomplete(settings.aggregator)
        raise
    if not quiet:
        view.footer(result)
    if json_output:
        return result, _log_ids(moa)
    return result, {}


def _log_ids(moa: Any) -> dict[str, Any]:
    """Where `--json`'s turn is in the log: its conversation (for `-c`) and its id (for `moa logs show`).

    The id is the writer's; waiting for it costs the few milliseconds of one SQLite write,
    and a writer that fails or is slower than a second leaves it null, as with no log.
    """
    recording = moa.last_recording
    if recording is None or recording.written is None:
        return {"conversation_id": None, "turn_id": None}
    try:
        turn_id = recording.written.result(timeout=1.0)
    except Exception:  # noqa: BLE001 - the writer warns on its own; the answer still goes out
        turn_id = None
    return {"conversation_id": recording.conversation_id, "turn_id": turn_id}
