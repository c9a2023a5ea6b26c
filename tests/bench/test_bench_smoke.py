"""`make bench` works: `python -m bench.run --quick` runs every benchmark and writes the JSON and the Markdown.

The quick run proves the harness (real monitors, a real influxd, the scripts it drives) at tiny sizes; its
figures are not measurements. No other benchmark runs in the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.run import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
SMOKE_BUDGET_S = 150.0  # 13 benchmarks' quick modes; about 60 s on 2 idle cores


def test_quick_bench_writes_a_json_per_benchmark_and_the_table(tmp_path: Path) -> None:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_BUDGET_S + 30,
    )
    took_s = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name in BENCHMARKS:
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["quick"] is True
        assert "error" not in doc, doc.get("traceback")
        assert doc["figures"], name
        assert all(f["value"] is not None for f in doc["figures"]), doc["figures"]
        assert len(doc["load_average_before"]) == 3
    table = (tmp_path / "README.md").read_text()
    assert "| figure | value | target | met? | how measured | where |" in table
    assert "Ingest into SQLite: events/s stored" in table
    assert "H100 (h100_monitor_overhead.json)" in table  # the GPU figures come from their files
    assert took_s < SMOKE_BUDGET_S, f"the quick bench took {took_s:.0f} s"


def test_only_runs_the_named_benchmark_and_keeps_the_others_in_the_table(tmp_path: Path) -> None:
    earlier = {"benchmark": "ingest", "quick": False, "figures": [], "load_average_before": [1, 1, 1]}
    (tmp_path / "ingest.json").write_text(json.dumps(earlier))
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "store", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_BUDGET_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["ingest.json", "store.json"]
    table = (tmp_path / "README.md").read_text()
    assert "| ingest |" in table
    assert "| store |" in table
    assert "InfluxDB write throughput" in table
