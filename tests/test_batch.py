"""`moa batch` against the fake server: each judge's format byte for byte, resuming, limits.

The expected files are written out here from the judges' own formats, not from moa's code:
alpaca_eval's model_outputs.json, FastChat llm_judge's model_answer JSONL (as
gen_api_answer.py writes it: `json.dumps(ans)` per line, then sorted by question_id) and
FLASK's model_output JSONL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moa_cli import batch
from tests.conftest import ROOT
from tests.fakes.helpers import asked, without_references
from tests.fakes.llm_server import FakeLLMServer, Reply

LINEUP = ["-r", "alpha", "-a", "judge"]


def answers_by_prompt(server: FakeLLMServer, model: str = "judge") -> dict[str, str]:
    """What the aggregator answered each prompt (its last user message)."""
    return {asked(r): r.reply.text_for(model) for r in server.requests_for(model) if r.reply and asked(r)}


def distinct_answers(server: FakeLLMServer, n: int, model: str = "judge") -> None:
    server.script(model, *[Reply(text=f"Answer number {i}.") for i in range(n)])


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- AlpacaEval


ALPACA_INPUT = """[
  {"dataset": "helpful_base", "instruction": "What is 2+2?"},
  {"dataset": "koala", "instruction": "Caf\\u00e9 \\ud83d\\ude00 with trailing spaces  \\t", "datasplit": "eval"},
  {"dataset": "oasst", "instruction": "Line one\\r\\nLine two\\n"}
]
"""


def test_alpaca_output_is_alpaca_evals_model_outputs(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "alpaca_eval.json", ALPACA_INPUT)
    out = tmp_path / "results" / "moa-test" / "model_outputs.json"
    distinct_answers(llm_server, 3)
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "2"])
    assert proc.returncode == 0, proc.stderr
    answers = answers_by_prompt(llm_server)
    a = [answers["What is 2+2?"], answers["Café 😀 with trailing spaces  \t"], answers["Line one\r\nLine two\n"]]
    # alpaca_eval's format: the input objects, unchanged and in order, plus output and generator
    # (named after results/NAME/model_outputs.json); JSON with ASCII escapes.
    expected = f"""[
  {{
    "dataset": "helpful_base",
    "instruction": "What is 2+2?",
    "output": "{a[0]}",
    "generator": "moa-test"
  }},
  {{
    "dataset": "koala",
    "instruction": "Caf\\u00e9 \\ud83d\\ude00 with trailing spaces  \\t",
    "datasplit": "eval",
    "output": "{a[1]}",
    "generator": "moa-test"
  }},
  {{
    "dataset": "oasst",
    "instruction": "Line one\\r\\nLine two\\n",
    "output": "{a[2]}",
    "generator": "moa-test"
  }}
]
"""
    assert out.read_bytes() == expected.encode("ascii")
    # alpaca_eval inner-joins on instruction: every one must match the input's exactly.
    assert [r["instruction"] for r in json.loads(out.read_text())] == [
        r["instruction"] for r in json.loads(ALPACA_INPUT)
    ]
    assert sorted(a) == [f"Answer number {i}." for i in range(3)]
    assert "moa: wrote 3 answers" in proc.stderr


def test_alpaca_jsonl_input_is_detected(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "in.jsonl", '{"instruction": "one"}\n\n{"instruction": "two"}\n')
    out = tmp_path / "out.json"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--generator", "my-moa"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == [
        {"instruction": "one", "output": "Answer from judge.", "generator": "my-moa"},
        {"instruction": "two", "output": "Answer from judge.", "generator": "my-moa"},
    ]


# ---------------------------------------------------------------------------- MT-Bench


MT_INPUT = (
    '{"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Rewrite it in limericks."]}\n'
    '{"question_id": 2, "category": "math", "turns": ["What is 3*7?", "And times 2?"]}\n'
    '{"question_id": 100, "category": "unlisted", "turns": ["Hi"]}\n'
)


def test_mtbench_output_is_fastchats_model_answer(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "question.jsonl", MT_INPUT)
    out = tmp_path / "model_answer" / "moa-test.jsonl"
    distinct_answers(llm_server, 5)
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--fastchat-temperatures", "--parallel", "3"])
    assert proc.returncode == 0, proc.stderr
    ans = answers_by_prompt(llm_server)
    # FastChat: one json.dumps line per question, sorted by question_id; model_id is the file's stem.
    masked = re.sub(r'"answer_id": "[2-9A-HJ-NP-Za-km-z]{22}"', '"answer_id": "ID"', out.read_text())
    masked = re.sub(r'"tstamp": \d+\.\d+', '"tstamp": T', masked)
    expected = (
        f'{{"question_id": 2, "answer_id": "ID", "model_id": "moa-test", "choices": [{{"index": 0, "turns": '
        f'["{ans["What is 3*7?"]}", "{ans["And times 2?"]}"]}}], "tstamp": T}}\n'
        f'{{"question_id": 81, "answer_id": "ID", "model_id": "moa-test", "choices": [{{"index": 0, "turns": '
        f'["{ans["Write a blog post."]}", "{ans["Rewrite it in limericks."]}"]}}], "tstamp": T}}\n'
        f'{{"question_id": 100, "answer_id": "ID", "model_id": "moa-test", "choices": [{{"index": 0, "turns": '
        f'["{ans["Hi"]}"]}}], "tstamp": T}}\n'
    )
    assert masked == expected
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({line["answer_id"] for line in lines}) == 3
    assert all(abs(line["tstamp"] - time.time()) < 60 for line in lines)

    # The second turn is asked with the first turn and its answer, by every model.
    for model in ("alpha", "judge"):
        second = next(r for r in llm_server.requests_for(model) if asked(r) == "And times 2?")
        convo = [(m["role"], m["content"]) for m in without_references(second.messages) if m["role"] != "system"]
        first_answer = next(
            r.reply.text_for(model) for r in llm_server.requests_for(model) if asked(r) == "What is 3*7?"
        )
        assert convo == [("user", "What is 3*7?"), ("assistant", ans["What is 3*7?"]), ("user", "And times 2?")]
        assert first_answer  # each model saw the aggregator's answer, not its own
    # FastChat's per-category temperatures (0.7 for a category it does not list).
    temperatures = {asked(r): r.body["temperature"] for r in llm_server.requests}
    assert temperatures["Write a blog post."] == 0.7 and temperatures["What is 3*7?"] == 0.0
    assert temperatures["Hi"] == 0.7


def test_mtbench_generator_unlike_the_file_name_is_a_warning(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "question.jsonl", '{"question_id": 1, "category": "math", "turns": ["1+1?"]}\n')
    out = tmp_path / "answers.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--generator", "moa-v2"])
    assert proc.returncode == 0, proc.stderr
    assert "FastChat names a model by its answer file's name ('answers')" in proc.stderr
    assert json.loads(out.read_text())["model_id"] == "moa-v2"


# ---------------------------------------------------------------------------- FLASK and jsonl


def test_flask_output_joins_on_question_id(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(
        tmp_path / "flask_evaluation.jsonl",
        '{"idx": 7, "instruction": "Rewrite: hi", "answer": "Hello", "metrics": ["Conciseness"]}\n'
        '{"idx": 3, "text": "Name a prime \\u00e9"}\n',
    )
    out = tmp_path / "flask-moa.jsonl"
    distinct_answers(llm_server, 2)
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "1"])
    assert proc.returncode == 0, proc.stderr
    # FLASK's model_output/outputs/*.jsonl: question_id (the input's idx), text, model_id; input order.
    assert out.read_bytes() == (
        b'{"question_id": 7, "text": "Answer number 0.", "model_id": "flask-moa"}\n'
        b'{"question_id": 3, "text": "Answer number 1.", "model_id": "flask-moa"}\n'
    )


def test_jsonl_prompts_and_messages(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(
        tmp_path / "prompts.jsonl",
        '{"id": "a", "prompt": "Why?"}\n'
        '{"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},'
        ' {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]}\n',
    )
    out = tmp_path / "out.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP])
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["id"], x["answer"], x["error"]) for x in lines] == [
        ("a", "Answer from judge.", None),
        ("b", "Answer from judge.", None),
    ]
    assert [p["model"] for p in lines[0]["proposals"]] == ["alpha"]
    assert lines[0]["usage"]["total_tokens"] > 0 and lines[0]["tokens"] == lines[0]["usage"]["total_tokens"]
    assert "cost" in lines[0] and lines[0]["aggregator"] == "judge" and lines[0]["finish_reason"] == "stop"
    second = next(r for r in llm_server.requests_for("alpha") if asked(r) == "Bye")
    convo = [(m["role"], m["content"]) for m in second.messages]
    assert convo == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")]


# ---------------------------------------------------------------------------- bad input: exit 2


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ('{"foo": 1}\n', [], "cannot tell the format"),
        ('{"prompt": "a"}\n{"prompt": \n', [], "line 2: not valid JSON"),
        ('{"prompt": ""}\n', [], "'prompt' is empty"),
        ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', [], "id 1 appears twice"),
        ('{"prompt": "a"}\n', ["--format", "csv"], "unknown format 'csv'"),
        ('{"prompt": "a"}\n', ["--ids", "0,9"], "no item with id 9"),
        ('{"question_id": 1, "turns": []}\n', [], "'turns' must be a list"),
        ('{"prompt": "a"}\n', ["--fastchat-temperatures"], "MT-Bench input only"),
    ],
)
def test_bad_input_exits_2(
    moa, llm_server: FakeLLMServer, tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    source = write(tmp_path / "in.jsonl", text)
    proc = moa(["batch", str(source), "-o", str(tmp_path / "out.jsonl"), *LINEUP, *args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert llm_server.requests == [] and not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------------- failures and resuming


def prompts_file(tmp_path: Path, n: int, name: str = "in.jsonl") -> Path:
    return write(tmp_path / name, "".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(n)))


def test_a_failed_item_writes_no_file_and_a_rerun_retries_only_it(
    moa, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    source, out = prompts_file(tmp_path, 3), tmp_path / "out.jsonl"
    llm_server.script("judge", Reply(), Reply(status=500, error_message="boom"), Reply())
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "1"])
    assert proc.returncode == 1, proc.stderr
    assert not out.exists()
    assert "1 of 3 items failed" in proc.stderr and "1: " in proc.stderr and "boom" in proc.stderr
    assert f"moa batch {source}" in proc.stderr  # the command that resumes
    manifest = json.loads(batch.manifest_path(out).read_text())
    assert manifest["status"] == "failed" and manifest["output_written"] is False
    assert manifest["failures"][0]["id"] == "1" and manifest["failures"][0]["status"] == 500
    assert manifest["counts"] == {"items": 3, "answered": 2, "resumed": 0, "failed": 1, "not_run": 0}

    llm_server.requests.clear()
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "1"])
    assert proc.returncode == 0, proc.stderr
    assert [asked(r) for r in llm_server.requests] == ["prompt 1", "prompt 1"]  # alpha, judge: only the failed item
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 2]
    assert "(2 from an earlier run)" in proc.stderr
    assert json.loads(batch.manifest_path(out).read_text())["status"] == "done"


def test_allow_failures_writes_fastchats_error_marker(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(
        tmp_path / "question.jsonl",
        '{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n{"question_id": 2, "category": "math", "turns": ["c"]}\n',
    )
    out = tmp_path / "moa.jsonl"
    # Question 1: the first turn is answered, the second fails; question 2 is answered.
    llm_server.script("judge", Reply(text="first"), Reply(status=500), Reply(text="third"))
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "1", "--allow-failures"])
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 items failed, written with $ERROR$" in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["choices"][0]["turns"] for line in lines] == [["first", "$ERROR$"], ["third"]]
    assert "None" not in out.read_text()
    assert json.loads(batch.manifest_path(out).read_text())["failures"][0]["id"] == "1"


def test_allow_failures_writes_an_empty_alpaca_output(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "in.json", '[{"instruction": "x"}, {"instruction": "y"}]')
    out = tmp_path / "model_outputs.json"
    llm_server.script("alpha", Reply(status=401), Reply())
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "-p", "1", "--allow-failures", "--generator", "g"])
    assert proc.returncode == 0, proc.stderr
    assert [r["output"] for r in json.loads(out.read_text())] == ["", "Answer from judge."]


def test_a_changed_setting_is_refused_unless_restart(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 2), tmp_path / "out.jsonl"
    assert moa(["batch", str(source), "-o", str(out), *LINEUP]).returncode == 0
    llm_server.requests.clear()
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "-t", "0.2"])
    assert proc.returncode == 2
    assert "made with a different temperature" in proc.stderr and "--restart" in proc.stderr
    assert llm_server.requests == []
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "-t", "0.2", "--restart"])
    assert proc.returncode == 0, proc.stderr
    assert len(llm_server.requests) == 4 and {r.body["temperature"] for r in llm_server.requests} == {0.2}
    # The same settings again: nothing to ask, the file written again from what was kept.
    llm_server.requests.clear()
    before = out.read_bytes()
    out.unlink()
    assert moa(["batch", str(source), "-o", str(out), *LINEUP, "-t", "0.2"]).returncode == 0
    assert llm_server.requests == [] and out.read_bytes() == before


def test_the_same_models_on_another_endpoint_are_another_run(
    moa, llm_server: FakeLLMServer, tmp_path: Path, moa_home: Path
) -> None:
    """-r/-a unchanged, but the default provider now points elsewhere: refused, not mixed."""
    source, out = prompts_file(tmp_path, 2), tmp_path / "out.jsonl"
    assert moa(["batch", str(source), "-o", str(out), *LINEUP, "--limit", "1"]).returncode == 0
    (moa_home / "config.toml").write_text(f'[providers.alt]\nkind = "openai"\nbase_url = "{llm_server.base_url}/v1"\n')
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP], env={"MOA_DEFAULT_PROVIDER": "alt"})
    assert proc.returncode == 2 and "routes" in proc.stderr, proc.stderr


def test_limit_and_ids_select_items(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = prompts_file(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    assert moa(["batch", str(source), "-o", str(out), *LINEUP, "--limit", "2"]).returncode == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [0, 1]
    assert moa(["batch", str(source), "-o", str(out), *LINEUP, "--ids", "4,1,3", "--limit", "2"]).returncode == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [1, 3]
    judged = [asked(r) for r in llm_server.requests_for("judge")]
    assert sorted(judged) == ["prompt 0", "prompt 1", "prompt 3"]  # item 1 was not asked twice


def test_a_torn_last_line_in_the_sidecar_is_dropped(tmp_path: Path) -> None:
    header = {"moa_batch": 1, "fingerprint": "f", "parts": {}}
    car = batch.Sidecar(tmp_path / "x.moa-progress", header)
    assert car.open(restart=False) == {}
    car.append(batch.Outcome("1", True, ["one"]))
    car.close()
    with open(car.path, "ab") as file:
        file.write(b'{"id": "2", "ok": tr')  # killed mid-write
    car = batch.Sidecar(car.path, header)
    assert list(car.open(restart=False)) == ["1"]
    car.append(batch.Outcome("3", True, ["three"]))
    car.close()
    car = batch.Sidecar(car.path, header)
    assert list(car.open(restart=False)) == ["1", "3"]
    car.close()


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    header = {"moa_batch": 1, "fingerprint": "f", "parts": {}}
    first = batch.Sidecar(tmp_path / "x.moa-progress", header)
    first.open(restart=False)
    with pytest.raises(batch.BatchInputError, match="another moa batch"):
        batch.Sidecar(first.path, header).open(restart=False)
    first.close()


# ---------------------------------------------------------------------------- real processes: kill, signals


def start(moa_env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "moa_cli", "batch", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=moa_env, cwd=ROOT,
    )  # fmt: skip


def wait_for_records(sidecar: Path, count: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.exists() and sidecar.read_bytes().count(b"\n") >= count + 1:  # + the header
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no progress")


def done_ids(sidecar: Path) -> list[str]:
    lines = sidecar.read_bytes().split(b"\n")[1:]
    return [json.loads(line)["id"] for line in lines if line.strip() and json.loads(line)["ok"]]


def test_resume_after_kill_9_loses_nothing_and_asks_nothing_twice(
    cli, moa_env: dict[str, str], llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    n = 30  # enough that a loaded machine cannot finish them all before the kill lands
    source, out = prompts_file(tmp_path, n), tmp_path / "out.jsonl"
    llm_server.default_reply = Reply(latency=0.1)
    args = [str(source), "-o", str(out), *LINEUP, "--parallel", "3"]
    proc = start(moa_env, args)
    try:
        wait_for_records(batch.sidecar_path(out), 4, proc)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    llm_server.wait_until_idle(timeout=5)
    assert not out.exists()
    kept = done_ids(batch.sidecar_path(out))
    assert 4 <= len(kept) < n and len(set(kept)) == len(kept)
    first_run = len(llm_server.requests)

    llm_server.default_reply = Reply()
    proc2 = cli(["batch", *args])
    assert proc2.returncode == 0, proc2.stderr
    second = llm_server.requests[first_run:]
    asked_again = {asked(r) for r in second}
    assert not asked_again & {f"prompt {i}" for i in kept}  # nothing answered before is asked again
    assert asked_again == {f"prompt {i}" for i in range(n) if str(i) not in kept}
    assert len(second) == 2 * (n - len(kept))  # one reference and the aggregator, once each
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == list(range(n)) and all(x["answer"] for x in lines)


def test_sigterm_keeps_the_finished_items_and_exits_143(
    cli, moa_env: dict[str, str], llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    source, out = prompts_file(tmp_path, 8), tmp_path / "out.jsonl"
    llm_server.default_reply = Reply(latency=0.15)
    proc = start(moa_env, [str(source), "-o", str(out), *LINEUP, "--parallel", "2"])
    wait_for_records(batch.sidecar_path(out), 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 143, stderr
    assert "kept in" in stderr and "run the same command to go on" in stderr and "Traceback" not in stderr
    assert llm_server.wait_until_idle(timeout=2)  # every stream was closed
    assert not out.exists()
    assert json.loads(batch.manifest_path(out).read_text())["status"] == "interrupted"
    llm_server.default_reply = Reply()
    assert cli(["batch", str(source), "-o", str(out), *LINEUP]).returncode == 0
    assert len(out.read_text().splitlines()) == 8


# ---------------------------------------------------------------------------- --rps and --parallel


def test_rps_caps_the_request_rate(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 8), tmp_path / "out.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "8", "--rps", "20"])
    assert proc.returncode == 0, proc.stderr
    starts = sorted(r.received_at for r in llm_server.requests)
    assert len(starts) == 16
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    # 15 gaps of 1/20 s: 0.75 s (unlimited, these 16 calls take ~0.1 s). The bound leaves room
    # for a loaded machine delaying the first arrival, which shortens the measured span.
    assert rate <= 20 * 1.5, rate
    # No burst: any half second holds about 10 starts, give or take the network's jitter.
    busiest = max(sum(1 for t in starts if s <= t < s + 0.5) for s in starts)
    assert busiest <= 0.5 * 20 + 3, starts


def test_parallel_bounds_the_items_in_flight(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 6), tmp_path / "out.jsonl"
    llm_server.default_reply = Reply(latency=0.15)
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--parallel", "2"])
    assert proc.returncode == 0, proc.stderr
    # One reference, then the aggregator: each item has one request in flight at a time.
    events = sorted(
        [(r.received_at, 1) for r in llm_server.requests] + [(r.finished_at or 0.0, -1) for r in llm_server.requests],
        key=lambda e: (e[0], e[1]),
    )
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 2


def test_plain_progress_lines_when_stderr_is_not_a_terminal(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 3), tmp_path / "out.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP])
    assert proc.returncode == 0, proc.stderr
    assert "moa: batch: 0/3 done" in proc.stderr and "moa: batch: 3/3 done" in proc.stderr
    quiet = moa(["batch", str(source), "-o", str(tmp_path / "q.jsonl"), *LINEUP, "-q"])
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_side_files_do_not_look_like_fastchat_answers(tmp_path: Path) -> None:
    out = tmp_path / "model_answer" / "moa.jsonl"
    # FastChat's load_model_answers reads every *.jsonl in the directory as a model.
    assert not batch.sidecar_path(out).name.endswith(".jsonl")
    assert not batch.manifest_path(out).name.endswith(".jsonl")
    assert batch.default_generator(tmp_path / "results" / "moa-x" / "model_outputs.json") == "moa-x"
    assert batch.default_generator(out) == "moa"
    assert os.path.dirname(batch.sidecar_path(out)) == str(out.parent)


def test_each_item_is_logged_as_one_conversation(
    moa, llm_server: FakeLLMServer, tmp_path: Path, moa_home: Path
) -> None:
    from moa_cli.store import Store, db_path, flush_all

    source = write(
        tmp_path / "question.jsonl",
        '{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n{"question_id": 2, "category": "math", "turns": ["c"]}\n',
    )
    proc = moa(["batch", str(source), "-o", str(tmp_path / "moa.jsonl"), *LINEUP, "--parallel", "2"])
    assert proc.returncode == 0, proc.stderr
    flush_all()
    with Store(db_path(moa_home), create=False) as store:
        turns = store.turns(limit=10)
    assert {t.source for t in turns} == {"batch"}
    conversations: dict[str, list[str]] = {}
    for turn in sorted(turns, key=lambda t: t.seq):
        conversations.setdefault(turn.conversation_id, []).append(turn.prompt)
    assert sorted(conversations.values()) == [["a", "b"], ["c"]]


def test_the_fingerprint_covers_every_setting_that_changes_an_answer() -> None:
    from moa_cli.settings import SPECS

    names = set(batch.answer_settings())
    assert {"references", "aggregator", "rounds", "temperature", "max_tokens", "seed", "system"} <= names
    assert names >= {n for n, spec in SPECS.items() if spec.lineup} - {"num_proc", "aggregator_prompt"}
    assert not names & {"num_proc", "timeout", "retries", "log", "max_cost"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-3.1-8b.jsonl", "llama-3.1-8b"),
        ("moa-v1.5.json", "moa-v1.5"),
        ("answers", "answers"),
        (".jsonl", ".jsonl"),
    ],
)
def test_the_default_generator_keeps_dots_in_the_name(tmp_path: Path, name: str, expected: str) -> None:
    from moa_cli.batch import default_generator

    assert default_generator(tmp_path / name) == expected
    assert default_generator(tmp_path / "moa-v1.5" / "model_outputs.json") == "moa-v1.5"


def test_outcomes_queued_behind_a_cancelled_write_are_kept_on_close(tmp_path: Path) -> None:
    """Ctrl-C while the sidecar's group fsync runs: the items answered meanwhile were paid
    for; close() writes them instead of dropping them."""
    import asyncio

    from moa_cli import batch as core

    sidecar = core.Sidecar(tmp_path / "p", {"moa_batch": core.SIDECAR_VERSION, "fingerprint": "f", "parts": {}})
    sidecar.open(restart=False)

    async def answered_then_cancelled() -> None:
        writes = [asyncio.create_task(sidecar.write(core.Outcome(str(i), True, ["x"]))) for i in range(20)]
        await asyncio.sleep(0)  # the first write is on its thread, the other 19 queued behind it
        for write in writes:
            write.cancel()
        await asyncio.gather(*writes, return_exceptions=True)

    asyncio.run(answered_then_cancelled())
    sidecar.close()
    again = core.Sidecar(tmp_path / "p", sidecar.header)
    assert sorted(again.open(restart=False), key=int) == [str(i) for i in range(20)]
    again.close()


# ---------------------------------------------------------------------------- --budget


def _priced(home: Path) -> None:
    (home / "config.toml").write_text(
        '[pricing."alpha"]\ninput = 1000\noutput = 1000\n[pricing."judge"]\ninput = 1000\noutput = 1000\n'
    )


def _worst_case_of_one_item(home: Path) -> float:
    """What `--budget` holds for one of prompts_file's items (pricing.worst_case, tested on its own)."""
    import asyncio

    from moa_cli.config import load_settings
    from moa_cli.recorder import price_book

    settings = load_settings(
        {"references": ["alpha"], "aggregator": "judge", "max_tokens": 100}, {"MOA_HOME": str(home)}
    )
    item = batch.Item("0", 0, ("prompt 0",), {})
    return batch.Budget(1.0, asyncio.run(price_book(settings))).worst_case(item, settings)


def test_budget_stops_before_an_item_that_might_not_fit(
    moa, llm_server: FakeLLMServer, moa_home: Path, tmp_path: Path
) -> None:
    _priced(moa_home)
    worst = _worst_case_of_one_item(moa_home)
    source, out = prompts_file(tmp_path, 3), tmp_path / "out.jsonl"
    args = ["batch", str(source), "-o", str(out), *LINEUP, "--max-tokens", "100", "--parallel", "1"]
    proc = moa([*args, "--budget", f"{worst / 2:.6f}"])
    assert proc.returncode == 1 and not out.exists()
    assert "--budget reached" in proc.stderr and "3 of 3 items not answered" in proc.stderr
    assert llm_server.requests == []  # nothing was spent
    manifest = json.loads(batch.manifest_path(out).read_text())
    assert manifest["budget"]["stopped"] is True and manifest["budget"]["spent_usd"] == 0
    # Items cost far less than their worst case: 2.5 worst cases answer all three, one at a time.
    proc = moa([*args, "--budget", f"{worst * 2.5:.6f}"])
    assert proc.returncode == 0, proc.stderr
    spent = json.loads(batch.manifest_path(out).read_text())["budget"]["spent_usd"]
    assert 0 < spent < worst


def test_budget_needs_a_price_for_every_model(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 2), tmp_path / "out.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--budget", "5"])
    assert proc.returncode == 2 and "--budget 5: cannot keep it" in proc.stderr and "no price for" in proc.stderr
    assert llm_server.requests == []
    proc = moa(["batch", str(source), "-o", str(out), *LINEUP, "--budget", "0"])
    assert proc.returncode == 2 and "--budget must be a number of USD more than 0" in proc.stderr


# ---------------------------------------------------------------------------- a degraded line-up


def test_a_reference_failing_on_every_item_is_degraded_exit_1(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 3), tmp_path / "out.jsonl"
    llm_server.set_default("beta", Reply(status=500, error_message="beta is down"))
    proc = moa(["batch", str(source), "-o", str(out), "-r", "alpha", "-r", "beta", "-a", "judge"])
    assert proc.returncode == 1, proc.stderr
    assert "3 of 3 items were answered without the whole line-up (beta failed on 3)" in proc.stderr
    assert "--allow-degraded" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    manifest = json.loads(batch.manifest_path(out).read_text())
    assert manifest["status"] == "degraded" and manifest["output_written"] is False
    assert manifest["degraded"]["items"] == 3 and manifest["degraded"]["by_member"] == {"beta failed": 3}
    assert manifest["degraded"]["list"][0]["answered_by"] == ["alpha", "judge"]
    assert manifest["failures"] == []
    # Each item records who answered, in the progress file.
    records = [json.loads(line) for line in batch.sidecar_path(out).read_text().splitlines()[1:]]
    assert all(r["answered_by"] == ["alpha", "judge"] and r["degraded"] == ["beta failed"] for r in records)


def test_allow_degraded_writes_the_output_and_still_reports(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 3), tmp_path / "out.jsonl"
    llm_server.set_default("beta", Reply(status=500))
    args = ["batch", str(source), "-o", str(out), "-r", "alpha", "-r", "beta", "-a", "judge"]
    proc = moa([*args, "--allow-degraded"])
    assert proc.returncode == 0, proc.stderr
    assert "moa: warning: 3 of 3 items were answered without the whole line-up (beta failed on 3)" in proc.stderr
    assert len(out.read_text().splitlines()) == 3
    manifest = json.loads(batch.manifest_path(out).read_text())
    assert manifest["degraded"]["by_member"] == {"beta failed": 3} and manifest["degraded"]["allowed"] is True


def test_a_rerun_asks_degraded_items_again_and_allow_degraded_keeps_them(
    moa, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    source, out = prompts_file(tmp_path, 2), tmp_path / "out.jsonl"
    args = ["batch", str(source), "-o", str(out), "-r", "alpha", "-r", "beta", "-a", "judge", "-p", "1"]
    llm_server.script("beta", Reply(), Reply(status=500))  # item 1 is degraded
    assert moa(args).returncode == 1
    llm_server.requests.clear()
    proc = moa([*args, "--allow-degraded"])  # kept as they are: nothing asked again
    assert proc.returncode == 0, proc.stderr
    assert llm_server.requests == [] and "1 of 2 items were answered without" in proc.stderr


def test_select_falling_back_is_degraded(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, out = prompts_file(tmp_path, 2), tmp_path / "out.jsonl"
    llm_server.set_default("judge", Reply(text="I like neither."))
    args = ["batch", str(source), "-o", str(out), "-r", "alpha", "-r", "beta", "-a", "judge", "--aggregation", "select"]
    proc = moa(args)
    assert proc.returncode == 1, proc.stderr
    manifest = json.loads(batch.manifest_path(out).read_text())
    assert manifest["degraded"]["by_member"] == {"judge: select fell back": 2}
