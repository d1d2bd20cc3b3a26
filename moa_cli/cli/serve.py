"""`moa serve`: MoA as one model behind an OpenAI-compatible API (the app: moa_cli/server/)."""

from __future__ import annotations

import ipaddress
import math
import os
from typing import Annotated, Any

import typer

from moa_cli.cli import options as opt
from moa_cli.cli.errors import handle_errors
from moa_cli.errors import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_values(values: list[str] | None) -> tuple[str, ...]:
    """Repeated options and comma (or space) lists: ["a,b", "c"] -> ("a", "b", "c")."""
    return tuple(part for value in values or () for part in value.replace(",", " ").split())


@opt.setting_options("serve")
def serve(
    *,
    local: opt.Local = False,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 5001,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar="MOA_SERVE_API_KEYS",
            metavar="KEY",
            help="Clients must send Authorization: Bearer KEY; repeat it for several (env: comma list).",
            show_envvar=False,
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Allow browser calls from this origin (repeatable).",
            show_default=False,
        ),
    ] = None,
    max_concurrent: Annotated[
        int,
        typer.Option("--max-concurrent", min=1, metavar="N", help="Turns running at once."),
    ] = 16,
    queue: Annotated[
        int,
        typer.Option("--queue", min=0, metavar="M", help="Turns waiting for a slot; beyond that, 429."),
    ] = 64,
    turn_timeout: Annotated[
        float | None,
        typer.Option(
            "--turn-timeout",
            min=0.001,
            metavar="SECONDS",
            help="Longest a whole request may take (504).",
            show_default=False,
        ),
    ] = None,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            "--shutdown-timeout",
            min=0.0,
            metavar="SECONDS",
            help="On SIGTERM, how long in-flight turns may finish.",
        ),
    ] = 30.0,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, metavar="N", help="Worker processes (uvicorn's own)."),
    ] = 1,
    passthrough: Annotated[
        list[str] | None,
        typer.Option(
            "--passthrough",
            metavar="MODEL",
            help="Also serve this provider model as itself, one direct call (for titles and tags; repeatable).",
            show_default=False,
        ),
    ] = None,
    allow_overrides: Annotated[
        bool,
        typer.Option(
            "--allow-overrides",
            help='Let requests change the line-up with {"moa": {...}} in the body.',
        ),
    ] = False,
    progress: Annotated[
        str,
        typer.Option(
            "--progress",
            metavar="off|reasoning",
            help="reasoning: stream each reference's progress as reasoning_content.",
        ),
    ] = "off",
    verbose: opt.Verbose = False,
    flags: dict[str, Any],
) -> None:
    """Serve MoA behind an OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models.

    Every named line-up is a model (moa is the default one). Examples:

      moa serve                                     # http://127.0.0.1:5001/v1

      moa serve --lineup fast --passthrough groq:llama-3.1-8b-instant

      MOA_SERVE_API_KEYS=secret moa serve --host 0.0.0.0 --workers 2
    """
    with handle_errors():
        from moa_cli.cli.runtime import load  # deferred: keeps --help fast

        keys = split_values(api_key)
        if progress not in ("off", "reasoning"):
            raise ConfigError(f"invalid --progress: {progress!r} is not one of off, reasoning")
        if not is_loopback(host) and not keys:
            raise ConfigError(
                f"refusing to listen on {host} without an API key: anyone who reaches it spends your provider "
                "credit; set --api-key KEY (or MOA_SERVE_API_KEYS), or listen on 127.0.0.1"
            )
        settings = load(opt.flag_overrides(flags, verbose=verbose), local=local)
        from moa_cli.server.options import ENV_VAR, ServeOptions, to_environment

        options = ServeOptions(
            api_keys=keys,
            cors_origins=split_values(cors_origin),
            max_concurrent=max_concurrent,
            queue=queue,
            turn_timeout=turn_timeout,
            shutdown_timeout=shutdown_timeout,
            passthrough=split_values(passthrough),
            allow_overrides=allow_overrides,
            progress="reasoning" if progress == "reasoning" else "off",
        )
        from moa_cli.server.app import create_app

        app: Any = create_app(settings, options)  # ConfigError (exit 2) before anything listens
        if workers > 1:
            # Each worker builds its own app from the same options (uvicorn needs an import string).
            os.environ[ENV_VAR] = to_environment(options, settings.overrides, local)
            app = "moa_cli.server.app:app_from_environment"
        import uvicorn

        try:
            uvicorn.run(
                app,
                factory=workers > 1,
                host=host,
                port=port,
                workers=workers,
                timeout_graceful_shutdown=math.ceil(shutdown_timeout),
                log_level="debug" if verbose else "info",
                server_header=False,
            )
        except KeyboardInterrupt:
            pass  # SIGTERM or Ctrl-C: uvicorn drained the turns in flight; a clean stop
