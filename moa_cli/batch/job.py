"""What `moa batch` is asked to do (`Job`), a job checked and loaded (`Prepared`), how a run ends
(`Summary`), and who hears of its progress (`Listener`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moa_cli.batch.formats import Input, Item
from moa_cli.batch.outcome import Outcome
from moa_cli.batch.reuse import Stored
from moa_cli.settings import Settings


@dataclass(frozen=True, slots=True)
class Job:
    """What `moa batch` was asked to do (every option but the settings)."""

    input: Path
    output: Path
    format: str | None = None
    parallel: int = 4
    rps: float | None = None
    limit: int | None = None
    ids: tuple[str, ...] = ()
    generator: str | None = None
    allow_failures: bool = False
    allow_degraded: bool = False  # write (and exit 0) even if members of the line-up failed on items
    restart: bool = False
    fastchat_temperatures: bool = False
    reuse_proposals: Path | None = None  # run only the aggregator, over the proposals this file kept
    budget: float | None = None  # USD this run may spend, every item in flight at its worst case
    command: str = ""  # the command line that resumes the run, for messages and the manifest


@dataclass(slots=True)
class Summary:
    """How a run ended. `written` is True once the output file is in place."""

    format: str
    total: int  # items selected
    resumed: int  # answered by an earlier run
    done: int = 0  # answered, in all
    failed: list[Outcome] = field(default_factory=list)
    degraded: list[Outcome] = field(default_factory=list)  # answered, but not by the whole line-up
    allow_degraded: bool = False
    tokens: int | None = 0
    cost: float | None = 0.0  # USD; None once any answered item's cost is unknown
    written: bool = False
    interrupted: bool = False
    generator: str = ""
    output: Path | None = None
    sidecar: Path | None = None
    manifest: Path | None = None
    warnings: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    spent: float = 0.0  # USD this run spent (an item of unknown cost counted at its worst case)
    stopped_by_budget: bool = False  # --budget: the next item might have cost more than was left


class Listener(Protocol):
    """Receives progress; the command draws it. Called on the event loop: keep it quick."""

    def started(self, summary: Summary) -> None: ...

    def finished(self, outcome: Outcome, summary: Summary) -> None: ...


@dataclass
class Prepared:
    """A job checked and loaded, before any model is called."""

    job: Job
    settings: Settings
    input: Input
    items: list[Item]
    generator: str
    header: dict[str, Any]
    warnings: list[str]
    reuse: Stored | None = None
