"""loguru setup: quiet by default, `--verbose` or MOA_LOG_LEVEL raise it. Logs go to stderr."""

from __future__ import annotations

import os
import sys

from loguru import logger

# As a library moa stays quiet until asked: `logger.enable("moa_cli")`, or `configure()`
# as the CLI does. This runs once, on first import, so it never undoes a later configure().
logger.disable("moa_cli")

_FORMAT = "<dim>{time:HH:mm:ss.SSS}</dim> <level>{level: <7}</level> {name}: {message}"


def configure(level: str = "WARNING") -> None:
    """Route moa's logs to stderr at `level`. Nothing secret is ever logged by moa."""
    logger.remove()
    colorize = False if os.environ.get("NO_COLOR") else None  # loguru does not read NO_COLOR itself
    logger.add(sys.stderr, level=level.upper(), format=_FORMAT, colorize=colorize, backtrace=False, diagnose=False)
    logger.enable("moa_cli")
