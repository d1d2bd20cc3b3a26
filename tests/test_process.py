"""The process contract, in real processes: closed pipes, full disks, closed streams, signals.

    0 answered   1 the models failed or the answer could not be written   2 usage
    129 SIGHUP   130 SIGINT   141 the reader went away   143 SIGTERM

Shell pipelines run under bash; `${PIPESTATUS[0]}` is moa's own exit code.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge"]
MOA = f"{shlex.quote(sys.executable)} -m moa_cli"


def sh(script: str, env: dict[str, str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a bash script (stdin closed unless the script redirects it)."""
    return subprocess.run(
        ["bash", "-c", script],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def moa_status(script: str, env: dict[str, str], *, index: int = 0) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run `script`, a pipeline whose command number `index` is moa; return moa's exit code."""
    proc = sh(f'{script}; echo "status=${{PIPESTATUS[{index}]}}" >&2', env)
    *rest, last = proc.stderr.rstrip("\n").split("\n")
    assert last.startswith("status="), proc.stderr
    proc.stderr = "\n".join(rest) + ("\n" if rest else "")
    return int(last.removeprefix("status=")), proc


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr, stderr


def slow_answer(llm_server: FakeLLMServer) -> None:
    """The answer keeps streaming (~2 s) long after a reader that stops early has gone."""
    llm_server.script("judge", Reply(text="word " * 400, token_delay=0.005))


# ----------------------------------------------------------------------- closed pipes


def test_ask_into_head_exits_141_quietly(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    slow_answer(llm_server)
    code, proc = moa_status(f"{MOA} ask -q -r alpha -a judge q | head -c 10", moa_env)
    assert code == 141
    assert proc.stdout == "word word "
    assert proc.stderr == ""


def test_ask_into_true_exits_141_quietly(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask {shlex.join(LINEUP)} q | true", moa_env)
    assert code == 141
    assert_clean(proc.stderr)
    assert "error" not in proc.stderr


def test_ask_json_into_true_exits_141(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask --json -q -r alpha -a judge q | true", moa_env)
    assert code == 141 and proc.stderr == ""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["ask", "--help"], ["config", "show"], ["models"]],
    ids=lambda args: " ".join(args),
)
def test_every_command_exits_141_when_the_reader_is_gone(
    moa_env: dict[str, str], llm_server: FakeLLMServer, args: list[str]
) -> None:
    # `sleep` lets `true` exit first, so the first write meets a closed pipe.
    code, proc = moa_status(f"(sleep 0.2; exec {MOA} {shlex.join(args)}) | true", moa_env)
    assert code == 141, proc.stderr
    assert proc.stderr == ""


def test_chat_line_mode_into_head_exits_141(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    # head has gone after the first answer; the next turn's answer meets the closed pipe.
    code, proc = moa_status(
        f"printf 'one\\ntwo\\nthree\\n' | {MOA} chat -r alpha -a judge | head -c 10", moa_env, index=1
    )
    assert code == 141
    assert proc.stdout == "Answer fro"
    assert_clean(proc.stderr)
    assert "error" not in proc.stderr


# ----------------------------------------------------------------------- write errors


def test_full_disk_exits_1_with_one_line(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask -q {shlex.join(LINEUP)} q > /dev/full", moa_env)
    assert code == 1
    assert proc.stderr == "moa: error: cannot write the output: No space left on device\n"


def test_full_disk_with_json_exits_1(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask --json -q {shlex.join(LINEUP)} q > /dev/full", moa_env)
    assert code == 1
    assert proc.stderr == "moa: error: cannot write the output: No space left on device\n"


def test_closed_stdout_exits_1_before_any_model_runs(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask {shlex.join(LINEUP)} q >&-", moa_env)
    assert code == 1
    assert proc.stderr == "moa: error: cannot write the output: stdout is closed\n"
    assert llm_server.requests == []


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_broken_stderr_does_not_lose_the_answer(
    moa_env: dict[str, str], llm_server: FakeLLMServer, redirect: str
) -> None:
    llm_server.script("beta", Reply(status=500))  # a warning, progress lines, debug logs: all to stderr
    code, proc = moa_status(f"{MOA} ask -v {shlex.join(LINEUP)} q {redirect}", moa_env)
    assert code == 0
    assert proc.stdout == "Answer from judge.\n"


def test_closed_stdin_reads_as_empty(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    code, proc = moa_status(f"{MOA} ask -q {shlex.join(LINEUP)} q <&-", moa_env)
    assert code == 0 and proc.stdout == "Answer from judge.\n" and proc.stderr == ""
    asked = len(llm_server.requests)
    code, proc = moa_status(f"{MOA} chat {shlex.join(LINEUP)} <&-", moa_env)
    assert code == 0 and proc.stdout == ""
    assert_clean(proc.stderr)
    code, proc = moa_status(f"{MOA} <&-", moa_env)  # bare moa with nothing to read: no prompt
    assert code == 2 and proc.stderr.startswith("moa: error: no prompt")
    assert len(llm_server.requests) == asked


# ----------------------------------------------------------------------- signals


def start_slow_turn(moa_env: dict[str, str], llm_server: FakeLLMServer, *args: str) -> subprocess.Popen[str]:
    """A turn whose two references take ~25 s; returns once both calls are open (streamed, or
    asked for whole with -q)."""
    llm_server.script("alpha", Reply(text="word " * 500, token_delay=0.05))
    llm_server.script("beta", Reply(text="word " * 500, token_delay=0.05))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", *args],
        env=moa_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while llm_server.active_requests < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if llm_server.active_requests < 2:
        proc.kill()
        pytest.fail(f"the turn never started: {proc.communicate()}")
    return proc


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=10)
    finally:
        proc.kill()


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGTERM, 143, "moa: terminated"),
        (signal.SIGHUP, 129, "moa: hung up"),
        (signal.SIGINT, 130, "moa: interrupted"),
    ],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_signal_cancels_the_turn_and_closes_every_stream(
    moa_env: dict[str, str], llm_server: FakeLLMServer, signum: int, code: int, line: str
) -> None:
    proc = start_slow_turn(moa_env, llm_server, "ask", "-q", *LINEUP, "q")
    out, err = stop(proc, signum)
    assert proc.returncode == code
    assert out == "" and err == line + "\n"
    assert llm_server.wait_until_idle(timeout=3)
    assert len(llm_server.requests) == 2 and all(r.disconnected for r in llm_server.requests)
    assert llm_server.requests_for("judge") == []


def test_json_interrupted_prints_the_error_object(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    proc = start_slow_turn(moa_env, llm_server, "ask", "--json", "-q", *LINEUP, "q")
    out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130
    assert json.loads(out) == {"error": "interrupted", "exit_code": 130}
    assert err == "moa: interrupted\n"


def test_json_terminated_prints_the_error_object(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    proc = start_slow_turn(moa_env, llm_server, "ask", "--json", "-q", *LINEUP, "q")
    out, _ = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143
    assert json.loads(out) == {"error": "terminated", "exit_code": 143}


def test_sigterm_in_chat_line_mode(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="word " * 500, token_delay=0.05))
    llm_server.script("beta", Reply(text="word " * 500, token_delay=0.05))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "chat", *LINEUP],
        env=moa_env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("q\n")
    proc.stdin.flush()  # stdin stays open: the run is stopped by the signal, not by end of input
    deadline = time.monotonic() + 20
    while llm_server.active_streams < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert llm_server.active_streams == 2
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert_clean(err)
    assert err.splitlines()[-1] == "moa: terminated"
    assert llm_server.wait_until_idle(timeout=3)
    assert all(r.disconnected for r in llm_server.requests)


def test_bytes_that_are_not_text_in_piped_chat_become_replacement_characters(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    """A stray Latin-1 byte under a strict locale: the turn is asked (with U+FFFD), so is the next."""
    proc = subprocess.run(
        [sys.executable, "-m", "moa_cli", "chat", "-r", "alpha", "-a", "judge"],
        input=b"caf\xe9\nsecond\n",
        capture_output=True,
        env={**moa_env, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r.last_user for r in llm_server.requests_for("alpha")] == ["caf\ufffd", "second"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_during_a_line_mode_turn_cancels_it_with_its_code(
    moa_env: dict[str, str], llm_server: FakeLLMServer, signum: int, code: int
) -> None:
    llm_server.set_default("alpha", Reply(latency=5))
    child = subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "chat", "-r", "alpha", "-a", "judge"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=moa_env, cwd=ROOT,
    )  # fmt: skip
    assert child.stdin is not None
    child.stdin.write(b"one\ntwo\n")
    child.stdin.close()
    deadline = time.monotonic() + 15
    while not llm_server.requests_for("alpha") and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signum)
    child.wait(timeout=15)
    assert child.stderr is not None and child.stdout is not None
    err = child.stderr.read()
    child.stderr.close()
    child.stdout.close()
    assert child.returncode == code, err
    assert b"Traceback" not in err and b"RuntimeError" not in err
    assert llm_server.wait_until_idle(5) and llm_server.requests_for("alpha")[0].disconnected
