"""moa's logger: silent as a library, switched on by the CLI (`--verbose`, MOA_LOG_LEVEL).

Every module that logs takes its logger from here, `from moa_cli.diagnostics import logger`, never
from loguru directly: importing this module is what disables moa's records, so no import
order can let an engine or provider log reach a program's stderr uninvited. A program that
wants them calls `logger.enable("moa_cli")` (after importing moa) or `configure()`.
loguru itself stays off the `moa --help` and `moa --version` path (it costs ~50 ms to import).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from loguru import logger

from moa_cli.terminal import colour_off

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["configure", "logger"]

# Runs once, on first import, so it never undoes a later enable() or configure().
logger.disable("moa_cli")

_FORMAT = "<dim>{time:HH:mm:ss.SSS}</dim> <level>{level: <7}</level> {name}: {message}"
# Without --verbose only warnings and errors show: as one line like every other of moa's.
_PLAIN = "moa: {extra[word]}: {message}\n"
_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS")


def _format(record: Record) -> str:
    record["extra"]["word"] = record["level"].name.lower()
    return _PLAIN


def configure(level: str = "WARNING") -> None:
    """Route moa's logs to stderr at `level`. Nothing secret is ever logged by moa.

    The sink is whatever `sys.stderr` is now: the CLI's (cli/stdio.py) never raises, so a
    closed or full stderr costs the logs, never the answer; `catch=True` covers any other.
    """
    logger.remove()
    colorize = False if colour_off() else None  # loguru does not read NO_COLOR itself
    verbose = level.upper() in _LEVELS
    logger.add(
        sys.stderr,
        level=level.upper(),
        format=_FORMAT if verbose else _format,
        colorize=colorize,
        backtrace=False,
        diagnose=False,
        catch=True,
    )
    logger.enable("moa_cli")
