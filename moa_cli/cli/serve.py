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
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            envvar="MOA_SERVE_ALLOWED_HOSTS",
            metavar="NAME",
            help="Also answer requests whose Host is NAME (repeatable; env: comma list). On a loopback "
            "address only localhost, 127.0.0.1 and [::1] are answered otherwise (DNS rebinding).",
            show_envvar=False,
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections", min=1, metavar="N", help="Open connections plus requests in flight; beyond, 503."
        ),
    ] = 1000,
    header_timeout: Annotated[
        float,
        typer.Option("--header-timeout", min=0.1, metavar="SECONDS", help="A request's headers must arrive within."),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout", min=0.1, metavar="SECONDS", help="A request's whole body must arrive within (408)."
        ),
    ] = 30.0,
    keep_alive_timeout: Annotated[
        float,
        typer.Option("--keep-alive-timeout", min=0.1, metavar="SECONDS", help="An idle connection closes after."),
    ] = 5.0,
    max_header_bytes: Annotated[
        int,
        typer.Option("--max-header-bytes", min=1024, metavar="BYTES", help="Largest request head (h11's limit)."),
    ] = 16384,
    max_references: Annotated[
        int,
        typer.Option("--max-references", min=1, metavar="N", help="With --allow-overrides: references per request."),
    ] = 8,
    max_upstream_calls: Annotated[
        int,
        typer.Option(
            "--max-upstream-calls", min=1, metavar="N", help="With --allow-overrides: upstream calls per turn."
        ),
    ] = 32,
    retry_window: Annotated[
        float,
        typer.Option(
            "--retry-window",
            min=0.0,
            metavar="SECONDS",
            help="A failed turn's proposals are reused by the same request within (0: off).",
        ),
    ] = 120.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No start-up or per-request lines on stderr.")] = False,
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
        from moa_cli.server.options import ENV_VAR, LOOPBACK_HOSTS, ServeOptions, to_environment

        hosts = split_values(allowed_host)
        # On loopback, only loopback names (and the ones given) reach the app: a DNS-rebound
        # web page's requests carry its own host name. Elsewhere, the names given, if any.
        allowed = (*LOOPBACK_HOSTS, *hosts) if is_loopback(host) or hosts else None
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
            allowed_hosts=allowed,
            body_timeout=body_timeout,
            header_timeout=header_timeout,
            max_references=max_references,
            max_upstream_calls=max_upstream_calls,
            retry_window=retry_window,
            quiet=quiet,
        )
        from moa_cli.server.app import create_app

        app: Any = create_app(settings, options)  # ConfigError (exit 2) before anything listens
        lineup = describe(app.state.moa.catalogue)
        if workers == 1:
            from moa_cli.longrun import freeze_startup

            freeze_startup()  # start-up objects: out of every later full collection (longrun.py)
        else:
            # Each worker builds its own app from the same options (uvicorn needs an import string).
            os.environ[ENV_VAR] = to_environment(options, settings.overrides, local)
            app = "moa_cli.server.app:app_from_environment"
        run(app, options, host=host, port=port, workers=workers, verbose=verbose,
            limits=(max_connections, keep_alive_timeout, max_header_bytes), lineup=lineup)  # fmt: skip


def describe(catalogue: Any) -> str:
    """`moa (alpha, beta -> judge), fast, ...`: the served models, for the start-up line."""
    names = []
    for served in catalogue.models.values():
        s = served.settings
        lineup = f" ({', '.join(s.references)} -> {s.aggregator})" if s is not None and served.id == "moa" else ""
        names.append(served.id + lineup)
    return ", ".join(names)


def run(
    app: Any,
    options: Any,
    *,
    host: str,
    port: int,
    workers: int,
    verbose: bool,
    limits: tuple[int, float, int],
    lineup: str,
) -> None:
    """uvicorn.run's own steps (bind, then one server or its worker processes), with our
    start-up line once the port is known and the connection limits (connections.py)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from moa_cli.server import report
    from moa_cli.server.connections import raise_file_limit, uvicorn_settings

    max_connections, keep_alive, max_header = limits
    allowed = raise_file_limit(max_connections)
    if allowed < max_connections:
        report.write(f"--max-connections {max_connections} lowered to {allowed}: the open-file limit allows no more")
    config = uvicorn.Config(
        app,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=math.ceil(options.shutdown_timeout),
        log_level="debug" if verbose else "warning" if options.quiet else "info",
        access_log=verbose,  # our own access lines (guard.py) say more: the model, upstream calls
        server_header=False,
        **uvicorn_settings(options, allowed, keep_alive, max_header),
    )
    report.tame_loggers()
    server = uvicorn.Server(config)
    try:
        sock = config.bind_socket()
    except SystemExit:
        raise ConfigError(f"cannot listen on {host}:{port} (is another server using it?)") from None
    sock.listen(config.backlog)  # connections wait in the backlog from now: the line below is true
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    report.startup(f"http://{shown}:{bound}/v1", lineup, bool(options.api_keys), options.quiet)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # SIGTERM or Ctrl-C: uvicorn drained the turns in flight; a clean stop
    if workers == 1 and not server.started:
        raise typer.Exit(3)
