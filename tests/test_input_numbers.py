"""Numbers on screen are the ones the run uses: `moa lineups` shows the effective values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_lineups_shows_the_rounds_a_lineup_inherits(moa: Any, moa_home: Path) -> None:
    (moa_home / "config.toml").write_text(
        'rounds = 2\n\n[lineups.duo]\nreference_models = ["alpha", "beta"]\naggregator = "judge"\n'
    )
    by_name = {row["name"]: row for row in json.loads(moa(["lineups", "--json"]).stdout)["lineups"]}
    assert by_name["duo"]["rounds"] == 2  # it runs with the file's 2 rounds, not the default 1
    assert "rounds 2" in moa(["lineups"]).stdout


def test_eval_ifeval_json_help_is_its_own(moa: Any) -> None:
    text = " ".join(moa(["eval", "ifeval", "--help"]).stdout.split())
    assert "answer, proposals, usage" not in text and "report" in text
