"""`moa config path` and `moa config show` (secrets masked)."""

from __future__ import annotations

import typer

from moa_cli.cli.errors import handle_errors

app = typer.Typer(help="Show where the config file is and what moa will use.")


@app.callback(invoke_without_command=True)
def config(ctx: typer.Context) -> None:
    """Show where the config file is and what moa will use."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def mask(secret: str) -> str:
    """Enough of a key to tell which one it is, never enough to use it."""
    if len(secret) <= 8:
        return "****"
    return f"{secret[:3]}…{secret[-2:]} ({len(secret)} chars)"


@app.command("path")
def path() -> None:
    """Print the config file's path (it need not exist yet)."""
    import os

    from moa_cli.config import resolve_paths

    typer.echo(str(resolve_paths(os.environ).config_file))


@app.command("show")
def show() -> None:
    """Print the effective settings and where each came from, with keys masked."""
    with handle_errors():
        from moa_cli.config import load_settings
        from moa_cli.redact import mask_url
        from moa_cli.settings import SPECS, key_for
        from moa_cli.settings import show as shown

        s = load_settings()
        assert s.paths is not None
        rows: list[tuple[str, str, str]] = [("config_file", str(s.paths.config_file), "")]
        for name in SPECS:
            value = getattr(s, name)
            text = f"{len(value)} chars" if name == "aggregator_prompt" else shown(value)
            rows.append((key_for(name), text, s.sources.get(name, "default")))
        rows.append(("history_file", str(s.paths.history_file), "MOA_HOME" if s.paths.home else "default"))
        width = max(len(r[0]) for r in rows)
        for name, value, source in rows:
            typer.echo(f"{name:<{width}}  {value}" + (f"  [{source}]" if source else ""))
        typer.echo("\nproviders:")
        for p in s.providers.values():
            if p.api_key_env:
                key = s.env.get(p.api_key_env, "")
                key_text = f"{p.api_key_env}={mask(key)}" if key else f"{p.api_key_env} (not set)"
            else:
                key_text = "no key needed"
            if p.base_url_source and p.base_url:
                where = f"{p.base_url_source}=" + mask_url(p.base_url)
            else:
                where = mask_url(p.base_url) if p.base_url else "default endpoint"
            cap = f"  max_concurrency={p.max_concurrency}" if p.max_concurrency else ""
            typer.echo(f"  {p.name:<11} {p.kind:<9} {where}  {key_text}{cap}")
