"""The fault matrix of issue 7, run through the CLI's own dispatch (in-process; the secrets
test in a real process) against the project's fake server over real HTTP.

Each upstream fault hits one reference or the aggregator, under `moa ask` and `moa ask
--json`; the exit code, stdout and the stderr lines are pinned. (Piped `moa chat` is
covered with the REPL's tests.) Then the secrets test: a server that echoes the key back
in its 401 body never gets it printed, in any output or log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha,beta", "-a", "judge", "--max-tokens", "40"]
TEXT = "one two three four five six"


@dataclass(frozen=True)
class Fault:
    name: str
    reply: Reply
    kind: str | None  # None: not a failure
    reason: str  # in the warning / error line
    args: tuple[str, ...] = ()


FAULTS = [
    Fault(
        "clean close without [DONE]",
        Reply(text=TEXT, end_after=2),
        "cut_off",
        "stream ended before the answer was complete",
    ),
    Fault("socket closed mid-body", Reply(text=TEXT, cut_after=2), "connection", "connection lost mid-stream"),
    Fault("stall", Reply(text=TEXT, stall_after=2), "timeout", "timed out", ("--timeout", "0.5")),
    Fault(
        "error chunk mid-stream",
        Reply(text=TEXT, error_chunk_after=2, error_message="model overloaded"),
        "other",
        "error mid-stream: model overloaded",
    ),
    Fault("finish_reason length", Reply(text=TEXT, finish_reason="length"), None, ""),
]


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("json_mode", [False, True], ids=["ask", "ask-json"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_fault_in_a_reference(moa, llm_server: FakeLLMServer, fault: Fault, json_mode: bool) -> None:
    llm_server.script("alpha", fault.reply)
    args = ["ask", *LINEUP, *fault.args, *(["--json"] if json_mode else []), "q"]
    proc = moa(args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in stderr_lines(proc) if line.startswith("moa: warning:")]
    system = llm_server.requests_for("judge")[0].system or ""
    if fault.kind is None:  # cut at max_tokens: kept, and said so in --json
        assert warnings == []
        assert "one two three" in system
    else:
        assert len(warnings) == 1, proc.stderr
        assert warnings[0].startswith("moa: warning: alpha (layer 1) left out: ")
        assert fault.reason in warnings[0]
        assert "one two" not in system  # a cut answer never reaches the aggregator
    if json_mode:
        data = json.loads(proc.stdout)
        assert data["answer"] == "Answer from judge." and data["finish_reason"] == "stop"
        alpha, beta = data["proposals"]
        assert alpha["error_kind"] == fault.kind and alpha["status"] is None
        assert beta["error_kind"] is None and beta["finish_reason"] == "stop"
        if fault.kind is None:
            assert alpha["finish_reason"] == "length" and alpha["text"] == TEXT
        else:
            assert alpha["text"] is None and fault.reason in alpha["error"]
    else:
        assert proc.stdout == "Answer from judge.\n"
        footer = stderr_lines(proc)[-1]
        if fault.kind is not None:
            word = {"cut_off": "cut off", "connection": "connection failed", "timeout": "timed out"}.get(
                fault.kind, "failed"
            )
            assert footer.endswith(f"(alpha {word})")
        assert "token limit" not in footer  # only the aggregator's finish reason is the answer's


@pytest.mark.parametrize("json_mode", [False, True], ids=["ask", "ask-json"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_fault_in_the_aggregator(moa, llm_server: FakeLLMServer, fault: Fault, json_mode: bool) -> None:
    llm_server.script("judge", fault.reply)
    args = ["ask", *LINEUP, *fault.args, *(["--json"] if json_mode else []), "q"]
    proc = moa(args)
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    if fault.kind is None:  # an answer cut at max_tokens is an answer, and the footer says so
        assert proc.returncode == 0, proc.stderr
        if json_mode:
            data = json.loads(proc.stdout)
            assert data["answer"] == TEXT and data["finish_reason"] == "length"
        else:
            assert proc.stdout == TEXT + "\n"
            assert lines[-1].endswith("answer cut at the token limit (max_tokens 40)")
        return
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in lines if line.startswith("moa: error:")]
    assert len(errors) == 1 and errors[0].startswith("moa: error: the aggregator judge failed: ")
    assert fault.reason in errors[0]
    assert not any("tokens ·" in line for line in lines)  # no footer for a failed turn
    if json_mode:
        data = json.loads(proc.stdout)
        assert data["exit_code"] == 1 and data["error_kind"] == fault.kind and data["status"] is None
        assert fault.reason in data["error"]
        assert "incomplete" not in proc.stderr  # nothing of the answer was printed
    else:
        # The part that streamed is there, and stderr says it is not a whole answer.
        assert proc.stdout == "one two \n"
        notice = [line for line in lines if "incomplete" in line]
        assert notice == ["moa: the answer above is incomplete: the aggregator judge failed before it finished"]
        assert lines.index(notice[0]) < lines.index(errors[0])


def test_an_endless_stream_is_cut_past_max_tokens(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="la ", endless=True))
    proc = moa(["ask", *LINEUP, "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response" and "far past max_tokens" in alpha["error"]
    assert llm_server.wait_until_idle(timeout=3.0)


def test_a_slow_endless_stream_is_bounded_by_the_timeout(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(text="la ", endless=True, token_delay=0.05))
    proc = moa(["ask", *LINEUP, "--max-tokens", "500", "--timeout", "0.5", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "timeout" and alpha["seconds"] < 2


def test_an_html_error_page_is_reduced_to_its_status_and_title(moa, llm_server: FakeLLMServer) -> None:
    llm_server.script("alpha", Reply(status=502, html=True, error_message="Bad \x1b[31mGateway"))
    proc = moa(["ask", *LINEUP, "q"])
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in stderr_lines(proc) if "warning" in line]
    assert warning == "moa: warning: alpha (layer 1) left out: HTTP 502: HTML page: 502 Bad Gateway"
    assert "\x1b" not in proc.stderr and "<" not in proc.stderr


KEY = "sk-echoed-secret-0123456789abcdef"


@pytest.mark.parametrize("where", ["reference", "aggregator"])
def test_a_key_echoed_by_the_server_is_never_printed(cli, moa, llm_server: FakeLLMServer, where: str) -> None:
    reply = Reply(status=401, error_message="Incorrect API key provided: {api_key}. See the docs.")
    for model in ("alpha", "beta") if where == "reference" else ("judge",):
        llm_server.set_default(model, reply)
    outputs = []
    # In-process for speed; the last one in a fresh process, where nothing was registered before.
    for extra, run in (([], moa), (["--json"], moa), (["-v"], moa), (["-v", "--json"], cli)):
        proc = run(["ask", *LINEUP, *extra, "q"], env={"TOGETHER_API_KEY": KEY})
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        assert "Incorrect API key provided: ****" in proc.stderr
        if "--json" in extra:
            data = json.loads(proc.stdout)
            assert data["error_kind"] == "auth" and data["status"] == 401
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in llm_server.requests)  # it was sent
    for output in outputs:
        assert KEY not in output
        assert KEY[:12] not in output
