"""bench/compile_gpu.py's own arithmetic and budget, without a GPU: its figures are measured only on a card.

What runs here: the summary's TFLOP/s, share of peak and speed-up from recorded calls, the peak looked up by the
device's name, a half-written record line, and the budget guard skipping what does not fit (with the command
that runs it alone) before any child process starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compile_gpu import main, peak_for, read_records, summarise


def size_record(size: str, eager_s: float, compiled_s: float, flop: int) -> dict:
    return {
        "kind": "size",
        "size": size,
        "graphs_built": 0,
        "eager": {"median_s": eager_s},
        "compiled": {"median_s": compiled_s},
        "flop_per_call": flop,
        "agreement": {"agree": True},
    }


def test_the_summary_turns_recorded_calls_into_tflops_share_of_peak_and_speedup() -> None:
    result = {
        "phases": {
            "cold": {
                "status": "complete",
                "records": [
                    {"kind": "start", "ready_s": 190.0, "device": {"name": "NVIDIA H200"}},
                    # The issue's own measurement: 41.9 TFLOP per step, 0.216 s eager, 0.135 s compiled.
                    size_record("512x512x16", 0.216, 0.135, 41_900_000_000_000),
                ],
            },
            "warm": {
                "status": "complete",
                "records": [
                    {"kind": "start", "ready_s": 24.5},
                    {"kind": "coverage", "size": "256x256x8", "graphs_built": 0},
                    {"kind": "coverage", "size": "768x768x24", "graphs_built": 1},
                ],
            },
        }
    }

    summary = summarise(result, None)

    (row,) = summary["sizes"]
    assert row["eager_tflops"] == pytest.approx(194.0, abs=0.1)
    assert row["compiled_tflops"] == pytest.approx(310.4, abs=0.1)
    assert row["compiled_share_of_peak"] == pytest.approx(310.4 / 989.5, abs=1e-3)
    assert row["speedup"] == pytest.approx(1.6)
    assert (summary["cold_start_ready_s"], summary["warm_start_ready_s"]) == (190.0, 24.5)
    assert summary["coverage_sizes_that_compiled"] == ["768x768x24"]


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_the_peak_comes_from_the_device_name(name: str, peak: float | None) -> None:
    assert peak_for(name, None) == peak


def test_an_override_wins_over_the_name() -> None:
    assert peak_for("NVIDIA H200", 900.0) == 900.0


def test_a_record_line_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "cold.jsonl"
    path.write_text('{"kind": "start", "ready_s": 1.0}\n{"kind": "si')

    assert read_records(path) == [{"kind": "start", "ready_s": 1.0}]


def test_a_phase_that_does_not_fit_the_budget_is_skipped_with_the_command_to_run_it(tmp_path: Path) -> None:
    out = tmp_path / "h200_compile.json"

    assert main(["--only", "static,vae", "--budget-s", "30", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert result["phases"]["static"]["status"] == "skipped"
    assert result["phases"]["static"]["run_alone"].endswith(f"--only static --out {tmp_path}/h200_compile_static.json")
    # The VAE variant starts from the cold phase's cache, so running it alone means running that first.
    assert "--only cold,vae" in result["phases"]["vae"]["run_alone"]
    assert result["complete"] is False


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--only", "lukewarm"])
