"""bench/scoring_priority.py at its smallest: a tiny CLIP, one spinning process, each priority in effect."""

from __future__ import annotations

import json
from pathlib import Path

from bench.scoring_priority import main


def test_each_priority_scores_its_clip_and_reports_the_lateness(tmp_path: Path) -> None:
    out = tmp_path / "priority.json"

    assert main(["--clip", "tiny", "--spinners", "1", "--limit-s", "120", "--out", str(out)]) == 0

    runs = {run["priority"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"idle", "low", "normal"}
    assert runs["idle"]["in_effect"] == "idle (SCHED_IDLE: spare cores only)"
    assert runs["low"]["in_effect"] == "low (nice 19)"
    for run in runs.values():
        assert run["scored_within_limit"], run  # one core stays free: even the idle class gets it
        assert run["wakeups"] > 0
        assert 0 <= run["late_ms"]["p50"] <= run["late_ms"]["p99"] <= run["late_ms"]["max"]
