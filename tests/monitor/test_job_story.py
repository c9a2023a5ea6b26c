"""A job's whole story in one answer: its stage timeline, admission's notes, its GPU over its span, its cost."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from common.events import Event
from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage.base import Point
from monitor.storage.schema import HOST_SAMPLE
from monitor.web.context import get_context
from tests.monitor.history import NOW_NS, NOW_S, S, gpu_sample, job_events

NOTES = [
    "memory estimate from the table: 20.0 GB (the monitor did not answer)",
    "1024p with 32 frames needs about 24.8 GB but 18.0 GB is free: degraded to 768p with 32 frames",
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        generator_url="http://gen.example:7860",
        price_per_kwh=0.25,
    )
    served = create_app(config, clock_ns=lambda: NOW_NS)
    yield served
    get_context(served).close()


def with_notes(events: list[Event]) -> list[Event]:
    """Give the job's end event admission's notes, as the generator's state events carry them."""
    return [replace(e, notes=NOTES) if e.kind == "job" and e.status == "succeeded" else e for e in events]


def test_the_story_of_a_degraded_gpu_job(app: Flask) -> None:
    submitted = NOW_S - 100
    events = job_events(
        "story", submitted_s=submitted, shape=JobShape(768, 32, 20), run_s=30.0, peak_bytes=20 * 10**9,
        requested={"resolution": 1024, "num_frames": 32, "steps": 20, "guidance_scale": 9.0, "fps": 8},
    )  # fmt: skip
    client = app.test_client()
    batch = {"events": [e.to_dict() for e in with_notes(events)]}
    assert client.post("/monitor/api/events", json=batch).status_code == 200
    writer = get_context(app).writer
    samples = [
        gpu_sample(used=(10 + i) * 10**9, at_ns=int((submitted + 2 * i - 10) * S), utilization_ratio=0.9, energy_j=1e6)
        for i in range(30)
    ]
    writer.write(samples)
    assert writer.flush()

    body = client.get("/monitor/api/jobs/story/story").get_json()

    assert body["job"]["status"] == "succeeded"
    assert body["notes"] == NOTES
    assert body["degraded"]["requested"]["resolution"] == 1024
    assert body["degraded"]["effective"]["resolution"] == 768
    timeline = body["timeline"]
    assert timeline["marks"] == {"queued": 0.0, "running": 0.5, "ended": pytest.approx(30.5)}
    stages = [span["stage"] for span in timeline["stages"]]
    assert stages == ["text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export"]
    loop = next(span for span in timeline["stages"] if span["stage"] == "denoising")
    assert loop["steps"] == 20
    assert 0.5 < loop["start_s"] < loop["end_s"] < 30.5
    device = body["device"]
    assert device["device"] == "gpu"
    assert len(device["points"]) >= 10
    assert all(p["utilization_ratio"] == pytest.approx(0.9) for p in device["points"])
    assert device["points"][0]["t_ms"] < (submitted + 0.5) * 1000  # a few seconds of the GPU before it started
    assert body["cost"]["gpu_seconds"] == pytest.approx(30.0)
    assert body["cost"]["energy_j"] is None  # the counter had no reading after the end yet
    assert body["cost"]["prices"] == {"per_kwh": 0.25, "per_gpu_hour": None}
    assert body["video_url"] == "http://gen.example:7860/api/jobs/story/video"
    assert body["quality"] is None  # this monitor was built without a scorer


def test_a_cpu_job_shows_the_hosts_cpu_and_a_job_stopped_mid_loop_its_steps(app: Flask) -> None:
    events = job_events("cpu-fail", submitted_s=NOW_S - 60, shape=JobShape(256, 8, 10), run_s=6.0, peak_bytes=None,
                        gpu="cpu", status="failed", error="boom")  # fmt: skip
    client = app.test_client()
    assert client.post("/monitor/api/events", json={"events": [e.to_dict() for e in events]}).status_code == 200
    writer = get_context(app).writer
    writer.write([Point(HOST_SAMPLE, {"host": "node-a"}, {"cpu_ratio": 0.95}, int((NOW_S - 58) * S))])
    assert writer.flush()

    body = client.get("/monitor/api/jobs/cpu-fail/story").get_json()

    assert body["device"]["device"] == "cpu"
    assert body["device"]["points"][0]["cpu_ratio"] == pytest.approx(0.95)
    loop = next(span for span in body["timeline"]["stages"] if span["stage"] == "denoising")
    assert loop["steps"] == 5  # the failed job ran half its steps
    assert body["video_url"] is None
    assert body["cost"]["gpu_seconds"] is None


def test_an_unknown_job_is_a_404_that_says_what_to_do(app: Flask) -> None:
    answer = app.test_client().get("/monitor/api/jobs/nope/story")
    assert answer.status_code == 404
    assert "widen ?window=30d" in answer.get_json()["error"]
    assert app.test_client().get("/monitor/api/jobs/x/story?window=forever").status_code == 400
