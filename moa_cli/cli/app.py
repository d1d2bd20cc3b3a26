"""The Typer root: `moa ask`, `moa chat`, `moa config`, `moa models`.

Only Typer and moa's own light modules are imported here; each command imports the
engine, rich and the SDKs when it runs, so `moa --help` and `moa --version` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from moa_cli import __version__
from moa_cli.cli import config_cmd, eval_cmd, logs_cmd
from moa_cli.cli.ask import ask, run_ask
from moa_cli.cli.batch_cmd import batch
from moa_cli.cli.chat import chat
from moa_cli.cli.lineups_cmd import lineups
from moa_cli.cli.models_cmd import models
from moa_cli.cli.serve import serve
from moa_cli.cli.trace_cmd import trace


class _Escape(Exception):
    """Carries an exception past click, which would turn EPIPE into exit 1 and Ctrl-C into 130."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


@contextmanager
def _escaping() -> Iterator[None]:
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException, _Escape):
        raise  # click's own flow (Exit, Abort, usage errors) stays click's
    except (Exception, KeyboardInterrupt) as exc:
        raise _Escape(exc) from exc


class _Group(TyperGroup):
    """The root group: every error but click's own reaches main() as it was raised.

    Parsing (where `--help` and `--version` print) and invocation (the subcommands, their
    own `--help`) both run inside this class's methods.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _escaping():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _escaping():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="moa",
    help=(
        "Mixture-of-Agents in the terminal: several models answer, an aggregator writes the final answer.\n\n"
        "Pipe text in to ask once: echo 'Why is the sky blue?' | moa"
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"moa {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: Annotated[
        bool | None,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if sys.stdin is not None and not sys.stdin.isatty():
        run_ask(None, {})  # `echo ... | moa` is `moa ask`
        return
    chat()  # bare `moa` on a terminal is `moa chat`


app.command("ask")(ask)
app.command("chat")(chat)
app.command("models")(models)
app.command("lineups")(lineups)
app.command("serve")(serve)
app.command("batch")(batch)
app.add_typer(config_cmd.app, name="config")
app.add_typer(logs_cmd.app, name="logs")
app.add_typer(eval_cmd.app, name="eval")
app.command("trace")(trace)


# The original demo's spellings; users paste commands from its README.
UNDERSCORE_ALIASES = frozenset(
    {
        "--reference_models",
        "--max_tokens",
        "--num_proc",
        "--multi_turn",
        "--no_multi_turn",
        "--layer_deadline",
        "--aggregator_prompt",
    }
)


def normalise_argv(argv: list[str]) -> list[str]:
    """`--max_tokens 5` -> `--max-tokens 5`, for the known aliases only, never after `--`.

    Bytes that are not UTF-8 (Python keeps them as surrogates) become U+FFFD, as piped
    stdin does: a prompt with a stray Latin-1 byte must not fail every model call.
    """
    argv = [arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for arg in argv]
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        name, sep, value = arg.partition("=")
        out.append(name.replace("_", "-") + sep + value if name in UNDERSCORE_ALIASES else arg)
    return out


def main() -> None:
    """Entry point: every way a run can end becomes its exit code and at most one line on stderr.

    Usage errors exit 2, a reader that goes away (`| head`) exits 141 quietly, a failed
    write of the answer exits 1, signals exit 128 + signum; never a box or a traceback.
    """
    try:  # a signal before the command runs still gets its answer (with --json, the object)
        from moa_cli import signals
        from moa_cli.cli import stdio
        from moa_cli.cli.errors import EXIT_PIPE, EXIT_WRITE, interrupted

        if not stdio.prepare():
            sys.stderr.write("moa: error: cannot write the output: stdout is closed\n")
            sys.exit(EXIT_WRITE)
        signals.install()
        argv = normalise_argv(sys.argv[1:])
    except KeyboardInterrupt as exc:
        from moa_cli.cli.entry import say_interrupted
        from moa_cli.signals import exit_code_of, reason_of

        sys.exit(say_interrupted(sys.argv[1:], exit_code_of(exc), reason_of(exc)))
    json_mode = "--json" in argv
    try:
        try:
            code = _dispatch(argv, json_mode)
            sys.stdout.flush()  # a buffered write fails here, not in the interpreter's last flush
        except KeyboardInterrupt as exc:  # a signal while an error was being reported
            code = interrupted(exc)
    except BrokenPipeError:
        code = EXIT_PIPE  # the reader went away: stop quietly, as `cat` does
    except OSError as exc:
        code = _output_failed(exc)
    # Once the answer is out, stdout is done: its reader gets end-of-file now, not after the
    # log is written and the process torn down (and the final flush cannot fail again).
    stdio.silence_stdout()
    _leave(code)


def _leave(code: int) -> NoReturn:
    """`sys.exit(code)`, without the interpreter's own teardown once a turn has run.

    After a turn the interpreter frees every module and object of the SDKs, rich and the
    engine one by one: 0.15 s on a quiet 2-core machine (0.7 s under load) between the
    answer's last byte and the shell prompt, for nothing. So do what exiting must do, in
    the interpreter's own order (wait for non-daemon threads and shut the executors down,
    run the exit handlers: the log writer finishes the turn's row), flush, and end there.
    `moa --help` and friends load too little to care, and keep the ordinary exit.
    """
    if "moa_cli.engine" not in sys.modules:
        sys.exit(code)
    import atexit
    import os
    import signal
    import threading

    # A signal now would raise inside the exit handlers, in the middle of writing the turn's
    # log row: note it, let the write finish (the log's busy timeout bounds it), exit with it.
    caught: list[int] = []
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda signum, frame: caught.append(signum))
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx runs first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    if caught:
        code = 128 + caught[0]
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # stdout was silenced; stderr is best effort
            pass
    os._exit(code)


def _dispatch(argv: list[str], json_mode: bool) -> int:
    """Run the app; map everything but stdout's own failures (EPIPE, ENOSPC...) to a code."""
    from moa_cli.cli.errors import EXIT_FAILED, interrupted, report

    try:
        try:
            code = app(args=argv, prog_name="moa", standalone_mode=False)
        except _Escape as escaped:
            raise escaped.exc from None
    except (typer.Abort, EOFError):
        sys.stderr.write("moa: aborted\n")
        return 130
    except typer.TyperException as exc:  # click's ClickException and UsageError derive from it
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        code = int(getattr(exc, "exit_code", 2))
        report(f"{message}{hint}", json_mode=json_mode, code=code)
        return code
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP outside a command's own handler
        return interrupted(exc, json_mode=json_mode)
    except OSError as exc:
        if exc.filename is None and exc.filename2 is None:
            raise  # a write to stdout failed: main() decides
        report(f"{exc.strerror or exc}: {exc.filename}", json_mode=json_mode)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001  (a bug: one line, the traceback only with --verbose)
        if "-v" in argv or "--verbose" in argv:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        report(f"unexpected error: {type(exc).__name__}: {exc}", json_mode=json_mode)
        return EXIT_FAILED
    return code if isinstance(code, int) else 0


def _output_failed(exc: OSError) -> int:
    """stdout failed (disk full, closed, I/O error): one line on stderr; exit 1."""
    from moa_cli.cli.errors import EXIT_WRITE

    reason = exc.strerror or type(exc).__name__
    sys.stderr.write(f"moa: error: cannot write the output: {reason}\n")
    sys.stderr.flush()
    return EXIT_WRITE
