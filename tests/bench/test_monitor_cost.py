"""bench/monitor_cost.py without a GPU: its quick ladder end to end on the tiny model, and the arithmetic it reports.

The smoke run is the real thing at its smallest: `python -m generator --model tiny`, the `quality` monitor rung
(sampling, scraping, scoring with a tiny CLIP) on a real influxd, one running/paused pair and no discarded job:
two tiny-model jobs, the smallest the generator takes (256p/8/10), about 10 s each on two idle cores. It checks
the JSON's shape and that every job succeeded, never a timing (its budget is wide, for a machine shared with
others). What a rung adds over the one before is judged from recorded jobs of two rungs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import monitor_cost
from bench.acceptance_record import Record
from bench.monitor_cost import LADDER, RUNGS, CudaContexts, rung_figures, summary_table
from bench.spread import abba, paired_difference, ratio_between
from bench.stack import PARTS, stage_seconds
from monitor.collection.nvml import GpuProcess, GpuSnapshot

ROOT = Path(__file__).resolve().parents[2]
RUNGS_RUN = ("quality",)  # the rung with the most parts on; the step between rungs is judged below
PAIRS = 1
BUDGET_S = 900


def test_abba_alternates_which_side_of_a_pair_runs_first() -> None:
    assert abba(3) == [False, True, True, False, False, True]


def test_differences_of_pairs_add_up_and_one_set_of_ratios_divides_another() -> None:
    assert paired_difference([(3.0, 2.0), (5.0, 4.5)])["difference"] == 0.75
    assert paired_difference([])["difference"] is None
    step = ratio_between([(1.04, 1.0), (2.08, 2.0)], [(1.01, 1.0), (3.03, 3.0)])
    assert math.isclose(step["ratio"], 1.04 / 1.01, rel_tol=1e-4)
    assert step["ci95"][0] <= step["ratio"] <= step["ci95"][1]
    assert ratio_between([], [(1.0, 1.0)])["ratio"] is None


def test_a_jobs_parts_are_its_stage_groups_and_the_rest_of_its_span() -> None:
    view = {
        "started_at": "2026-05-01T12:00:00Z",
        "finished_at": "2026-05-01T12:00:03Z",
        "stage_durations_s": {
            "text_encoding": 0.1, "image_encoding": 0.2, "image_latents": 0.1, "denoising": 2.0,
            "denoising_step_mean": 0.2, "decode_video": 0.3, "export": 0.1,
        },
    }  # fmt: skip
    parts = stage_seconds(view)
    assert set(parts) == set(PARTS)
    assert math.isclose(parts["encoding"], 0.4)
    assert math.isclose(parts["other"], 0.2)
    assert stage_seconds({**view, "stage_durations_s": {}})["other"] is None


def test_the_default_ladder_switches_one_part_on_at_each_rung() -> None:
    switches = [RUNGS[name] for name in LADDER]
    on = [sum((r.sampling, r.scrape, r.quality, r.clip, r.dashboard)) for r in switches]
    assert on == [0, 1, 2, 4, 5]  # quality comes with its CLIP in one rung (`motion` splits them)


@pytest.mark.slow
def test_the_quick_ladder_measures_every_rung_and_every_job_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    command = [
        sys.executable, "-m", "bench.monitor_cost", "--model", "tiny", "--device", "cpu", "--quick",
        "--rungs", ",".join(RUNGS_RUN), "--pairs", str(PAIRS), "--warmup-jobs", "0", "--store", "influxd",
        "--budget-s", str(BUDGET_S),
        "--out", str(out), "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_S + 60)
    assert completed.returncode == 0, completed.stderr[-4000:]

    doc = json.loads(out.read_text())
    assert doc["phases"]["setup"]["store"]["kind"] == "influxd"
    jobs = doc["jobs"]
    assert jobs
    assert all(j["state"] == "succeeded" for j in jobs), [j.get("error") for j in jobs]
    for rung in RUNGS_RUN:
        modes = [j["mode"] for j in jobs if j["phase"] == rung]
        assert sorted(modes) == ["paused"] * PAIRS + ["running"] * PAIRS
        figures = doc["summary"][rung]
        assert figures["pairs"] == PAIRS
        assert set(figures["ratio"]) == set(figures["difference_s"]) == set(PARTS)
        assert all(figures["ratio"][part]["pairs"] == PAIRS for part in PARTS)
        assert figures["cpu_s_per_job"]["monitor"]["running"]["n"] == PAIRS
        assert figures["cpu_s_per_job"]["monitor"]["paused"]["n"] == PAIRS
        assert figures["monitor_cuda_context"]["running_jobs_known"] == 0  # no GPU: cannot tell
    assert "over_previous" not in doc["summary"]["quality"]  # the first rung climbed
    running = [j for j in jobs if j["phase"] == "quality" and j["mode"] == "running"]
    assert all(j["clips_scored_during"] is not None for j in running)
    assert f"| quality | {PAIRS} |" in doc["summary_table"]
    assert doc["passed"] is True


def test_the_table_says_n_a_where_a_figure_is_missing() -> None:
    job = {"parts_s": dict.fromkeys(PARTS, 1.0), "monitor_cpu_s": 0.5, "monitor_cuda": None}
    figures = {"what": "x", **rung_figures([(job, {**job, "monitor_cpu_s": 0.0})])}
    table = summary_table({"ingest": figures})
    assert "| ingest | 1 | 1.0000 (1.0000-1.0000) | - |" in table
    assert table.rstrip().endswith("| 0.50 | n/a |")


class ListedProcesses:
    """NVML's answer as the bench reads it: one GPU and the processes holding a context on it."""

    available = True

    def __init__(self, *pids: int) -> None:
        self.pids = pids

    def read(self) -> tuple[GpuSnapshot, ...]:
        processes = tuple(GpuProcess(pid, 500 << 20) for pid in self.pids)
        return (GpuSnapshot(index=0, uuid="GPU-x", name="stand-in", up=True, processes=processes),)

    def shutdown(self) -> None:
        return None


@pytest.mark.parametrize(
    ("listed", "holds"),
    [((10, 20), True), ((10,), False), ((20,), None)],  # the generator (10) unlisted: another PID namespace
)
def test_a_cuda_context_is_told_from_nvmls_process_list_only_when_the_generator_is_listed(
    listed: tuple[int, ...], holds: bool | None
) -> None:
    contexts = CudaContexts(ListedProcesses(*listed))
    assert contexts.holds(20, generator_pid=10)["holds"] is holds


def test_rungs_set_the_scoring_priority_and_hide_cuda_only_where_asked() -> None:
    base = {"PATH": "/usr/bin"}
    assert RUNGS["quality"].monitor_env(base) == {**base, "MONITOR_QUALITY_CPU_PRIORITY": "idle"}
    assert RUNGS["quality_normal"].monitor_env(base)["MONITOR_QUALITY_CPU_PRIORITY"] == "normal"
    assert RUNGS["clip_cpu"].monitor_env(base)["CUDA_VISIBLE_DEVICES"] == ""


def test_each_rung_is_judged_against_its_paused_jobs_and_over_the_rung_before(tmp_path: Path) -> None:
    plan = monitor_cost.CPU  # ingest, then quality
    record = Record(tmp_path / "cost.json", benchmark="monitor_cost")
    args = argparse.Namespace(budget_s=600.0, quick=True)
    cost = monitor_cost.MonitorCost(args, plan, record, tmp_path)
    clock = 0.0
    for rung, slower in (("ingest", 1.0), ("quality", 1.05)):
        for pair in range(3):
            for mode, run_s in (("running", 10.0 * slower), ("paused", 10.0)):
                view = {"job_id": f"j{clock}", "state": "succeeded", "started_at": clock, "finished_at": clock + run_s}
                view["stage_durations_s"] = {"denoising": run_s - 1.0}
                record.job(rung, view, mode=mode, pair=pair, clips_scored_during=0, monitor_cuda=None)
                clock += run_s + 1

    cost.judge()

    summary = record.data["summary"]
    assert summary["ingest"]["ratio"]["whole"]["ratio"] == pytest.approx(1.0)
    assert "over_previous" not in summary["ingest"]
    assert summary["quality"]["ratio"]["whole"]["ratio"] == pytest.approx(1.05)
    assert summary["quality"]["over_previous"]["rung"] == "ingest"
    assert summary["quality"]["over_previous"]["ratio"] == pytest.approx(1.05)
    assert "| quality | 3 | 1.0500 (1.0500-1.0500) | 1.0500" in record.data["summary_table"]
