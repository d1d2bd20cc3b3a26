"""moa as a library logs nothing: only the CLI switches its logger on (issue 8).

Each check runs in a fresh interpreter, so no earlier import (api.py, the CLI) can have
silenced the logger by accident.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT
from tests.fakes.helpers import parse_source
from tests.fakes.llm_server import FakeLLMServer, Reply

PKG = ROOT / "moa_cli"

ENGINE_ALONE = """
import asyncio
from moa_cli.engine import Plan, run_turn
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step

provider = ScriptedProvider().enqueue("beta", Step(error="rate_limit", status=429))
plan = Plan(references=("alpha", "beta"), aggregator="judge", rounds=2)
result = asyncio.run(run_turn([{"role": "user", "content": "hi"}], plan, ScriptedRouter(provider)))
print(result.answer)
"""

# The real providers too (registry.py and chat_api.py log each set-up, call and failure).
ENGINE_WITH_HTTP = """
import asyncio
from moa_cli.config import load_settings
from moa_cli.engine import Plan, run_turn
from moa_cli.providers.registry import ProviderPool

async def main():
    pool = ProviderPool(load_settings({}))
    try:
        plan = Plan(references=("alpha", "beta"), aggregator="judge")
        return await run_turn([{"role": "user", "content": "hi"}], plan, pool)
    finally:
        await pool.aclose()

print(asyncio.run(main()).answer)
"""


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_engine_alone_prints_nothing_on_stderr() -> None:
    proc = run_python(ENGINE_ALONE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Answer from judge.\n"
    assert proc.stderr == ""


def test_a_turn_through_the_real_providers_prints_nothing_on_stderr(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    llm_server.script("beta", Reply(status=500))  # a failed call: logged at debug by chat_api and the engine
    proc = run_python(ENGINE_WITH_HTTP, env=moa_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Answer from judge.\n"
    assert proc.stderr == ""
    assert len(llm_server.requests) == 3


def test_a_program_can_switch_the_logs_on() -> None:
    code = ENGINE_ALONE.replace("result = ", 'from loguru import logger\nlogger.enable("moa_cli")\nresult = ')
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "layer 1 call alpha" in proc.stderr


def test_modules_take_their_logger_from_moa_cli_logs() -> None:
    """Only diagnostics.py imports loguru, so importing any module that logs disables moa's records.

    The front ends (cli/, repl/) may import it too: they run after `logs.configure()`.
    """
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.as_posix() == "diagnostics.py" or rel.parts[0] in ("cli", "repl"):
            continue
        for node in ast.walk(parse_source(path.read_text())):
            if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "loguru" for a in node.names)) or (
                isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "loguru"
            ):
                offenders.append(rel.as_posix())
    assert offenders == [], "use `from moa_cli.diagnostics import logger`"


def test_the_help_path_still_does_not_import_loguru() -> None:
    """loguru costs ~50 ms to import: `moa --help` and `moa --version` must not pay for it."""
    code = (
        "import sys, contextlib, io; sys.argv=['moa','--version']\n"
        "from moa_cli.cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main()\n"
        "print('loguru' in sys.modules)"
    )
    proc = run_python(code)
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_cli_shows_warnings_as_moa_lines_and_debug_logs_with_times(capsys: pytest.CaptureFixture[str]) -> None:
    from moa_cli.logs import configure, logger

    try:
        configure("WARNING")
        logger.warning("the turn was not logged: database is locked")
        logger.debug("not shown")
        assert capsys.readouterr().err == "moa: warning: the turn was not logged: database is locked\n"
        configure("DEBUG")
        logger.debug("shown")
        assert capsys.readouterr().err.endswith(" DEBUG   tests.test_library_quiet: shown\n")
    finally:
        logger.remove()
        logger.disable("moa_cli")
