"""The fault matrix of issue 7, run through the CLI's own dispatch (in-process; the secrets
test in a real process) against the project's fake server over real HTTP.

Each upstream fault hits one reference or the aggregator, under `moa ask` and `moa ask
--json`; the exit code, stdout and the stderr lines are pinned. (Piped `moa chat` is
covered with the REPL's tests.) Then the secrets test: a server that echoes the key back
in its 401 body never gets it printed, in any output or log.
"""

from __future__ import annotations

import functools
import json
import tracemalloc
import zlib
from dataclasses import dataclass

import pytest

from tests.fakes.helpers import references_in
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
    system = references_in(llm_server.requests_for("judge")[0])
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


OPENAI_FAULTS = [*FAULTS, Fault("TCP reset", Reply(text=TEXT, reset_after=2), "connection", "reset by the server")]


@pytest.mark.parametrize("fault", OPENAI_FAULTS, ids=[f.name for f in OPENAI_FAULTS])
def test_the_same_faults_through_an_openai_compatible_provider(
    moa, llm_server: FakeLLMServer, moa_home, fault: Fault
) -> None:
    """The openai SDK 3.x runs on httpx2, not httpx: its transport errors must map to the same kinds
    (a reset was "unexpected error: ReadError:" before)."""
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    llm_server.script("alpha", fault.reply)
    lineup = ["-r", "fakeai:alpha,fakeai:beta", "-a", "fakeai:judge", "--max-tokens", "40"]
    proc = moa(["ask", *lineup, *fault.args, "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == fault.kind, alpha
    assert fault.reason in (alpha["error"] or ""), alpha
    assert "unexpected error" not in proc.stderr


@pytest.mark.parametrize("provider", ["together", "openai"])
def test_a_huge_error_body_is_cut_not_read_whole(moa, llm_server: FakeLLMServer, moa_home, provider: str) -> None:
    """A 500 whose body is 192 MiB: the SDK would read it all to build the message; moa's
    transport stops at 64 KiB and drops the connection, so the server cannot send it all."""
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    part = b"x" * 65536
    parts = 3072
    llm_server.script("alpha", Reply(status=500, raw=[part] * parts, raw_content_type="application/json"))
    prefix = "fakeai:" if provider == "openai" else ""
    lineup = ["-r", f"{prefix}alpha,{prefix}beta", "-a", f"{prefix}judge"]
    proc = moa(["ask", *lineup, "--retries", "0", "--json", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["status"] == 500 and alpha["error_kind"] == "other" and alpha["error"].endswith("…"), alpha
    assert len(alpha["error"]) < 400  # one line, cut
    llm_server.wait_until_idle(timeout=10)
    sent = llm_server.requests_for("alpha")[0].raw_parts_sent
    assert sent < parts // 4, sent  # what the socket buffers held, not the whole body


@pytest.mark.parametrize("provider", ["together", "openai"])
def test_a_proxy_from_the_environment_is_used(cli, llm_server: FakeLLMServer, moa_env, moa_home, provider: str) -> None:
    """HTTP_PROXY names the fake server; the upstream's own host does not resolve, so only a
    request sent through the proxy is answered (moa's own transport must not shut httpx's
    environment proxies out), and the body caps still hold there."""
    (moa_home / "config.toml").write_text(
        '[providers.fakeai]\nkind = "openai"\nbase_url = "http://upstream.invalid/v1"\n'
    )
    env = {**moa_env, "TOGETHER_BASE_URL": "http://upstream.invalid", "HTTP_PROXY": llm_server.base_url, "NO_PROXY": ""}
    prefix = "fakeai:" if provider == "openai" else ""
    llm_server.script("beta", Reply(status=500, raw=[b"x" * 65536] * 64, raw_content_type="application/json"))
    proc = cli(["ask", "-r", f"{prefix}alpha,{prefix}beta", "-a", f"{prefix}judge", "--json", "q"], env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "Answer from judge."
    assert out["proposals"][1]["status"] == 500 and len(out["proposals"][1]["error"]) < 400
    assert len(llm_server.proxied) == 3 and all(p.startswith("http://upstream.invalid/v1/") for p in llm_server.proxied)


@functools.cache
def _gzip_bomb(decoded_mib: int = 1024) -> list[bytes]:
    """A gzip body of `decoded_mib` MiB of zeros (about 1 MiB compressed), in 64 KiB parts."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    body = b"".join(packer.compress(block) for _ in range(decoded_mib)) + packer.flush()
    return [body[i : i + 65536] for i in range(0, len(body), 65536)]


@pytest.mark.parametrize("provider", ["together", "openai"])
def test_a_gzip_bomb_is_capped_as_it_decodes(moa, llm_server: FakeLLMServer, moa_home, provider: str) -> None:
    """A whole reference's JSON answer, gzip: 1 MiB on the wire, 1 GiB decoded. The cap counts
    decoded bytes, and decoding goes in small pieces: the call fails as bad_response, and the
    process never holds more than a few times the 16 MiB cap (before: the whole gigabyte)."""
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    bomb = Reply(raw=_gzip_bomb(), raw_content_type="application/json", headers={"content-encoding": "gzip"})
    llm_server.script("alpha", bomb)
    prefix = "fakeai:" if provider == "openai" else ""
    tracemalloc.start()
    try:
        proc = moa(["ask", "-q", "--json", "-r", f"{prefix}alpha,{prefix}beta", "-a", f"{prefix}judge", "q"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response", alpha
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"  # before: 162 MiB through together's httpx


def test_a_gzip_bomb_of_a_model_list_stops_at_the_cap(moa, llm_server: FakeLLMServer, moa_home) -> None:
    """`moa models` reads a provider's model list whole: 1 MiB of gzip on the wire, 1 GiB decoded.
    The 16 MiB cap counts decoded bytes (before, it counted the compressed ones: all of it, a
    3.3 GB peak for the two providers' lists), and the cut list is one warning line each."""
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    llm_server.models_reply = Reply(
        raw=_gzip_bomb(), raw_content_type="application/json", headers={"content-encoding": "gzip"}
    )
    tracemalloc.start()
    try:
        proc = moa(["models", "--json"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("could not list") == 2 and "bad response from server" in proc.stderr
    assert peak < 128 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("provider", ["together", "openai"])
def test_a_body_that_is_not_in_its_encoding_is_a_bad_response(
    moa, llm_server: FakeLLMServer, moa_home, provider: str
) -> None:
    """`Content-Encoding: gzip` on a body that is not gzip, and a model list that is not UTF-8:
    bad_response with the reason, never "unexpected error"."""
    (moa_home / "config.toml").write_text(
        f'[providers.fakeai]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    llm_server.script(
        "alpha",
        Reply(raw=[b'{"not": "gzip"}'], raw_content_type="application/json", headers={"content-encoding": "gzip"}),
    )
    prefix = "fakeai:" if provider == "openai" else ""
    proc = moa(["ask", "-q", "--json", "-r", f"{prefix}alpha,{prefix}beta", "-a", f"{prefix}judge", "q"])
    assert proc.returncode == 0, proc.stderr
    alpha = json.loads(proc.stdout)["proposals"][0]
    assert alpha["error_kind"] == "bad_response" and "not valid gzip" in alpha["error"], alpha
    llm_server.models_reply = Reply(raw=[b"\x8b\xff not utf-8"], raw_content_type="application/json")
    listed = moa(["models", "--json"])
    assert listed.returncode == 0 and "unexpected error" not in listed.stderr, listed.stderr
    assert "could not list" in listed.stderr and "bad response from server" in listed.stderr
