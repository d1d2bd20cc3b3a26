"""Command options built from the settings' declarations (`settings.py`).

`@setting_options("ask")` gives a command one option per setting that `ask` takes, with
the declared flags, help and default, and hands the command the values the user gave as
one `flags` dict (setting name -> value). A command never lists the settings itself, so a
setting cannot be forgotten on one command, and renaming a parameter cannot silently drop
a flag: a command parameter that collides with a setting is an error at import time.

The original demo's underscore spellings (`--reference_models`, `--max_tokens`, ...) are
accepted too: `app.main()` rewrites them before parsing, so `--help` lists each option once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from moa_cli.settings import DEFAULTS, Spec, flag_specs, show

# Options of the commands themselves (output and logging), not settings.
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or footer on stderr; warnings and errors still.")
]
Local = Annotated[bool, typer.Option("--local", help="Use the offline line-up on the bundled model (--lineup local).")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object: answer, proposals, usage.")]
# The conversation log (store/): continue a logged conversation.
Continue = Annotated[
    bool,
    typer.Option(
        "--continue",
        "-c",
        help="Continue the latest logged conversation. It keeps its line-up, settings and system prompt unless flags say otherwise.",
    ),
]
ConversationId = Annotated[
    str | None,
    typer.Option(
        "--cid",
        metavar="ID",
        help="Continue the logged conversation ID (moa logs lists them); as -c, flags override its line-up.",
        show_default=False,
    ),
]

_PYTHON_TYPE: dict[str, Any] = {
    "str": str | None,
    "int": int | None,
    "float": float | None,
    "bool": bool | None,
    "models": list[str] | None,
    "text": Path | None,
}


def _help(name: str, spec: Spec) -> str:
    if not spec.show_default or spec.kind == "bool":
        return spec.help
    return f"{spec.help.rstrip('.')} (default {show(DEFAULTS[name])})."


def _option(name: str, spec: Spec) -> inspect.Parameter:
    extra: dict[str, Any] = {"dir_okay": False} if spec.kind == "text" else {}
    option = typer.Option(*spec.flags, metavar=spec.metavar, help=_help(name, spec), show_default=False, **extra)
    annotation = Annotated[_PYTHON_TYPE[spec.kind], option]  # type: ignore[valid-type,name-defined]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def setting_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options of every setting `command` takes; the function gets them as `flags`."""
    specs = flag_specs(command)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        if "flags" not in signature.parameters:
            raise TypeError(f"{func.__name__} must take a `flags` parameter")
        clash = {p.name for p in own} & set(specs)
        if clash:
            raise TypeError(f"{func.__name__}: parameters {sorted(clash)} are settings; take them from `flags`")
        # Positional arguments first, then the settings' options, then the command's own.
        arguments = [
            p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
        ]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in arguments]
        lead = [p for p in rest if p.name in ("lineup", "local")]
        tail = [p for p in rest if p not in lead]
        options = [_option(name, spec) for name, spec in specs.items()]
        if any(p.name == "local" for p in lead):  # --local sits after --lineup
            lineup_options = [o for o in options if o.name == "lineup"]
            options = [o for o in options if o.name != "lineup"]
            lead = lineup_options + lead
        parameters = arguments + lead + options + tail

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = {name: kwargs.pop(name, None) for name in specs}
            return func(*args, **kwargs, flags=flags)

        del wrapper.__wrapped__  # Typer must see the new signature, not the function's own
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.setting_names = tuple(specs)  # type: ignore[attr-defined]  # for the tests
        return wrapper

    return decorate


def flag_overrides(flags: dict[str, Any], *, verbose: bool = False) -> dict[str, Any]:
    """The flags as settings overrides; --verbose is the DEBUG log level."""
    return {**flags, "log_level": "DEBUG" if verbose else None}
