"""Small helpers the tests share (the fixtures are in fixtures.py and conftest.py)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path
from typing import Any

from moa_cli.prompts import AGGREGATOR_PROMPT


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


def _block_start(text: str, prompt: str) -> int:
    """Where the references' block (the aggregator prompt, then the answers) starts in `text`; -1: none."""
    lead = prompt.strip().splitlines()[0] if prompt.strip() else "<response_1>"
    return text.find(lead) if "<response_1>" in text else -1


def references_in(request: Any, prompt: str = AGGREGATOR_PROMPT) -> str:
    """The references' block a request carries (the aggregator prompt and the answers), in either
    layout (prompts.py): in its system message, or at the end of its last message. "" if none."""
    for message in request.messages:
        text = message.get("content") or ""
        start = _block_start(text, prompt)
        if start >= 0:
            return str(text[start:])
    return ""


def without_references(messages: list[dict[str, Any]], prompt: str = AGGREGATOR_PROMPT) -> list[dict[str, Any]]:
    """`messages` less the references' block, in either layout: a system message that held only the
    block is gone, a message that held it more is cut back to its own text."""
    kept: list[dict[str, Any]] = []
    for message in messages:
        text = message.get("content") or ""
        start = _block_start(text, prompt) if isinstance(text, str) else -1
        if start < 0:
            kept.append(message)
        elif text[:start].strip():  # the block follows its own text after a blank line
            kept.append({**message, "content": text[:start].removesuffix("\n\n")})
    return kept


def asked(request: Any, prompt: str = AGGREGATOR_PROMPT) -> str | None:
    """The last user message a request carries, less the references' block (either layout)."""
    users = [m for m in without_references(request.messages, prompt) if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else None
