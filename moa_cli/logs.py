"""Kept for its import path: moa's diagnostic logger is `moa_cli/diagnostics.py`."""

from moa_cli.diagnostics import configure, logger

__all__ = ["configure", "logger"]
