"""The one place where errors become exit codes and one-line messages.

    0 answered   1 the models failed   2 usage or configuration error   130 interrupted
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from moa_cli.errors import ConfigError, MoaError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FAILED


def report(message: str, *, json_mode: bool = False, code: int = EXIT_FAILED, extra: dict | None = None) -> None:
    """Print one error line on stderr (and, with --json, an error object on stdout, plus `extra`)."""
    from moa_cli.redact import redact

    message = redact(" ".join(message.split()))
    if json_mode:
        sys.stdout.write(json.dumps({"error": message, "exit_code": code, **(extra or {})}) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"moa: error: {message}\n")
    sys.stderr.flush()


@contextmanager
def handle_errors(*, json_mode: bool = False) -> Iterator[None]:
    """Turn moa's errors and Ctrl-C into exit codes, with no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write("\nmoa: interrupted\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MoaError as exc:
        code = exit_code_for(exc)
        # a failed model call or turn: its kind and HTTP status (TurnFailed, ProviderError)
        extra = {"error_kind": exc.kind, "status": exc.status} if hasattr(exc, "kind") else None
        report(str(exc), json_mode=json_mode, code=code, extra=extra)
        raise typer.Exit(code) from None
