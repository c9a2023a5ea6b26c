"""Queue mode end to end: one API, three worker processes on three host names, Redis, a monitor.

The tests share one fleet and run in file order; the worker kill comes last (it leaves two workers).
"""

from __future__ import annotations

import re
import time
from typing import Any

import requests

from tests.fleet.conftest import FINAL, HOSTS, LEASE_S, Fleet
from tests.servers import wait_for

LONG = {"steps": "100"}  # about 8 s of denoising on the micro model: long enough to catch a job mid-run


def metric(text: str, name: str, priority: str) -> float:
    """Return one sample of a per-priority gauge from /metrics text."""
    match = re.search(rf'^{name}{{priority="{priority}"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name}{{priority={priority}}} missing from /metrics"
    return float(match.group(1))


def test_bad_input_is_refused_at_the_api_before_it_is_queued(fleet: Fleet) -> None:
    before = fleet.health()["queue_pending"]
    for fields, field in (({"resolution": "300"}, "resolution"), ({"priority": "urgent"}, "priority")):
        response = fleet.submit(**fields)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
    assert fleet.health()["queue_pending"] == before
    listed = requests.get(f"{fleet.api.url}/api/jobs", timeout=10).json()["jobs"]
    assert all(job["prompt"] for job in listed)  # nothing half-made was recorded


def test_a_burst_of_20_spreads_over_the_workers_and_drains_exactly(fleet: Fleet) -> None:
    job_ids = [fleet.submit_ok() for _ in range(20)]
    text = fleet.metrics()
    waiting = metric(text, "i2v_queue_depth", "normal")
    assert 0 < waiting <= 20
    assert metric(text, "i2v_queue_oldest_age_seconds", "normal") > 0
    done = fleet.wait_states(job_ids, FINAL, deadline_s=240)
    states = [job["state"] for job in done]
    assert states.count("succeeded") == 20, (states, fleet.logs())
    hosts = {job["host"] for job in done}
    assert len(hosts) >= 2, f"every job ran on {hosts}"
    assert hosts <= set(HOSTS)
    for job in done:
        assert job["progress"]["step"] == job["progress"]["total_steps"] == 10
        assert job["video_url"]
    video = requests.get(f"{fleet.api.url}{done[0]['video_url']}", timeout=10)
    assert video.status_code == 200
    assert video.content[4:8] == b"ftyp"  # an MP4 written by a worker, served by the API from the shared folder
    assert metric(fleet.metrics(), "i2v_queue_depth", "normal") == 0
    # Every worker's events reached the monitor with its own host tag.
    monitor = fleet.monitor.url
    wait_for(
        lambda: all(
            requests.get(f"{monitor}/monitor/api/jobs/{job['job_id']}", timeout=10).json().get("status") == "succeeded"
            for job in done
        ),
        60,
        "the monitor to hear every job's end",
    )
    for job in done[:5]:
        summary = requests.get(f"{monitor}/monitor/api/jobs/{job['job_id']}", timeout=10).json()
        assert (summary["host"], summary["gpu"]) == (job["host"], "cpu")


def test_priorities_are_served_high_then_normal_then_batch(fleet: Fleet) -> None:
    blockers = [fleet.submit_ok(**LONG) for _ in HOSTS]
    fleet.wait_states(blockers, ("running",), deadline_s=60)
    ordered = [fleet.submit_ok(priority=p) for p in ("batch", "batch", "normal", "normal", "high", "high")]
    text = fleet.metrics()
    for priority in ("high", "normal", "batch"):
        assert metric(text, "i2v_queue_depth", priority) == 2
    assert fleet.job(ordered[4])["position"] == 1  # the first high job is served first
    assert fleet.job(ordered[0])["position"] == 5
    for job_id in blockers:
        requests.post(f"{fleet.api.url}/api/jobs/{job_id}/cancel", timeout=10)
    done = {job["job_id"]: job for job in fleet.wait_states(ordered, FINAL, deadline_s=120)}
    started = {job_id: done[job_id]["started_at"] for job_id in ordered}
    batch, high = ordered[:2], ordered[4:]
    assert max(started[j] for j in high) < min(started[j] for j in batch), started
    assert all(job["state"] == "succeeded" for job in done.values())


def test_cancel_a_queued_job_and_a_job_running_on_another_worker(fleet: Fleet) -> None:
    running = [fleet.submit_ok(**LONG) for _ in HOSTS]
    queued = fleet.submit_ok()
    fleet.wait_states(running, ("running",), deadline_s=60)
    wait_for(lambda: all(fleet.job(j)["progress"]["step"] >= 1 for j in running), 60, "the jobs to be denoising")
    response = requests.post(f"{fleet.api.url}/api/jobs/{queued}/cancel", timeout=10)
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    for job_id in running:
        assert requests.post(f"{fleet.api.url}/api/jobs/{job_id}/cancel", timeout=10).status_code == 202
    ended = fleet.wait_states(running, FINAL, deadline_s=60)
    assert [job["state"] for job in ended] == ["cancelled"] * 3, ended
    assert all(job["progress"]["step"] < 100 for job in ended)
    assert fleet.job(queued)["state"] == "cancelled"
    assert fleet.job(queued)["started_at"] is None  # no worker ever took it


def test_the_fleet_view_shows_each_worker_its_job_and_the_shared_queue_through_the_monitor(fleet: Fleet) -> None:
    blockers = [fleet.submit_ok(**LONG) for _ in HOSTS]
    waiting = [fleet.submit_ok(), fleet.submit_ok(priority="batch")]
    fleet.wait_states(blockers, ("running",), deadline_s=60)

    def fleet_view() -> dict[str, Any]:
        return requests.get(f"{fleet.api.url}/api/fleet", timeout=10).json()

    # Each worker names the job it runs from its next announcement (every third of the lease).
    wait_for(lambda: {w["job_id"] for w in fleet_view()["workers"]} == set(blockers), 15, "the announcements")
    view = fleet_view()
    workers = view["workers"]
    assert sorted(w["host"] for w in workers) == sorted(HOSTS)
    assert {w["state"] for w in workers} == {"busy"}
    assert all(w["gpu"] == "cpu" and w["model"] and w["ready"] for w in workers)
    assert all(0 <= w["heartbeat_age_s"] <= float(LEASE_S) for w in workers)  # rewritten every lease/3
    depth = {p["priority"]: p["pending"] for p in view["queue"]["priorities"]}
    assert (view["queue"]["mode"], depth) == ("queue", {"high": 0, "normal": 1, "batch": 1})
    # The monitor reads the same through its --generator-url: a CPU worker has no GPU sample, and says so.
    seen = requests.get(f"{fleet.monitor.url}/monitor/api/fleet", timeout=10).json()
    assert {(w["host"], w["job_id"]) for w in seen["workers"]} == {(w["host"], w["job_id"]) for w in workers}
    assert all(w["device"] is None and w["device_note"] is None for w in seen["workers"])
    # The page's advice asks the monitor about one of the fleet's workers (a CPU one: by time), never a 500.
    advice = requests.get(f"{fleet.api.url}/api/recommendation", timeout=10)
    assert advice.status_code == 200, advice.text
    assert advice.json()["basis"] == "time"
    for job_id in blockers:
        requests.post(f"{fleet.api.url}/api/jobs/{job_id}/cancel", timeout=10)
    fleet.wait_states(blockers + waiting, FINAL, deadline_s=120)
    wait_for(lambda: {w["state"] for w in fleet_view()["workers"]} == {"idle"}, 30, "every worker to be idle")


def test_redis_restarted_mid_run_loses_no_accepted_job(fleet: Fleet) -> None:
    job_ids = [fleet.submit_ok() for _ in range(6)]
    wait_for(lambda: any(fleet.job(j)["state"] != "queued" for j in job_ids), 60, "a job to start")
    fleet.redis.kill()
    started = time.monotonic()
    refused = fleet.submit()
    assert time.monotonic() - started < 15  # an answer, not a hang
    assert refused.status_code == 503, refused.text
    assert "Redis" in refused.json()["error"]
    assert requests.get(f"{fleet.api.url}/ready", timeout=10).status_code == 503
    fleet.redis.start()
    done = fleet.wait_states(job_ids, FINAL, deadline_s=180)
    assert [job["state"] for job in done] == ["succeeded"] * 6, (done, fleet.logs())
    assert fleet.submit().status_code == 202  # and the API takes jobs again


def test_a_worker_killed_mid_job_has_its_job_run_again_elsewhere_once(fleet: Fleet) -> None:
    job_id = fleet.submit_ok(**LONG)
    wait_for(lambda: fleet.job(job_id)["progress"]["step"] >= 2, 60, "the job to be denoising")
    victim = fleet.job(job_id)["host"]
    fleet.workers[victim].kill()
    (done,) = fleet.wait_states([job_id], FINAL, deadline_s=120)
    assert done["state"] == "succeeded", (done, fleet.logs())
    assert done["host"] != victim
    assert any("stopped with its worker" in note for note in done["notes"]), done["notes"]
    assert done["progress"]["step"] == 100
    # The dead worker's unacknowledged message may come back later: it finds the job ended and skips it.
    assert fleet.job(job_id)["state"] == "succeeded"
