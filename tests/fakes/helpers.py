"""Small helpers the tests share (the fixtures are in fixtures.py and conftest.py)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def home_env(home: Path, *, key: str | None = "k", log: bool | None = None, **extra: str) -> dict[str, str]:
    """An environment for settings loaded in-process: MOA_HOME at `home`, a Together key
    (`key=None`: none), the log switched by `log` (None: left to the default), and `extra`."""
    env = {"MOA_HOME": str(home)}
    if key is not None:
        env["TOGETHER_API_KEY"] = key
    if log is not None:
        env["MOA_LOG"] = "true" if log else "false"
    return {**env, **extra}


def parse_source(source: str) -> ast.Module:
    """`ast.parse` with the garbage collector held off. In CPython 3.11.7, a finalizer that runs
    during the parse (an asyncio task whose exception was never retrieved, logged with a
    traceback, which itself calls ast.parse for its carets) corrupts the AST recursion counter:
    "SystemError: AST constructor recursion depth mismatch" in whichever test parsed next."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if enabled:
            gc.enable()
