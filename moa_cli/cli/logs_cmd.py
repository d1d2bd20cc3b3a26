"""`moa logs`: the conversation log (store.py). Every form takes --json.

    moa logs [-n N] [--cid ID] [--since DATE] [-m MODEL] [-q TEXT]   the latest turns, or a search
    moa logs show ID [--proposals]        a turn (a number) or a conversation, as Markdown
    moa logs export ID --format md|json
    moa logs rm ID | --before DATE        deleted for real, search index included
    moa logs backup FILE                  a consistent copy (VACUUM INTO)
    moa logs cost [--since DATE] [--by day|model|conversation]
    moa logs path | on | off | status

Unknown costs are never 0: "at least $X (N calls unpriced)" in text, null in JSON.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moa_cli.cli.errors import handle_errors
from moa_cli.errors import ConfigError
from moa_cli.transcript import (
    FORMATS,
    conversation_json,
    conversation_markdown,
    cost_line,
    document,
    turn_json,
    turn_markdown,
    when,
)

if TYPE_CHECKING:
    from moa_cli.store import Store

app = typer.Typer(
    name="logs",
    help="The conversation log: list, search, show, export, delete, back up, and what it cost.",
    no_args_is_help=False,
    rich_markup_mode=None,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Since = Annotated[
    str | None,
    typer.Option(
        "--since", metavar="DATE", help="Only turns since DATE: 2026-08-01, 2026-08-01T14:00, 7d, 12h, 30m, today."
    ),
]


def parse_date(text: str) -> float:
    """A date, a date and time, `today`/`yesterday`, or an age (`7d`, `12h`, `30m`) -> unix time."""
    value = text.strip().lower()
    now = datetime.now()
    if value in ("today", "yesterday"):
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (day - timedelta(days=1 if value == "yesterday" else 0)).timestamp()
    match = re.fullmatch(r"(\d+)\s*([smhdw])", value)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return time.time() - int(match.group(1)) * unit
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(f"invalid date {text!r}: use 2026-08-01, 2026-08-01T14:00, 7d, 12h or today") from None


def _data_dir() -> Path:
    from moa_cli.config import resolve_paths
    from moa_cli.store import flush_all

    flush_all()  # turns this process ran are on the file before it is read
    return resolve_paths(os.environ).data_dir


def open_log(*, create: bool = False) -> Store:
    from moa_cli.store import StoreError, db_path, open_store

    try:
        return open_store(_data_dir(), create=create)
    except StoreError as exc:
        if not db_path(_data_dir()).exists():
            raise ConfigError(f"nothing logged yet (the log will be {db_path(_data_dir())})") from None
        raise ConfigError(str(exc)) from None


MAX_COUNT = 1_000_000  # `logs -n`: more turns than anyone reads, and far from SQLite's integer limit


def _write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def _resolve(store: Store, ref: str) -> tuple[str, Any]:
    """("turn", id) for a number, else ("conversation", id) for an id or a unique prefix."""
    from moa_cli.store import StoreError

    try:
        if ref.strip().isdigit() and ref.strip().isascii():
            return "turn", store.turn(int(ref)).id
        return "conversation", store.resolve_conversation(ref)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------- the list


@app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    count: Annotated[
        int,
        typer.Option("-n", "--count", metavar="N", min=1, max=MAX_COUNT, help="How many turns (default 10)."),
    ] = 10,
    cid: Annotated[str | None, typer.Option("--cid", metavar="ID", help="Only this conversation.")] = None,
    since: Since = None,
    model: Annotated[
        str | None,
        typer.Option("-m", "--model", metavar="MODEL", help="Only turns that called MODEL (aggregator or reference)."),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option("-q", "--query", metavar="TEXT", help="Full-text search of prompts and answers, best first."),
    ] = None,
    json_output: Json = False,
) -> None:
    """The latest turns (newest first), or with -q the turns that best match TEXT."""
    if ctx.invoked_subcommand is not None:
        return
    with handle_errors(json_mode=json_output):
        from moa_cli.pricing import cost_text
        from moa_cli.store import db_path

        if not db_path(_data_dir()).exists():
            if json_output:
                _write_json({"turns": []})
            else:
                sys.stderr.write("moa: nothing logged yet\n")
            return
        with open_log() as store:
            conversation = _resolve(store, cid)[1] if cid is not None else None
            turns = store.turns(
                limit=count,
                conversation_id=conversation,
                since=parse_date(since) if since else None,
                model=model,
                query=query,
            )
            total = store.conversation_cost(conversation) if conversation else None
        if json_output:
            data: dict[str, Any] = {"turns": [turn_json(t) for t in turns]}
            if total is not None:
                data["conversation"] = {"id": conversation, "turns": total.turns, "cost_usd": total.cost_usd,
                                        "priced_usd": total.priced_usd, "unpriced_calls": total.unpriced_calls}  # fmt: skip
            _write_json(data)
            return
        lines = []
        if total is not None:
            lines.append(
                f"conversation {conversation}: {total.turns} turns, {cost_text(total.priced_usd, total.unpriced_calls, total.calls)}"
            )
        for turn in turns:
            status = "" if turn.status == "ok" else f" [{turn.status}]"
            prompt = " ".join(turn.prompt.split())
            prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            lines.append(
                f"{turn.id:>6}  {when(turn.started_at)}  {turn.conversation_id}  {cost_line(turn)}{status}  {prompt}"
            )
        if not turns:
            sys.stderr.write(
                "moa: no turns match\n" if (query or model or since or cid) else "moa: nothing logged yet\n"
            )
        else:
            sys.stdout.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- show and export


def _print_markdown(text: str) -> None:
    if sys.stdout.isatty():
        from moa_cli.render import make_console, markdown

        make_console().print(markdown(text))
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


@app.command("show")
def show(
    ref: Annotated[
        str, typer.Argument(metavar="ID", help="A turn (its number) or a conversation (its id or a prefix).")
    ],
    proposals: Annotated[
        bool, typer.Option("--proposals", help="Add what every reference said, layer by layer.")
    ] = False,
    json_output: Json = False,
) -> None:
    """A turn or a whole conversation, rendered as Markdown."""
    with handle_errors(json_mode=json_output):
        data, text = _rendered(ref, proposals=proposals)
        _write_json(data) if json_output else _print_markdown(text)


def _rendered(ref: str, *, proposals: bool) -> tuple[Any, str]:
    """A turn or a conversation (`ref`) as its JSON object and as Markdown."""
    with open_log() as store:
        kind, key = _resolve(store, ref)
        if kind == "turn":
            turn = store.turn(key)
            return turn_json(turn), turn_markdown(turn, proposals=proposals, heading="#")
        conversation = store.conversation(key, with_calls=True)
        return conversation_json(conversation), conversation_markdown(conversation, proposals=proposals)


@app.command("export")
def export(
    ref: Annotated[
        str, typer.Argument(metavar="ID", help="A turn (its number) or a conversation (its id or a prefix).")
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", metavar="md|json", help="md (with the proposals) or json (everything).")
    ] = "md",
    json_output: Json = False,
) -> None:
    """Everything about a turn or a conversation, as Markdown or JSON, on stdout.

    A conversation is the document the REPL's `/save` writes for it (transcript.document)."""
    if json_output:
        fmt = "json"
    with handle_errors(json_mode=json_output):
        if fmt not in FORMATS:
            raise ConfigError(f"invalid --format {fmt!r}: md or json")
        with open_log() as store:
            kind, key = _resolve(store, ref)
            if kind == "conversation":
                sys.stdout.write(document(store.conversation(key, with_calls=True), fmt))
                return
            turn = store.turn(key)
        if fmt == "json":
            sys.stdout.write(json.dumps(turn_json(turn), ensure_ascii=False, indent=2) + "\n")
        else:
            sys.stdout.write(turn_markdown(turn, proposals=True, heading="#").rstrip("\n") + "\n")


# ---------------------------------------------------------------------------- deleting, backup


@app.command("rm")
def rm(
    ref: Annotated[str | None, typer.Argument(metavar="ID", help="A turn (its number) or a conversation.")] = None,
    before: Annotated[str | None, typer.Option("--before", metavar="DATE", help="Every turn before DATE.")] = None,
    json_output: Json = False,
) -> None:
    """Delete a turn, a conversation, or every turn before a date: for real, search index included."""
    with handle_errors(json_mode=json_output):
        if (ref is None) == (before is None):
            raise ConfigError("give an ID or --before DATE")
        with open_log() as store:
            if before is not None:
                count = store.delete_before(parse_date(before))
                what = f"turns before {before}"
            else:
                kind, key = _resolve(store, ref or "")
                count = store.delete_turns([key]) if kind == "turn" else store.delete_conversation(key)
                what = f"{kind} {key}"
        if json_output:
            _write_json({"deleted_turns": count})
        else:
            sys.stderr.write(f"moa: deleted {count} turn{'' if count == 1 else 's'} ({what})\n")


@app.command("backup")
def backup(
    target: Annotated[Path, typer.Argument(metavar="FILE", help="A new file for the copy.", dir_okay=False)],
    json_output: Json = False,
) -> None:
    """Copy the log to FILE, consistent even while moa writes (VACUUM INTO)."""
    with handle_errors(json_mode=json_output):
        from moa_cli.store import StoreError

        with open_log() as store:
            try:
                path = store.backup(target.expanduser())
            except StoreError as exc:
                raise ConfigError(str(exc)) from None
        if json_output:
            _write_json({"backup": str(path)})
        else:
            sys.stderr.write(f"moa: log backed up to {path}\n")


# ---------------------------------------------------------------------------- cost


@app.command("cost")
def cost(
    since: Since = None,
    by: Annotated[
        str | None,
        typer.Option("--by", metavar="day|model|conversation", help="One line per day, model or conversation."),
    ] = None,
    json_output: Json = False,
) -> None:
    """What the logged turns cost. Unknown prices are never counted as 0."""
    with handle_errors(json_mode=json_output):
        from moa_cli.pricing import cost_text
        from moa_cli.store import StoreError, db_path

        if by is not None and by not in ("day", "model", "conversation"):
            raise ConfigError(f"invalid --by {by!r}: day, model or conversation")
        if not db_path(_data_dir()).exists():
            lines = []
        else:
            with open_log() as store:
                try:
                    lines = store.cost(since=parse_date(since) if since else None, by=by)
                except StoreError as exc:
                    raise ConfigError(str(exc)) from None
        if json_output:
            rows = [
                {"key": line.key, "turns": line.turns, "calls": line.calls, "cost_usd": line.cost_usd,
                 "priced_usd": line.priced_usd, "unpriced_calls": line.unpriced_calls}
                for line in lines
            ]  # fmt: skip
            _write_json({"by": by or "total", "lines": rows})
            return
        if not lines:
            sys.stdout.write("nothing logged\n")
            return
        width = max(len(line.key) for line in lines)
        for line in lines:
            text = cost_text(line.priced_usd, line.unpriced_calls, line.calls or None)
            sys.stdout.write(f"{line.key:<{width}}  {text}  ({line.turns} turns, {line.calls} calls)\n")


# ---------------------------------------------------------------------------- on, off, status, path


@app.command("path")
def path(json_output: Json = False) -> None:
    """Where the log is."""
    from moa_cli.store import db_path

    where = db_path(_data_dir())
    _write_json({"path": str(where)}) if json_output else sys.stdout.write(f"{where}\n")


def _status() -> dict[str, Any]:
    from moa_cli.config import load_settings
    from moa_cli.recorder import logging_enabled
    from moa_cli.store import db_path, logging_off_marker

    settings = load_settings()
    data_dir = settings.paths.data_dir
    where = db_path(data_dir)
    data: dict[str, Any] = {
        "logging": logging_enabled(settings),
        "off_switch": logging_off_marker(data_dir).exists(),
        "setting": settings.log,
        "setting_from": settings.sources.get("log", "default"),
        "path": str(where),
        "turns": 0,
        "conversations": 0,
        "size_bytes": where.stat().st_size if where.exists() else 0,
    }
    if where.exists():
        with open_log() as store:
            data["turns"], data["conversations"] = store.counts()
    return data


def _switch(on: bool, json_output: bool) -> None:
    from moa_cli.store import logging_off_marker

    with handle_errors(json_mode=json_output):
        marker = logging_off_marker(_data_dir())
        if on:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        status(json_output=json_output)


@app.command("on")
def on(json_output: Json = False) -> None:
    """Log every turn (the default). --no-log, MOA_LOG or `log = false` in the config still win."""
    _switch(True, json_output)


@app.command("off")
def off(json_output: Json = False) -> None:
    """Stop logging turns. --log, MOA_LOG or `log = true` in the config still win."""
    _switch(False, json_output)


@app.command("status")
def status(json_output: Json = False) -> None:
    """Whether turns are logged, why, and how much is in the log."""
    with handle_errors(json_mode=json_output):
        data = _status()
        if json_output:
            _write_json(data)
            return
        state = "on" if data["logging"] else "off"
        why = (
            f"{'moa logs off' if data['off_switch'] else 'the default'}"
            if data["setting_from"] == "default"
            else f"log = {str(data['setting']).lower()} from {data['setting_from']}"
        )
        sys.stdout.write(
            f"logging is {state} ({why})\n{data['path']}: {data['turns']} turns in {data['conversations']} conversations, "
            f"{data['size_bytes'] / 1e6:.1f} MB\n"
        )
