"""Kept for its import path: the trace view is `moa_cli/render/trace.py`."""

from moa_cli.render.trace import TraceView, render_text, save_svg

__all__ = ["TraceView", "render_text", "save_svg"]
