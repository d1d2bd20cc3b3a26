"""`moa ask` end to end: the real CLI in a subprocess, the real together SDK, the fake server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fakes.helpers import asked, references_in
from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge"]


def test_prompt_as_argument_prints_only_the_answer(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="Rayleigh scattering.\n\nShort waves scatter more."))
    proc = moa(["ask", *LINEUP, "Why is the sky blue?"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Rayleigh scattering.\n\nShort waves scatter more.\n"
    assert "Traceback" not in proc.stderr
    assert [asked(r) for r in llm_server.requests] == ["Why is the sky blue?"] * 3


def test_prompt_from_stdin(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", *LINEUP], input="line one\nline two\n")
    assert proc.returncode == 0, proc.stderr
    assert llm_server.requests_for("alpha")[0].last_user == "line one\nline two"
    assert proc.stdout == "Answer from judge.\n"


def test_stdin_comes_first_then_the_argument(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", *LINEUP, "summarise this"], input="# Notes\nbuy milk\n")
    assert proc.returncode == 0, proc.stderr
    assert llm_server.requests_for("beta")[0].last_user == "# Notes\nbuy milk\n\nsummarise this"


def test_bare_moa_with_piped_stdin_asks(moa, llm_server: FakeLLMServer) -> None:
    proc = moa([], input="hello there", env={"MOA_REFERENCE_MODELS": "alpha", "MOA_AGGREGATOR": "judge"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Answer from judge.\n"


def test_json_output(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(status=404))
    proc = moa(["ask", *LINEUP, "--rounds", "2", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"answer", "aggregator", "finish_reason", "proposals", "usage", "cost_usd", "seconds"} <= set(data)
    assert data["answer"] == "Answer from judge." and data["aggregator"] == "judge"
    layers = [(p["model"], p["layer"]) for p in data["proposals"]]
    assert layers == [("alpha", 1), ("beta", 1), ("alpha", 2), ("beta", 2)]
    failed = data["proposals"][1]
    assert failed["text"] is None and "404" in failed["error"] and failed["usage"] is None
    assert (failed["error_kind"], failed["status"], failed["finish_reason"]) == ("not_found", 404, None)
    assert failed["error_kind"] == "not_found" and failed["status"] == 404 and data["finish_reason"] == "stop"
    ok = data["proposals"][0]
    assert ok["text"] == "Answer from alpha." and ok["error"] is None and ok["usage"]["total_tokens"] > 0
    assert (ok["error_kind"], ok["status"], ok["finish_reason"]) == (None, None, "stop")
    known = [p["usage"]["total_tokens"] for p in data["proposals"] if p["usage"]]
    assert data["usage"]["total_tokens"] > sum(known)  # plus the aggregator's
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


def test_one_reference_failing_warns_once_and_answers(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(status=500, error_message="boom"))
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "beta" in warnings[0] and "500" in warnings[0]
    assert proc.stdout == "Answer from judge.\n"
    judge = llm_server.requests_for("judge")[0]
    assert "Answer from alpha" in references_in(judge) and "Answer from beta" not in str(judge.messages)


def test_a_404_model_is_named(moa, llm_server: FakeLLMServer) -> None:
    llm_server.unknown_models_404 = True
    llm_server.set_default("alpha", Reply())
    llm_server.set_default("judge", Reply())
    proc = moa(["ask", "-r", "alpha,no-such/model", "-a", "judge", "q"])
    assert proc.returncode == 0, proc.stderr
    assert "no-such/model" in proc.stderr and "404" in proc.stderr


def test_aggregator_failing_exits_1_with_one_line(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(status=500))
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 1
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("moa: error:")]
    assert len(errors) == 1 and "aggregator judge failed" in errors[0]
    assert "Traceback" not in proc.stderr


def test_all_references_failing_exits_1(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(status=503))
    llm_server.script("beta", Reply(status=503))
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 1
    assert "every reference model failed" in proc.stderr and "Traceback" not in proc.stderr


def test_json_error_is_a_json_object(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(status=500))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert "aggregator judge failed" in data["error"]


def test_missing_key_exits_2_and_names_the_variable(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", *LINEUP, "q"], env={"TOGETHER_API_KEY": ""})
    assert proc.returncode == 2
    assert "TOGETHER_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert llm_server.requests == []


def test_missing_key_for_an_openai_compatible_provider(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(["ask", "-r", "groq:llama-3.1-8b-instant", "-a", "judge", "q"])
    assert proc.returncode == 2
    assert "GROQ_API_KEY" in proc.stderr


def test_layer_deadline_with_a_slow_reference(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(text="slow", latency=10))
    started = time.perf_counter()
    proc = moa(["ask", *LINEUP, "--layer-deadline", "0.5", "--json", "q"])
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["proposals"][1]["text"] is None and "deadline" in data["proposals"][1]["error"]
    assert "beta" in proc.stderr and "timed out" in proc.stderr
    assert elapsed < 10 / 2  # the straggler's latency would dominate otherwise


def test_429_then_success_is_retried_by_the_sdk(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(status=429, headers={"retry-after-ms": "1"}), Reply(text="after retry"))
    proc = moa(["ask", *LINEUP, "--retries", "1", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    assert len(llm_server.requests_for("alpha")) == 2
    assert json.loads(proc.stdout)["proposals"][0]["text"] == "after retry"


def test_a_call_waiting_to_retry_says_so_not_running(moa, llm_server: FakeLLMServer) -> None:
    """A 429 with Retry-After: the progress line says the call waits to retry, with the status and
    the wait, before the answer comes; a 400 (never retried) says nothing of the kind."""
    llm_server.script("alpha", Reply(status=429, headers={"retry-after": "1"}), Reply(text="after retry"))
    llm_server.script("beta", Reply(status=503, headers={"retry-after-ms": "1"}), Reply(status=503), Reply(text="b"))
    proc = moa(["ask", *LINEUP, "--retries", "2", "q"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "moa: alpha (layer 1) HTTP 429, waiting to retry (1s)" in lines
    assert "moa: beta (layer 1) HTTP 503, waiting to retry (0s)" in lines
    assert "moa: beta (layer 1) HTTP 503, waiting to retry, retry 2" in lines
    done = next(i for i, line in enumerate(lines) if line.startswith("moa: alpha (layer 1) done"))
    assert lines.index("moa: alpha (layer 1) HTTP 429, waiting to retry (1s)") < done
    llm_server.script("alpha", Reply(status=400))
    refused = moa(["ask", *LINEUP, "--retries", "2", "q"])
    assert "waiting to retry" not in refused.stderr and "alpha" in refused.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--temperature", "-1"], "--temperature"),
        (["--max-tokens", "abc"], "--max-tokens"),
        (["--num-proc", "0"], "--num-proc"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_options_exit_2_with_one_line(moa, args: list[str], needle: str) -> None:
    proc = moa(["ask", *LINEUP, *args, "q"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and proc.stderr.startswith("moa: error:")


def test_no_prompt_exits_2(moa) -> None:
    proc = moa(["ask", *LINEUP])
    assert proc.returncode == 2 and "no prompt" in proc.stderr


def test_underscore_aliases_from_the_original_demo(moa, llm_server: FakeLLMServer) -> None:
    proc = moa(
        ["ask", "--reference_models", "alpha", "--aggregator", "judge", "--max_tokens", "7", "--num_proc", "1", "q"]
    )
    assert proc.returncode == 0, proc.stderr
    assert all(r.body["max_tokens"] == 7 for r in llm_server.requests)


def test_bad_env_value_exits_2(moa) -> None:
    proc = moa(["ask", *LINEUP, "q"], env={"MOA_TEMPERATURE": "hot"})
    assert proc.returncode == 2 and "MOA_TEMPERATURE" in proc.stderr


def test_malformed_config_file_names_file_and_line(moa, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text('temperature = 0.5\nrounds = "two"\n')
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 2
    assert f"{moa_home / 'config.toml'}, line 2" in proc.stderr and "rounds" in proc.stderr
    (moa_home / "config.toml").write_text("temperature = \n")
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 2 and "line 1" in proc.stderr and "Traceback" not in proc.stderr


def test_openai_compatible_provider_mixed_with_together(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\napi_key_env = "FAKEAI_KEY"\n'
    )
    proc = moa(
        ["ask", "-r", "fakeai:llama3.2:1b,alpha", "-a", "fakeai:judge", "q"], env={"FAKEAI_KEY": "sk-fake-secret"}
    )
    assert proc.returncode == 0, proc.stderr
    models = sorted(r.model for r in llm_server.requests)
    assert models == ["alpha", "judge", "llama3.2:1b"]
    by_model = {r.model: r for r in llm_server.requests}
    assert by_model["llama3.2:1b"].headers.get("authorization") == "Bearer sk-fake-secret"
    assert by_model["alpha"].headers.get("authorization") == "Bearer test-key-0123456789"


def test_secrets_never_reach_the_output(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(status=401))
    proc = moa(["ask", *LINEUP, "--verbose", "q"])
    combined = proc.stdout + proc.stderr
    assert "test-key-0123456789" not in combined and "Bearer" not in combined
    shown = moa(["config", "show"])
    assert shown.returncode == 0 and "test-key-0123456789" not in shown.stdout
    assert "TOGETHER_API_KEY=tes…89" in shown.stdout


def test_flags_beat_env_beat_file(moa, llm_server: FakeLLMServer, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text("max_tokens = 11\ntemperature = 0.1\nrounds = 1\n")
    proc = moa(["ask", *LINEUP, "--temperature", "0.3", "q"], env={"MOA_MAX_TOKENS": "22"})
    assert proc.returncode == 0, proc.stderr
    body = llm_server.requests_for("alpha")[0].body
    assert body["max_tokens"] == 22 and body["temperature"] == 0.3


def test_version_and_help() -> None:
    version = subprocess.run([sys.executable, "-m", "moa_cli", "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("moa ")
    helped = subprocess.run(
        [sys.executable, "-m", "moa_cli", "ask", "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0 and "--reference-models" in helped.stdout and "--layer-deadline" in helped.stdout


def test_ctrl_c_exits_130_and_closes_connections(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="word " * 500, token_delay=0.05))
    llm_server.script("beta", Reply(text="word " * 500, token_delay=0.05))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "ask", *LINEUP, "q"],
        env=moa_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while llm_server.active_streams < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert llm_server.active_streams == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and out == ""
    assert llm_server.wait_until_idle(timeout=3)
    assert all(r.disconnected for r in llm_server.requests)


def test_quiet_keeps_stderr_to_warnings(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("beta", Reply(status=500))
    proc = moa(["ask", *LINEUP, "-q", "q"])
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "beta" in lines[0]


def test_missing_aggregator_prompt_file_exits_2(moa, tmp_path: Path) -> None:
    proc = moa(["ask", *LINEUP, "--aggregator-prompt", str(tmp_path / "nope.txt"), "q"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("moa: error: cannot read aggregator prompt")


def test_non_utf8_argument_is_replaced_not_fatal(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"moa_cli", b"ask", b"-r", b"alpha", b"-a", b"judge", b"caf\xe9"],
        env=moa_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert llm_server.requests_for("alpha")[0].last_user == "caf\ufffd"


def test_a_closed_pipe_ends_quietly(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text="line\n" * 2000))
    shell = f"{sys.executable} -m moa_cli ask -r alpha -a judge q | head -c 10"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], env=moa_env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.stdout == "line\nline\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert llm_server.requests_for("judge")  # it was the reader that stopped, not the model


# A SIGINT while the command line loads (the first ~40 ms): raised for real at a fixed point
# of the start-up, as an import hook sees that module asked for.
_EARLY_SIGINT = """
import signal, sys

target = sys.argv[1]
sys.meta_path.insert(0, type("H", (), {"find_spec": staticmethod(
    lambda name, path=None, t=None: signal.raise_signal(signal.SIGINT) if name == target else None)})())
del sys.argv[1]
sys.argv[0] = "moa"
from moa_cli.cli.entry import main
main()
"""


@pytest.mark.parametrize("module", ["moa_cli.cli.app", "moa_cli.cli.stdio"])
def test_json_says_interrupted_when_sigint_lands_at_start(
    moa_env: dict[str, str], llm_server: FakeLLMServer, module: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _EARLY_SIGINT, module, "ask", "--json", "hi", "-r", "alpha", "-a", "judge"],
        env=moa_env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert json.loads(proc.stdout) == {"error": "interrupted", "exit_code": 130}
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr
    assert llm_server.requests == []


@pytest.mark.parametrize(
    ("aggregation", "calls"), [("consensus", "2 calls"), ("select", "3 calls"), ("synthesize", "3 calls")]
)
def test_the_footer_counts_the_calls_made_upstream(
    moa, llm_server: FakeLLMServer, aggregation: str, calls: str
) -> None:
    llm_server.set_default("judge", Reply(text="1"))
    proc = moa(["ask", "hi", "-r", "alpha,beta", "-a", "judge", "--aggregation", aggregation])
    assert proc.returncode == 0, proc.stderr
    made = len(llm_server.requests)
    assert f"{made} calls" == calls and f" · {calls}" in proc.stderr, proc.stderr
