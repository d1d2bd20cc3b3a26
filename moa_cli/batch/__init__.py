"""`moa batch`: answer a whole benchmark file, resumably, in the format its judge reads.

    items = read_input(path, fmt)           # alpaca | mtbench | flask | jsonl, detected if None
    summary = await run_batch(prepare(job, settings), listener)

Formats (the judges join on exact fields, so these are written exactly):

    alpaca   in:  a JSON list (or JSONL) of {"instruction", ...}
             out: a JSON list of the input objects plus "output" and "generator", in input
                  order (alpaca_eval inner-joins on "instruction": it is copied unchanged)
    mtbench  in:  FastChat's question.jsonl: {"question_id", "category", "turns": [...]}
             out: FastChat's answer JSONL, sorted by question_id: {"question_id", "answer_id",
                  "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}; the second
                  turn is asked with the first turn and its answer in the conversation
    flask    in:  FLASK's evaluation JSONL: {"question_id" or "idx", "text" or "instruction"}
             out: one {"question_id", "text", "model_id"} per item, as FLASK's model_output
                  files; its review script joins on question_id
    jsonl    in:  one {"id"?, "prompt"} or {"id"?, "messages": [...]} per line
             out: one {"id", "answer", "error", ...} per line, with proposals and usage

Every output is JSON with ASCII escapes (`json.dumps` defaults, as FastChat writes), so a
judge that opens it without naming an encoding reads the same strings.

Resuming. Each finished item is appended to a sidecar next to OUTPUT
(`OUTPUT.moa-progress`, JSON lines, flushed and fsynced), so a crash or a signal loses at
most the items in flight. Its first line holds a fingerprint of what decides the answers
(line-up, sampling, system and aggregator prompts, format, input file): a rerun with the
same fingerprint skips the answered items and retries the failed ones; a different one is
refused (exit 2) unless `restart`. The output file itself is written once, atomically
(temporary file, fsync, rename), when every selected item has an answer, or with
`allow_failures`; a short file would silently skew a judge. An item answered without the
whole line-up (a reference failed, `select` fell back: `Outcome.degraded`) counts as
answered, but the output waits for `allow_degraded` as well: a judge would score a mixture
that was not one; a rerun asks those items again. `OUTPUT.moa-manifest.json` records the
run, with the degraded items counted per member. Neither side file ends in `.jsonl`: FastChat loads every `*.jsonl` in its
answer directory as a model.

Re-aggregating (`reuse_proposals`, what the original MoA's `--reference-paths` did): the
proposals an earlier run of the same input kept (its jsonl output, or its progress file for
any format, which holds every turn's) are read, every selected item must have them, and
only the aggregator runs over them (`MoA.aaggregate`). The fingerprint then includes that
file's hash, so a re-aggregation and a full run never share a sidecar.

No terminal code here: progress goes to a `Listener` (the command draws it).

The modules, from the bottom up (each imports only those above it):

    outcome.py      what one item produced, and who of the line-up took part
    formats.py      one class per judge format: its parse and its write
    fingerprint.py  what decides the answers
    sidecar.py      the progress file (resume); where OUTPUT's side files are
    manifest.py     the run's record
    reuse.py        stored proposals (--reuse-proposals)
    pacing.py       --rps and --budget
    job.py          Job, Prepared, Summary, Listener
    run.py          prepare and run_batch

This face re-exports their public names: `from moa_cli import batch` is the way in.
"""

from moa_cli.batch.fingerprint import (
    answer_settings,
    fingerprint,
    fingerprint_parts,
    plain,
    routes,
    settings_parts,
    sha256_text,
)
from moa_cli.batch.formats import (
    FASTCHAT_ERROR,
    FASTCHAT_TEMPERATURES,
    FORMATS,
    BatchInputError,
    Input,
    Item,
    answer_id,
    default_generator,
    detect_format,
    jsonl_record,
    read_bytes,
    read_input,
    render,
    select,
)
from moa_cli.batch.job import Job, Listener, Prepared, Summary
from moa_cli.batch.manifest import manifest
from moa_cli.batch.outcome import FAILED, FELL_BACK, Outcome, degraded_by_member, members
from moa_cli.batch.pacing import Budget, LimitedRouter, RateLimiter
from moa_cli.batch.reuse import Stored, read_stored
from moa_cli.batch.run import answer_item, prepare, run_batch
from moa_cli.batch.sidecar import (
    MANIFEST_SUFFIX,
    REUSE_PART,
    SIDECAR_SUFFIX,
    SIDECAR_VERSION,
    Sidecar,
    manifest_path,
    sidecar_path,
)
from moa_cli.files import write_atomic

__all__ = [
    "FAILED",
    "FASTCHAT_ERROR",
    "FASTCHAT_TEMPERATURES",
    "FELL_BACK",
    "FORMATS",
    "MANIFEST_SUFFIX",
    "REUSE_PART",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "BatchInputError",
    "Budget",
    "Input",
    "Item",
    "Job",
    "LimitedRouter",
    "Listener",
    "Outcome",
    "Prepared",
    "RateLimiter",
    "Sidecar",
    "Stored",
    "Summary",
    "answer_id",
    "answer_item",
    "answer_settings",
    "default_generator",
    "degraded_by_member",
    "detect_format",
    "fingerprint",
    "fingerprint_parts",
    "jsonl_record",
    "manifest",
    "manifest_path",
    "members",
    "plain",
    "prepare",
    "read_bytes",
    "read_input",
    "read_stored",
    "render",
    "routes",
    "run_batch",
    "select",
    "settings_parts",
    "sha256_text",
    "sidecar_path",
    "write_atomic",
]
