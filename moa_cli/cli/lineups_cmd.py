"""`moa lineups`: the named line-ups (built in and from the config file) with their members.

`--check` asks each provider's model list whether every member still exists, so a model a
provider has retired is found before a turn fails on it. Exit 1 when a member is gone.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moa_cli.cli.errors import handle_errors

if TYPE_CHECKING:  # loaded when the command runs: `moa --help` stays fast
    from moa_cli.config import Settings

#: Listing models is a quick metadata call: do not wait as long as for an answer.
LIST_TIMEOUT = 10.0


@dataclass(slots=True)
class LineupRow:
    name: str
    default: bool
    source: str  # "built-in" or "config file"
    description: str | None
    references: list[str]
    aggregator: str
    rounds: int
    settings: dict[str, Any]  # the other settings the line-up sets
    missing: list[str] = field(default_factory=list)  # members a provider no longer lists
    unchecked: list[str] = field(default_factory=list)  # members whose provider could not say


def rows(settings: Settings) -> list[LineupRow]:
    """One row per line-up, with what it sets and the usual values for what it leaves out."""
    from moa_cli.config import builtin_lineups, with_lineup
    from moa_cli.errors import ConfigError
    from moa_cli.settings import DEFAULTS

    builtin = builtin_lineups()
    out: list[LineupRow] = []
    for name, values in settings.lineups.items():
        # What it runs with: what it sets, and for the rest what it inherits (the config
        # file's top level, the environment, flags), not the declared defaults.
        try:
            effective = with_lineup(settings, name)
        except ConfigError:
            effective = None
        source = "built-in" if name in builtin and builtin[name] == values else "config file"
        extra = {k: v for k, v in values.items() if k not in ("references", "aggregator", "rounds", "description")}
        out.append(
            LineupRow(
                name=name,
                default=name == settings.lineup,
                source=source,
                description=values.get("description"),
                references=list(
                    effective.references if effective else values.get("references", DEFAULTS["references"])
                ),
                aggregator=effective.aggregator if effective else values.get("aggregator", DEFAULTS["aggregator"]),
                rounds=effective.rounds if effective else values.get("rounds", DEFAULTS["rounds"]),
                settings={k: v for k, v in extra.items() if k != "aggregator_prompt"}
                | (
                    {"aggregator_prompt": f"{len(extra['aggregator_prompt'])} chars"}
                    if "aggregator_prompt" in extra
                    else {}
                ),
            )
        )
    return out


async def check(settings: Settings, lineup_rows: list[LineupRow]) -> list[str]:
    """Fill each row's `missing` and `unchecked`; returns one warning per provider that failed."""
    import asyncio

    from moa_cli.errors import MoaError
    from moa_cli.providers.registry import ProviderPool, api_key, split

    quick = settings.with_changes(timeout=min(settings.timeout, LIST_TIMEOUT), retries=min(settings.retries, 1))
    specs = {spec for row in lineup_rows for spec in [*row.references, row.aggregator]}
    by_provider: dict[str, set[str]] = {}
    for spec in specs:
        config, model = split(quick, spec)
        by_provider.setdefault(config.name, set()).add(model)

    pool = ProviderPool(quick)
    known: dict[str, set[str] | None] = {}
    warnings: list[str] = []

    async def listing(name: str) -> None:
        try:
            api_key(quick, quick.providers[name])
            known[name] = set(await pool.provider(name).list_models())
        except MoaError as exc:
            known[name] = None
            warnings.append(f"could not list {name} models: {exc}")

    try:
        await asyncio.gather(*(listing(name) for name in sorted(by_provider)))
    finally:
        await pool.aclose()
    for row in lineup_rows:
        for spec in dict.fromkeys([*row.references, row.aggregator]):
            config, model = split(quick, spec)
            models = known.get(config.name)
            if models is None:
                row.unchecked.append(spec)
            elif model not in models:
                row.missing.append(spec)
    return warnings


def _print_text(lineup_rows: list[LineupRow], checked: bool) -> None:
    from moa_cli.settings import show

    lines: list[str] = []
    for row in lineup_rows:
        head = f"{row.name}{' (default)' if row.default else ''}  [{row.source}]"
        if row.description:
            head += f"  {row.description}"
        lines.append(head)
        counts: dict[str, int] = {}
        for model in row.references:
            counts[model] = counts.get(model, 0) + 1
        refs = ", ".join(m if n == 1 else f"{n}× {m}" for m, n in counts.items())
        lines.append(f"  references  {refs}")
        lines.append(f"  aggregator  {row.aggregator}")
        more = [f"rounds {row.rounds}"] + [f"{k} {show(v)}" for k, v in row.settings.items()]
        lines.append(f"  settings    {' · '.join(more)}")
        if checked:
            if row.missing:
                lines.append(f"  GONE        {', '.join(row.missing)}")
            elif row.unchecked:
                lines.append(f"  unchecked   {', '.join(row.unchecked)}")
            else:
                lines.append("  check       every member is listed by its provider")
        lines.append("")
    sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")


def lineups(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    check_members: Annotated[
        bool, typer.Option("--check", help="Ask each provider whether every member still exists (exit 1 if not).")
    ] = False,
) -> None:
    """List the named line-ups and their members; use one with --lineup NAME.

    Built in: together (the original MoA recipe on Together AI) and local (three samples
    of the bundled offline model). Add your own as [lineups.NAME] in the config file.
    """
    with handle_errors(json_mode=json_output):
        import asyncio

        from moa_cli import diagnostics
        from moa_cli.config import load_settings

        settings = load_settings()
        diagnostics.configure(settings.log_level)
        lineup_rows = rows(settings)
        if check_members:
            for warning in asyncio.run(check(settings, lineup_rows)):
                sys.stderr.write(f"moa: warning: {' '.join(warning.split())}\n")
        if json_output:
            items = [asdict(row) for row in lineup_rows]
            if not check_members:
                for item in items:
                    del item["missing"], item["unchecked"]
            payload = {"default": settings.lineup, "lineups": items}
            sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        else:
            _print_text(lineup_rows, check_members)
        if any(row.missing for row in lineup_rows):
            raise typer.Exit(1)
