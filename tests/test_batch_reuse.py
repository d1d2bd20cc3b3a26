"""`moa batch --reuse-proposals`: re-run only the aggregator over an earlier run's proposals.

The fake server records every request, so "no reference is called again" is checked on the
wire: after the first run, it must see the new aggregator's calls and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from moa_cli import batch
from moa_cli.api import MoA
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter, Step
from moa_cli.types import Proposal, Usage
from tests.fakes.helpers import asked, home_env, references_in
from tests.fakes.llm_server import FakeLLMServer, Reply

FIRST = ["-r", "alpha,beta", "-a", "judge"]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def prompts_file(tmp_path: Path, n: int) -> Path:
    return write(
        tmp_path / "in.jsonl", "".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(n))
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def first_run(moa, server: FakeLLMServer, source: Path, out: Path, *args: str) -> None:
    """The paid run: distinct answers from each reference, so each item's proposals differ."""
    server.script("alpha", *[Reply(text=f"alpha answer {i}.") for i in range(10)])
    server.script("beta", *[Reply(text=f"beta answer {i}.") for i in range(10)])
    proc = moa(["batch", str(source), "-o", str(out), *FIRST, *args])
    assert proc.returncode == 0, proc.stderr
    server.requests.clear()


def test_only_the_aggregator_runs_over_the_kept_proposals(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, first = prompts_file(tmp_path, 3), tmp_path / "first.jsonl"
    first_run(moa, llm_server, source, first)
    kept = {x["id"]: x for x in lines(first)}
    llm_server.script("judge2", *[Reply(text=f"Judge two, answer {i}.") for i in range(3)])
    second = tmp_path / "second.jsonl"
    proc = moa(["batch", str(source), "-o", str(second), *FIRST[:2], "-a", "judge2", "--reuse-proposals", str(first)])
    assert proc.returncode == 0, proc.stderr

    # The server saw the new aggregator once per item, and no reference.
    assert [r.model for r in llm_server.requests] == ["judge2"] * 3
    for request in llm_server.requests:
        item = kept[int(asked(request).split()[-1])]
        texts = [p["text"] for p in item["proposals"]]
        assert len(texts) == 2 and all(text in references_in(request) for text in texts)
    answered = {asked(r): r.reply.text_for("judge2") for r in llm_server.requests}
    out = lines(second)
    assert [x["id"] for x in out] == [0, 1, 2]
    for x in out:
        assert x["answer"] == answered[f"prompt {x['id']}"] and x["aggregator"] == "judge2" and x["error"] is None
        assert x["proposals"] == kept[x["id"]]["proposals"]  # the stored ones, as they were
        # Tokens and cost are this run's: the aggregator's call alone.
        assert 0 < x["tokens"] == x["usage"]["total_tokens"] < kept[x["id"]]["tokens"]
    manifest = json.loads(batch.manifest_path(second).read_text())
    assert manifest["reuse_proposals"]["path"] == str(first) and manifest["reuse_proposals"]["kind"] == "jsonl output"


def test_aggregation_select_over_kept_proposals(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, first = prompts_file(tmp_path, 2), tmp_path / "first.jsonl"
    first_run(moa, llm_server, source, first)
    kept = {x["id"]: x for x in lines(first)}
    llm_server.script("picker", Reply(text="2"), Reply(text="Response 1."))
    second = tmp_path / "picked.jsonl"
    args = ["-a", "picker", "--aggregation", "select", "--reuse-proposals", str(first), "-p", "1"]
    proc = moa(["batch", str(source), "-o", str(second), *FIRST[:2], *args])
    assert proc.returncode == 0, proc.stderr
    assert [(r.model, r.body["max_tokens"]) for r in llm_server.requests] == [("picker", 8)] * 2
    out = lines(second)
    # Item 0: "2" picks beta's answer verbatim; item 1: "Response 1." picks alpha's.
    assert out[0]["answer"] == kept[0]["proposals"][1]["text"] and out[0]["answer"].startswith("beta")
    assert out[1]["answer"] == kept[1]["proposals"][0]["text"] and out[1]["answer"].startswith("alpha")


def test_items_missing_from_path_are_refused_before_any_call(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, first = prompts_file(tmp_path, 4), tmp_path / "first.jsonl"
    # Item 1 fails there (written with --allow-failures); items 2 and 3 are not run (--limit).
    llm_server.script("judge", Reply(), Reply(status=500))
    proc = moa(["batch", str(source), "-o", str(first), *FIRST, "--limit", "3", "-p", "1", "--allow-failures"])
    assert proc.returncode == 0, proc.stderr
    llm_server.requests.clear()
    out = tmp_path / "second.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *FIRST[:2], "-a", "judge2", "--reuse-proposals", str(first)])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "has no proposals for 2 of the 4 items selected (id 1, 3)" in proc.stderr
    assert llm_server.requests == [] and not out.exists() and not batch.sidecar_path(out).exists()
    # The items PATH has are fine.
    args = ["--reuse-proposals", str(first), "--ids", "0,2"]
    proc = moa(["batch", str(source), "-o", str(out), *FIRST[:2], "-a", "judge2", *args])
    assert proc.returncode == 0, proc.stderr
    assert [r.model for r in llm_server.requests] == ["judge2"] * 2


MT_INPUT = (
    '{"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Rewrite it in limericks."]}\n'
    '{"question_id": 2, "category": "math", "turns": ["What is 3*7?"]}\n'
)


def test_mtbench_reuses_every_turn_from_the_progress_file(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source = write(tmp_path / "question.jsonl", MT_INPUT)
    first = tmp_path / "moa.jsonl"
    first_run(moa, llm_server, source, first, "-p", "1")
    # FastChat's answer file holds only the answers: it cannot be reused, and the error says what can.
    out = tmp_path / "moa-judge2.jsonl"
    proc = moa(["batch", str(source), "-o", str(out), *FIRST[:2], "-a", "judge2", "--reuse-proposals", str(first)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds no proposals" in proc.stderr and ".moa-progress" in proc.stderr

    llm_server.script("judge2", *[Reply(text=f"Judge two, answer {i}.") for i in range(3)])
    progress = batch.sidecar_path(first)
    proc = moa(["batch", str(source), "-o", str(out), *FIRST[:2], "-a", "judge2", "--reuse-proposals", str(progress)])
    assert proc.returncode == 0, proc.stderr
    assert [r.model for r in llm_server.requests] == ["judge2"] * 3
    answered = {asked(r): r.reply.text_for("judge2") for r in llm_server.requests}
    by_id = {x["question_id"]: x["choices"][0]["turns"] for x in lines(out)}
    assert by_id == {
        2: [answered["What is 3*7?"]],
        81: [answered["Write a blog post."], answered["Rewrite it in limericks."]],
    }
    # Turn 2 is asked after turn 1 and its new answer, over turn 2's kept proposals.
    second = next(r for r in llm_server.requests if asked(r) == "Rewrite it in limericks.")
    convo = [(m["role"], m["content"]) for m in second.messages if m["role"] != "system"]
    assert convo[:2] == [("user", "Write a blog post."), ("assistant", answered["Write a blog post."])]
    kept = [json.loads(line) for line in progress.read_text().splitlines()[1:]]
    turn2 = next(o for o in kept if o["id"] == "81")["results"][1]["proposals"]
    assert all(p["text"] in references_in(second) for p in turn2)


def test_the_reuse_file_is_part_of_the_fingerprint(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, first = prompts_file(tmp_path, 3), tmp_path / "first.jsonl"
    first_run(moa, llm_server, source, first)
    out = tmp_path / "second.jsonl"
    reuse = [*FIRST[:2], "-a", "judge2", "--reuse-proposals", str(first), "-p", "1"]
    llm_server.script("judge2", Reply(), Reply(status=500, error_message="boom"), Reply())
    proc = moa(["batch", str(source), "-o", str(out), *reuse])
    assert proc.returncode == 1
    assert f"--reuse-proposals {first}" in proc.stderr  # the command that resumes keeps it
    # A full run on this output would mix two kinds of answers: refused.
    llm_server.requests.clear()
    proc = moa(["batch", str(source), "-o", str(out), *FIRST[:2], "-a", "judge2"])
    assert proc.returncode == 2 and "holds answers made by a re-aggregation (--reuse-proposals)" in proc.stderr
    assert llm_server.requests == []
    # The same command resumes (references unused, so other ones change nothing): only the
    # failed item's aggregator call.
    proc = moa(["batch", str(source), "-o", str(out), *reuse[2:], "-r", "gamma", "--rounds", "2"])
    assert proc.returncode == 0, proc.stderr
    assert [(r.model, asked(r)) for r in llm_server.requests] == [("judge2", "prompt 1")]
    # Proposals from another file (here the first run's progress file: same items, other bytes)
    # would mix two re-aggregations: refused too.
    other = [*reuse[:4], "--reuse-proposals", str(batch.sidecar_path(first))]
    proc = moa(["batch", str(source), "-o", str(out), *other])
    assert proc.returncode == 2 and "made with a different reuse_proposals_sha256" in proc.stderr
    assert "reuse_proposals_sha256" not in json.loads(batch.sidecar_path(first).read_text().splitlines()[0])["parts"]


def test_proposals_from_another_input_are_refused(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    source, first = prompts_file(tmp_path, 2), tmp_path / "first.jsonl"
    first_run(moa, llm_server, source, first)
    other = write(tmp_path / "other.jsonl", '{"id": 0, "prompt": "something else"}\n{"id": 1, "prompt": "and else"}\n')
    proc = moa(["batch", str(other), "-o", str(tmp_path / "o.jsonl"), *FIRST[:2], "--reuse-proposals", str(first)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "was made from another input file" in proc.stderr and llm_server.requests == []


# ---------------------------------------------------------------------------- the API under it


def test_aaggregate_calls_only_the_aggregator_over_the_last_layers_answers(tmp_path: Path) -> None:
    provider = ScriptedProvider("fake", strict=True)
    provider.set_default("judge", Step("Final.", usage=Usage(10, 2, 12)))
    moa = MoA(["a", "b"], "judge", env=home_env(tmp_path, log=False), router=ScriptedRouter(provider))
    stored = [
        Proposal("a", 1, text="first draft a", usage=Usage(5, 5, 10)),
        Proposal("b", 1, text="first draft b"),
        Proposal("a", 2, text="refined by a"),
        Proposal("b", 2, error="timed out", error_kind="timeout", timed_out=True),
    ]
    result = asyncio.run(moa.aaggregate("Why?", stored))
    assert [c.model for c in provider.calls] == ["judge"]
    system = provider.calls[0].messages[0]["content"]
    assert "refined by a" in system and "first draft" not in system  # the last layer's answered ones
    assert result.answer == "Final." and result.proposals == stored and result.proposals[0] is stored[0]
    assert result.usage == Usage(10, 2, 12)  # the aggregator's alone: the proposals were paid before
    with pytest.raises(ValueError, match="no proposal of the last layer"):
        asyncio.run(moa.aaggregate("Why?", stored[3:]))


def test_aaggregate_consensus_makes_no_call(tmp_path: Path) -> None:
    provider = ScriptedProvider("fake", strict=True)
    moa = MoA(
        ["a", "b"], "judge", env=home_env(tmp_path, log=False), router=ScriptedRouter(provider), aggregation="consensus"
    )
    stored = [Proposal("a", 1, text="the sky is blue"), Proposal("b", 1, text="the sky is blue today")]
    result = asyncio.run(moa.aaggregate("Sky?", stored))
    assert provider.calls == [] and result.answer in ("the sky is blue", "the sky is blue today")
    assert result.usage.total_tokens == 0 and result.selected is not None
