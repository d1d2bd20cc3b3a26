"""The one place where errors become exit codes and one-line messages.

0    answered
1    the models failed, or the answer could not be written (disk full, stdout closed)
2    usage or configuration error
129  SIGHUP    130  SIGINT (Ctrl-C)    143  SIGTERM: the turn is cancelled, streams closed
141  the reader of stdout went away (`| head`): quietly, as `cat` does
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from moa_cli.errors import ConfigError, MoaError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_HANGUP, EXIT_PIPE, EXIT_TERMINATED = 129, 141, 143
EXIT_WRITE = EXIT_FAILED  # the answer could not be written


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        from moa_cli.signals import exit_code_of

        return exit_code_of(exc)
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FAILED


def report(
    message: str, *, json_mode: bool = False, code: int = EXIT_FAILED, extra: dict[str, object] | None = None
) -> None:
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
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (signals.Interrupted)
        code = interrupted(exc, json_mode=json_mode)
        raise typer.Exit(code) from None
    except MoaError as exc:
        code = exit_code_for(exc)
        # a failed model call or turn: its kind and HTTP status (TurnFailed, ProviderError)
        kind, status = getattr(exc, "kind", None), getattr(exc, "status", None)
        extra: dict[str, object] | None = {"error_kind": kind, "status": status} if kind else None
        report(str(exc), json_mode=json_mode, code=code, extra=extra)
        raise typer.Exit(code) from None


def interrupted(exc: KeyboardInterrupt, *, json_mode: bool = False) -> int:
    """Say why the run stopped (one line; with --json, the error object too); the exit code."""
    from moa_cli.signals import exit_code_of, reason_of

    code, reason = exit_code_of(exc), reason_of(exc)
    if json_mode:
        sys.stdout.write(json.dumps({"error": reason, "exit_code": code}) + "\n")
        sys.stdout.flush()
    newline = "\n" if code == EXIT_INTERRUPTED and _is_tty(sys.stderr) else ""  # off the ^C
    sys.stderr.write(f"{newline}moa: {reason}\n")
    sys.stderr.flush()
    return code


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
