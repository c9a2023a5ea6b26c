"""The GPU acceptance run's parts that a CPU can keep from rotting, in seconds.

The whole run needs a GPU (`python -m bench.gpu_acceptance`); its CPU smoke (`--device cpu --quick`) runs about
ten tiny-model jobs, minutes on two shared cores, so it is not part of the suite. What is: the dashboard-like
poller against a real `python -m monitor` (every route it polls must answer), the record's JSON and verdict, and
the ratio with its interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from bench import gpu_acceptance
from bench.acceptance_record import Record, at_most, holds, unjudged, within
from bench.dashboard_poller import DashboardPoller
from bench.harness import MonitorProcess
from bench.spread import describe, paired_ratio, ratio_of_medians
from tests.servers import wait_for

ROUTES = ("alerts", "jobs", "quality", "queue", "recommendation", "reports/jobs.csv", "series", "status", "targets")


def test_the_poller_hits_every_periodic_route_of_the_dashboard_and_none_fails(tmp_path: Path) -> None:
    with MonitorProcess(tmp_path / "monitor", interval_s=0.5, args=["--host-name", "poll-host"]) as monitor:
        poller = DashboardPoller(monitor.url, host="poll-host").start()
        wait_for(lambda: len(poller.latencies_s.get("status", [])) >= 3, 30, "three polls")
        stats = poller.stop()
    assert set(stats) == set(ROUTES), stats
    assert all(route["errors"] == 0 for route in stats.values()), stats
    assert stats["series"]["count"] == 2 * stats["status"]["count"]  # the GPU and the host series each time


def test_a_paused_monitor_answers_nothing_and_a_resumed_one_answers_again(tmp_path: Path) -> None:
    with MonitorProcess(tmp_path / "monitor", interval_s=0.5, args=["--host-name", "poll-host"]) as monitor:
        poller = DashboardPoller(monitor.url, host="poll-host").start()
        wait_for(lambda: len(poller.latencies_s.get("status", [])) >= 1, 30, "a first poll")
        poller.pause()
        monitor.pause()
        polled = len(poller.latencies_s["status"])
        with pytest.raises(requests.Timeout):
            requests.get(f"{monitor.url}/monitor/api/status", timeout=1)
        assert len(poller.latencies_s["status"]) == polled  # the paused tab sent nothing
        monitor.resume()
        poller.resume()
        wait_for(lambda: len(poller.latencies_s["status"]) > polled, 30, "polls after the pause")
        stats = poller.stop()
    assert all(route["errors"] == 0 for route in stats.values()), stats


def test_the_record_is_rewritten_whole_and_passes_only_when_every_check_passed(tmp_path: Path) -> None:
    path = tmp_path / "acceptance.json"
    record = Record(path, benchmark="gpu_acceptance")
    record.job("mixed", {"job_id": "a", "state": "succeeded", "started_at": 10.0, "finished_at": 16.5})
    assert json.loads(path.read_text())["jobs"][0]["run_s"] == 6.5

    record.check(within("peak after big", 8.1e9, 8.0e9, 0.05, "reserved"))
    record.check(at_most("ratio", 1.003, 1.005, "1.003", "median"))
    assert record.finish() is True
    record.check(unjudged(holds("foreign process", True, "yes", "degraded"), "no GPU"))
    assert record.finish(every_check_judged=False) is True  # a smoke run
    assert record.finish() is False  # an acceptance

    written = json.loads(path.read_text())
    assert written["unjudged"] == ["foreign process"]
    assert written["failed"] == []
    assert "| peak after big | 1.2% off | <= 5% off | pass |" in written["table"]
    assert "| foreign process | yes | yes | not judged |" in written["table"]
    assert not path.with_suffix(".json.partial").exists()


def test_a_check_outside_its_tolerance_fails_and_a_missing_figure_is_not_judged() -> None:
    assert within("peak", 8.5e9, 8.0e9, 0.05, "").passed is False
    assert within("peak", None, 8.0e9, 0.05, "").passed is None
    assert at_most("ratio", 1.02, 1.005, "1.02", "").passed is False


def test_the_ratio_of_medians_comes_with_an_interval_around_it() -> None:
    stopped = [3.00, 3.02, 2.98, 3.01, 2.99, 3.00, 3.03, 2.97, 3.00, 3.01]
    watched = [t * 1.01 for t in stopped]
    ratio = ratio_of_medians(watched, stopped)
    assert ratio["ratio"] == pytest.approx(1.01)
    low, high = ratio["ci95"]
    assert low <= ratio["ratio"] <= high
    assert high - low < 0.03
    assert ratio_of_medians([], stopped)["ratio"] is None
    assert describe(stopped)["n"] == 10
    assert describe(stopped)["iqr_ratio"] == pytest.approx(0.0066, abs=1e-3)


def test_pairs_compare_each_job_with_its_neighbour_so_a_drift_of_the_machine_cancels() -> None:
    # The machine slows by 0.5% per pair; the monitor adds 1%. Medians of the two sets mix the drift in; the
    # pairs' ratios do not.
    drift = [3.0 * (1 + 0.005 * i) for i in range(12)]
    pairs = [(t * 1.01, t) for t in drift]
    ratio = paired_ratio(pairs)
    assert ratio["ratio"] == pytest.approx(1.01)
    assert ratio["pairs"] == 12
    low, high = ratio["ci95"]
    assert low <= 1.01 <= high
    assert high - low < 0.001
    assert paired_ratio([])["ratio"] is None


def test_no_pair_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        gpu_acceptance.main(["--device", "cpu", "--pairs", "-1"])
    assert exited.value.code == 2
    assert "--pairs and --down-jobs must be at least 1" in capsys.readouterr().err


def test_the_h200_plan_has_ten_mixed_jobs_sizes_it_has_not_seen_and_ten_steady_jobs_per_mode() -> None:
    plan = gpu_acceptance.H200
    assert len(plan.train) >= gpu_acceptance.MIN_MEASURED_JOBS
    assert plan.train[:3] == (plan.small, plan.big, plan.small)
    assert not set(plan.unseen) & set(plan.train)
    assert plan.pairs >= gpu_acceptance.MIN_JOBS_PER_MODE
    sizes = plan.train + plan.unseen
    assert {s.resolution for s in sizes} == {256, 512, 768, 1024}
    assert all(16 <= s.frames <= 32 and 10 <= s.steps <= 25 for s in sizes)


def test_the_overhead_is_judged_from_each_running_job_and_its_paused_neighbour(tmp_path: Path) -> None:
    import argparse

    plan = gpu_acceptance.H200
    record = Record(tmp_path / "acceptance.json", benchmark="gpu_acceptance")
    acceptance = gpu_acceptance.Acceptance(argparse.Namespace(budget_s=600.0), plan, record, tmp_path)
    clock = 0.0

    def job(mode: str, run_s: float, **extra: Any) -> None:
        nonlocal clock
        view = {"job_id": f"j{clock}", "state": "succeeded", "started_at": clock, "finished_at": clock + run_s}
        view["stage_durations_s"] = {"denoising": run_s * 0.75}
        record.job("overhead", view, mode=mode, **extra)
        clock += run_s + 1

    for _ in range(3):
        job("stopped", 3.0, after_switch=False)
    for mode, cost in (("0.5s", 1.002), ("2s", 1.0)):
        job(mode, 3.2, after_switch=True)  # the backlog's job after the start
        for pair in range(plan.pairs):
            drift = 3.0 * (1 + 0.004 * pair)  # the card slows: the pairs cancel it
            job(mode, drift * cost, pair=pair, after_switch=False)
            job(f"{mode} paused", drift, pair=pair, after_switch=False)

    entry: dict[str, Any] = {}
    acceptance.judge_overhead(entry)

    assert entry["stats"]["0.5s"]["paired_ratio"]["ratio"] == pytest.approx(1.002)
    assert entry["stats"]["0.5s"]["paired_ratio"]["pairs"] == plan.pairs
    assert entry["stats"]["2s"]["paired_denoising_ratio"]["ratio"] == pytest.approx(1.0)
    assert entry["stats"]["0.5s"]["ratio_after_start"]["ratio"] > 1.005
    verdicts = {c["name"]: c["passed"] for c in record.data["checks"]}
    assert verdicts["generation time, monitor at 0.5 s / paused"] is True
    assert verdicts["generation time just after the monitor started at 0.5 s (backlog) / paused"] is False
    assert verdicts["overhead: at least 10 jobs with the monitor at 2 s, each beside a paused one"] is True


def test_the_pairs_whose_running_job_had_no_clip_scored_beside_it_are_also_judged_apart(tmp_path: Path) -> None:
    import argparse

    plan = gpu_acceptance.H200
    record = Record(tmp_path / "acceptance.json", benchmark="gpu_acceptance")
    acceptance = gpu_acceptance.Acceptance(argparse.Namespace(budget_s=600.0), plan, record, tmp_path)
    clock = 0.0

    def job(mode: str, run_s: float, pair: int, clips_scored_during: int) -> None:
        nonlocal clock
        view = {"job_id": f"j{clock}", "state": "succeeded", "started_at": clock, "finished_at": clock + run_s}
        # Denoising as paused; the rest of the job (encoding, decoding, export) pays for the clip scored beside it.
        outside = run_s - 2.25
        view["stage_durations_s"] = {
            "text_encoding": 0.05, "image_encoding": 0.05, "image_latents": 0.05, "denoising": 2.25,
            "decode_video": 0.15, "export": outside - 0.3,
        }  # fmt: skip
        record.job("overhead", view, mode=mode, pair=pair, after_switch=False, clips_scored_during=clips_scored_during)
        clock += run_s + 1

    for pair in range(plan.pairs):  # a clip scored beside every other running job, costing it 3%
        scored = pair % 2
        job("0.5s", 3.0 * (1.03 if scored else 1.0), pair, scored)
        job("0.5s paused", 3.0, pair, 0)

    entry: dict[str, Any] = {}
    acceptance.judge_overhead(entry)

    stats = entry["stats"]["0.5s"]
    assert stats["paired_ratio"]["ratio"] == pytest.approx(1.03**0.5, rel=1e-4)
    assert stats["paired_ratio_no_scoring"]["ratio"] == pytest.approx(1.0)
    assert stats["paired_ratio_no_scoring"]["pairs"] == (plan.pairs + 1) // 2
    assert stats["paired_denoising_ratio_no_scoring"]["ratio"] == pytest.approx(1.0)
    differences = {part: d["difference"] for part, d in stats["paired_part_differences_s"].items()}
    assert differences["export"] == pytest.approx(0.045)  # half the pairs, 0.09 s each: where the cost lies
    assert differences["whole"] == pytest.approx(0.045)
    assert differences["denoising"] == differences["decode"] == differences["encoding"] == pytest.approx(0.0)
    assert differences["other"] == pytest.approx(0.0, abs=1e-9)


def test_an_unseen_size_is_judged_against_its_fresh_size_time_warm_up_included() -> None:
    fresh = {"time": {"seconds": 6.0, "warmup_s": 0.6, "fresh_size_seconds": 6.6}}
    assert gpu_acceptance.fresh_size_s(fresh) == 6.6
    assert gpu_acceptance.fresh_size_s({"time": {"seconds": 6.0}}) == 6.0  # a monitor from before: its one time
