"""The run's record next to the output (`OUTPUT.moa-manifest.json`)."""

from __future__ import annotations

import json
from datetime import UTC
from typing import TYPE_CHECKING

from moa_cli import __version__
from moa_cli.batch.fingerprint import answer_settings, plain, sha256_text
from moa_cli.batch.outcome import degraded_by_member

if TYPE_CHECKING:
    from moa_cli.batch.job import Prepared, Summary


def manifest(prepared: Prepared, summary: Summary) -> bytes:
    """The run's record: line-up, settings, prompt hash, version, input hash, times, counts, failures."""
    s, job = prepared.settings, prepared.job
    status = "interrupted" if summary.interrupted else ("failed" if summary.failed else "done")
    if status == "done" and summary.degraded:
        status = "degraded"
    data = {
        "moa_version": __version__,
        "status": status,
        "command": job.command,
        "format": summary.format,
        "input": str(job.input),
        "input_sha256": prepared.input.sha256,
        "output": str(job.output),
        "output_written": summary.written,
        "sidecar": str(summary.sidecar),
        "generator": prepared.generator,
        "fingerprint": prepared.header["fingerprint"],
        "lineup": {"name": s.lineup, "references": list(s.references), "aggregator": s.aggregator, "rounds": s.rounds},
        "settings": {
            **{name: plain(getattr(s, name)) for name in answer_settings() if name not in ("references", "aggregator")},
            "fastchat_temperatures": job.fastchat_temperatures,
            "num_proc": s.num_proc,
            "timeout": s.timeout,
            "retries": s.retries,
            "parallel": job.parallel,
            "rps": job.rps,
        },
        "aggregator_prompt_sha256": sha256_text(s.aggregator_prompt),
        "selection": {"ids": list(job.ids), "limit": job.limit},
        # Only the aggregator ran, over the proposals kept in this file (references not called).
        "reuse_proposals": {
            "path": str(prepared.reuse.path),
            "kind": prepared.reuse.kind,
            "sha256": prepared.reuse.sha256,
        }
        if prepared.reuse is not None
        else None,
        "started": _iso(summary.started),
        "ended": _iso(summary.ended),
        "counts": {
            "items": summary.total,
            "answered": summary.done,
            "resumed": summary.resumed,
            "failed": len(summary.failed),
            "not_run": summary.total - summary.done - len(summary.failed),
        },
        "tokens": summary.tokens,
        "cost_usd": summary.cost,
        "budget": {"limit_usd": job.budget, "spent_usd": summary.spent, "stopped": summary.stopped_by_budget}
        if job.budget is not None
        else None,
        "failures": [{"id": o.id, "error": o.error, "kind": o.error_kind, "status": o.status} for o in summary.failed],
        # Items answered without the whole line-up: how many each member's failure touched,
        # and which items (each with what went wrong).
        "degraded": {
            "items": len(summary.degraded),
            "allowed": job.allow_degraded,
            "by_member": degraded_by_member(summary.degraded),
            "list": [{"id": o.id, "answered_by": o.answered_by, "degraded": o.degraded} for o in summary.degraded],
        },
    }
    return (json.dumps(data, indent=2) + "\n").encode("ascii")


def _iso(timestamp: float) -> str | None:
    if not timestamp:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
