"""End to end over HTTP, what a user's job gives: its energy and cost, a rating with its own token, its story.

One tiny job on the real generator, watched by the real monitor whose GPU stand-in draws a steady 250 W (its
energy counter read on every tick); the CPU worker plays the job on that GPU, as the alert tests do.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Stack
from tests.servers import wait_for


def rate(url: str, stars: int, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(url, json={"stars": stars}, headers=headers, timeout=10)


def test_a_users_job_costs_energy_is_rated_with_its_token_and_tells_its_story(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack.generator.runtime.workers[0], "gpu", "0")
    submitted = stack.generator.submit().json()
    job_id, token = submitted["job_id"], submitted["rating_token"]
    job = stack.generator.wait_state(job_id, ("succeeded", "failed", "cancelled"), deadline_s=300)
    assert job["state"] == "succeeded", job

    def quality() -> dict[str, Any]:
        answer = stack.api(f"/jobs/{job_id}/quality")
        return answer.json() if answer.status_code == 200 else {}

    wait_for(lambda: quality().get("status") == "scored", 120, "the clip to be scored")
    before = quality()["combined"]

    # Rated by its submitter through the generator, with the token the submission returned.
    stars = 5 if before < 0.5 else 1
    via_generator = f"{stack.generator.url}/api/jobs/{job_id}/rating"
    assert rate(via_generator, stars, "forged").status_code == 401
    rated = rate(via_generator, stars, token)
    assert rated.status_code == 200, rated.text
    assert rated.json()["rating"] == stars
    assert "rating" in rated.json()["parts_used"]
    assert rated.json()["combined"] != pytest.approx(before, abs=1e-3)
    assert quality()["combined"] == rated.json()["combined"]
    # The monitor checks the job token itself (keyed from the admin token both share): it can be sent there too.
    at_monitor = f"{stack.monitor_url}/monitor/api/jobs/{job_id}/rating"
    assert rate(at_monitor, 3, "forged").status_code == 401
    assert rate(at_monitor, 3, None).status_code == 401
    assert rate(at_monitor, 3, token).json()["rating"] == 3

    # Its GPU energy: the counter's increase over its span, added once a reading follows its end.
    def row() -> dict[str, Any]:
        rows = stack.api("/jobs?limit=10").json()["jobs"]
        return next((r for r in rows if r["id"] == job_id), {})

    wait_for(lambda: row().get("energy_j") is not None, 60, "the job's energy in its summary")
    summary = row()
    assert summary["gpu_seconds"] == pytest.approx(summary["run_s"], rel=1e-6)
    assert summary["energy_j"] == pytest.approx(stack.gpus.watts * summary["run_s"], rel=0.05)

    def csv_row() -> dict[str, str]:
        text = requests.get(f"{stack.monitor_url}/monitor/api/reports/jobs.csv?since=1h", timeout=30).text
        return next(r for r in csv.DictReader(io.StringIO(text)) if r["job_id"] == job_id)

    # The rating's quality point reaches the store with the writer's next batch.
    wait_for(lambda: csv_row()["rating"] == "3", 30, "the rating in jobs.csv")
    line = csv_row()
    energy, seconds = float(line["energy_j"]), float(line["gpu_seconds"])
    assert energy == pytest.approx(summary["energy_j"])
    assert float(line["cost"]) == pytest.approx(energy / 3.6e6 * 0.30 + seconds / 3600 * 2.00, abs=1e-6)

    story = stack.api(f"/jobs/{job_id}/story").json()
    assert story["cost"]["energy_j"] == pytest.approx(energy)
    assert story["cost"]["cost"] == pytest.approx(float(line["cost"]), abs=1e-6)
    assert story["device"]["device"] == "gpu"
    assert any(p["utilization_ratio"] == pytest.approx(0.9) for p in story["device"]["points"])
    assert story["quality"]["rating"] == 3
    assert [s["stage"] for s in story["timeline"]["stages"]][-1] == "export"
    assert story["notes"] == summary["notes"]  # admission's (none on a CPU worker: it checks no memory)
    video = requests.get(story["video_url"], timeout=30)
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
