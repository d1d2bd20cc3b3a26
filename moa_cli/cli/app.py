"""The Typer root: `moa ask`, `moa chat`, `moa config`, `moa models`.

Only Typer and moa's own light modules are imported here; each command imports the
engine, rich and the SDKs when it runs, so `moa --help` and `moa --version` start fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from moa_cli import __version__
from moa_cli.cli import config_cmd
from moa_cli.cli.ask import ask, run_ask
from moa_cli.cli.lineups_cmd import lineups
from moa_cli.cli.models_cmd import models
from moa_cli.cli.chat import chat

app = typer.Typer(
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
        Optional[bool],
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
app.add_typer(config_cmd.app, name="config")


# The original demo's spellings; users paste commands from its README.
UNDERSCORE_ALIASES = frozenset(
    {"--reference_models", "--max_tokens", "--num_proc", "--multi_turn", "--no_multi_turn",
     "--layer_deadline", "--aggregator_prompt"}
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
    """Entry point: usage errors become one line on stderr and exit 2, never a box or a traceback."""
    argv = normalise_argv(sys.argv[1:])
    try:
        code = app(args=argv, prog_name="moa", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("moa: aborted\n")
        code = 130
    except typer.TyperException as exc:  # click's ClickException and UsageError derive from it
        from moa_cli.cli.errors import report

        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        code = getattr(exc, "exit_code", 2)
        report(f"{message}{hint}", json_mode="--json" in argv, code=code)
    except BrokenPipeError:
        # The reader went away (`moa ask ... | head -1`): stop quietly, as `cat` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail too
        code = 141
    sys.exit(code if isinstance(code, int) else 0)
