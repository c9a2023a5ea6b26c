"""End to end over HTTP: tiny-model jobs on the real generator, watched by the real monitor.

Each finished job costs about 10 s of CPU, so the tests share one served pair and keep to the smallest job
(256 px, 8 frames, 10 steps); out-of-memory jobs are injected and fail in well under a second.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import torch

from tests.e2e.conftest import ADMIN_TOKEN, Stack
from tests.servers import wait_for

FINAL = ("succeeded", "failed", "cancelled")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def alerts(stack: Stack) -> dict[str, Any]:
    """Return GET /monitor/api/alerts."""
    return stack.api("/alerts").json()


def active(stack: Stack, name: str, severity: str) -> dict[str, Any] | None:
    """Return the active alert with this name and severity, if any."""
    return next((a for a in alerts(stack)["active"] if (a["alertname"], a["severity"]) == (name, severity)), None)


def metric(url: str, line_start: str) -> float | None:
    """Return the value of the first /metrics sample line starting with `line_start`."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_finished_job_is_scored_automatically_and_a_rating_changes_its_score(stack: Stack) -> None:
    job_id = stack.generator.submit().json()["job_id"]
    assert stack.generator.wait_state(job_id, FINAL, deadline_s=300)["state"] == "succeeded"

    def scored() -> bool:
        answer = stack.api(f"/jobs/{job_id}/quality")
        return answer.status_code == 200 and answer.json()["status"] in ("scored", "unscorable")

    wait_for(scored, 60, "the job's events to reach the monitor and its clip to be scored")
    result = stack.api(f"/jobs/{job_id}/quality").json()
    assert result["status"] == "scored", result
    assert result["clip_score"] is not None  # the CLIP folder given by --clip-model is in use
    assert result["smoothness"] is not None
    assert "rating" not in result["parts_used"]

    # The job's own events were ingested and stored too (the writer flushes them in batches).
    def stored_as_succeeded() -> bool:
        answer = stack.api(f"/jobs/{job_id}")
        return answer.status_code == 200 and answer.json()["status"] == "succeeded"

    wait_for(stored_as_succeeded, 30, "the job's events, its end included, in the store")

    rating = 5 if result["combined"] < 0.5 else 1  # move the score visibly either way
    rated = requests.post(
        f"{stack.monitor_url}/monitor/api/jobs/{job_id}/rating", json={"stars": rating}, headers=ADMIN, timeout=10
    ).json()
    assert rated["rating"] == rating
    assert rated["parts_used"].endswith(",rating")
    assert rated["combined"] != pytest.approx(result["combined"], abs=1e-3)
    assert stack.api(f"/jobs/{job_id}/quality").json()["combined"] == rated["combined"]
    assert metric(stack.monitor_url, "i2v_quality_score_count") == 1


def test_severe_gpu_memory_cancels_the_running_job(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stand-in GPU is GPU 0; the CPU worker plays the job running on it (the cancel matches the GPU).
    monkeypatch.setattr(stack.generator.runtime.workers[0], "gpu", "0")
    job_id = stack.generator.submit().json()["job_id"]
    wait_for(lambda: stack.generator.job(job_id)["progress"]["step"] >= 2, 120, "two denoising steps")
    try:
        stack.gpus.used_ratio = 0.97
        job = stack.generator.wait_state(job_id, FINAL, deadline_s=60)
        assert job["state"] == "cancelled", job
        assert job["progress"]["step"] < job["progress"]["total_steps"]

        severe = active(stack, "GpuMemoryHigh", "severe")
        assert severe is not None
        assert (severe["state"], severe["labels"]["gpu"], severe["value"]) == ("firing", "0", pytest.approx(0.97))
        (cancel,) = [o for o in alerts(stack)["actions"]["recent"] if o["action"] == "cancel_job"]
        assert (cancel["result"], cancel["job_id"]) == ("success", job_id)
        assert metric(stack.monitor_url, 'i2v_remediation_actions_total{action="cancel_job",result="success"}') == 1
    finally:
        stack.gpus.used_ratio = 0.10
    wait_for(lambda: active(stack, "GpuMemoryHigh", "severe") is None, 10, "the severe alert to resolve")
    (resolved, *_) = [a for a in alerts(stack)["history"] if a["alertname"] == "GpuMemoryHigh"]
    assert (resolved["severity"], resolved["state"]) == ("severe", "resolved")


def _iso_s(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_three_ooms_restart_the_generator_once_and_a_fourth_within_the_back_off_does_not(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forward_that_runs_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr(stack.generator.runtime.workers[0].pipe.unet, "forward", forward_that_runs_out_of_memory)

    def fail_one() -> None:
        job = stack.generator.wait_state(stack.generator.submit().json()["job_id"], FINAL, deadline_s=60)
        assert job["state"] == "failed", job
        assert job["error"].startswith("CUDA out of memory")

    for _ in range(3):
        fail_one()
    wait_for(stack.restart_marker.exists, 15, "the restart command to run")
    streak = active(stack, "GeneratorOomStreak", "fatal")
    assert streak is not None
    assert streak["state"] == "firing"

    fail_one()  # the fourth, while the streak fires and the restart back-off holds
    wait_for(lambda: (active(stack, "GeneratorOomStreak", "fatal") or {}).get("value") == 4, 15, "the 4th OOM seen")
    seen_at = datetime.now(UTC).timestamp()

    def asked_again() -> bool:
        asked = alerts(stack)["actions"]["restart_generator"]["last_asked_at"]
        return asked is not None and _iso_s(asked) > seen_at

    wait_for(asked_again, 15, "the restart action to be asked again after the fourth OOM")
    assert stack.restart_marker.read_text() == "restart\n"
    restart = alerts(stack)["actions"]["restart_generator"]
    assert (restart["restarts_in_window"], restart["gave_up"]) == (1, False)
    assert restart["next_allowed_at"] is not None
    success = 'i2v_remediation_actions_total{action="restart_generator",result="success"}'
    assert metric(stack.monitor_url, success) == 1


def test_every_request_is_a_row_and_jobs_csv_the_summary_and_the_dictionary_agree(stack: Stack) -> None:
    # The jobs above succeeded, were cancelled or failed; two more submissions are refused at input.
    refused = [
        stack.generator.submit(resolution="300"),
        stack.generator.submit(prompt=""),
    ]
    assert [r.status_code for r in refused] == [400, 400]
    generator_jobs = requests.get(f"{stack.generator.url}/api/jobs?limit=500", timeout=10).json()["jobs"]
    expected = {job["job_id"]: job["state"] for job in generator_jobs if job["state"] in FINAL}

    found: list[dict[str, str]] = []

    def every_row_there() -> bool:
        text = requests.get(f"{stack.monitor_url}/monitor/api/reports/jobs.csv?since=1h", timeout=10).text
        found[:] = csv.DictReader(io.StringIO(text))
        ended = {r["job_id"]: r["status"] for r in found if r["status"] != "rejected"}
        return ended == expected and sum(r["status"] == "rejected" for r in found) >= 2

    wait_for(every_row_there, 60, "every ended job and both refusals in jobs.csv")
    rejected = [r for r in found if r["status"] == "rejected"]
    assert {r["error"].split(":")[0] for r in rejected} >= {"resolution", "prompt"}
    assert all(r["video_path"] == "" and r["run_s"] == "" for r in rejected)

    summary = stack.api("/summary?since=1h").json()["configurations"]
    for status in ("succeeded", "failed", "cancelled", "rejected"):
        in_csv = sum(r["status"] == status for r in found)
        assert sum(c[status] for c in summary) == in_csv, status
    assert sum(c["jobs"] for c in summary) == len(found)

    dictionary = stack.api("/reports/columns").json()["jobs.csv"]
    assert [c["name"] for c in dictionary] == list(found[0])
