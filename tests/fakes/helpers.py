"""Small helpers the tests share (the fixtures are in fixtures.py and conftest.py)."""

from __future__ import annotations

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
