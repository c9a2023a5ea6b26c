"""A generator on a CPU gets a time-based recommendation: from its jobs, else its warm-up, else the smallest job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from common.events import STARTUP_JOB_ID, Event
from common.sizing import CPU_FIRST_CLIP
from monitor.analysis.cpu_advice import TIME_LADDER
from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage.base import Point
from monitor.storage.schema import HOST_SAMPLE
from monitor.web.context import get_context
from tests.monitor.history import NOW_NS, NOW_S, gpu_sample, iso, job_events

HOST = "laptop"
SMALLEST = {**{k: CPU_FIRST_CLIP[k] for k in ("resolution", "num_frames", "steps")}, "guidance_scale": 9.0}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name=HOST,
    )
    served = create_app(config, clock_ns=lambda: NOW_NS)
    yield served
    get_context(served).close()


def ingest(client: FlaskClient, events: list[Event]) -> None:
    assert client.post("/monitor/api/events", json={"events": [e.to_dict() for e in events]}).status_code == 200
    assert get_context(client.application).writer.flush()


def warmup(seconds: float, at_s: float = NOW_S - 600) -> Event:
    """The warm-up stage event a generator on a CPU sends once its model is loaded (generator/worker.py)."""
    params = {"resolution": 256, "num_frames": 8, "steps": 1, "guidance_scale": 9.0, "fps": 8, "seed": 0}
    return Event(
        job_id=STARTUP_JOB_ID,
        host=HOST,
        gpu="cpu",
        kind="stage",
        stage="warmup",
        started_at=iso(at_s),
        duration_s=seconds,
        params=params,
    )


def recommendation(client: FlaskClient, query: str = "gpu=cpu") -> dict:
    response = client.get(f"/monitor/api/recommendation?{query}&host={HOST}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_with_nothing_measured_a_cpu_gets_the_smallest_job_not_a_404(app: Flask) -> None:
    client = app.test_client()
    get_context(app).writer.write([Point(HOST_SAMPLE, {"host": HOST}, {"cpu_ratio": 0.3}, NOW_NS - 10**9)])
    for query in ("gpu=cpu", "max_time_s=25"):  # named by the generator, or no GPU sampled on the host
        body = recommendation(client, query)
        assert body["basis"] == "time"
        assert body["recommended"] == SMALLEST
        assert body["fits"] is False
        assert body["gpu"]["gpu"] == "cpu"
        assert "nothing measured on laptop's CPU yet" in body["reason"]
        assert len(body["candidates"]) == len(TIME_LADDER)


def test_the_warm_up_alone_sizes_the_job_to_the_budget(app: Flask) -> None:
    client = app.test_client()
    # 2 s for 256p/8 frames/1 step: about 1 s a step; 256p/8/10 takes about 11 s (+50% margin: 16.5 s).
    ingest(client, [warmup(2.0)])
    body = recommendation(client)
    assert body["recommended"] == SMALLEST
    assert body["fits"] is True
    assert body["predicted"]["source"] == "warmup"
    assert body["predicted"]["time_s"] == pytest.approx(11.0)
    assert "from the generator's warm-up on laptop (2.0 s for 256p, 8 frames, 1 step)" in body["reason"]
    # A CPU four times as fast (the generator restarted on a faster host): 256p/16/30 takes 15.5 s + 7.75 s.
    ingest(client, [warmup(0.5, at_s=NOW_S - 60)])
    body = recommendation(client)
    assert body["recommended"] == {"resolution": 256, "num_frames": 16, "steps": 30, "guidance_scale": 9.0}
    assert body["predicted"]["time_s"] + body["predicted"]["time_margin_s"] <= 25


def test_jobs_this_cpu_ran_outweigh_the_warm_up_and_a_budget_widens_the_choice(app: Flask) -> None:
    client = app.test_client()
    events = [warmup(5.0)]
    for i in range(3):  # 256p/8/10 in 8 s: 0.72 s a step and 0.8 s outside the loop
        events += job_events(f"cpu-{i}", submitted_s=NOW_S - 300 + 20 * i, shape=JobShape(256, 8, 10), run_s=8.0,
                             peak_bytes=None, host=HOST, gpu="cpu")  # fmt: skip
    ingest(client, events)
    body = recommendation(client)
    assert body["predicted"]["source"] == "jobs"
    assert "learned from the last 3 job(s) this CPU ran on laptop" in body["reason"]
    # 256p/8/20: 15.2 s + 25% = 19 s fits 25 s; 256p/8/30: 22.4 s + 5.6 s does not.
    assert body["recommended"] == {"resolution": 256, "num_frames": 8, "steps": 20, "guidance_scale": 9.0}
    assert body["predicted"]["time_s"] == pytest.approx(15.2, rel=1e-3)
    # A minute's budget: 256p/16/30 (44.8 s + 11.2 s) fits, 512p/8/30 (89.6 s) does not.
    wider = recommendation(client, "gpu=cpu&max_time_s=60")
    assert wider["recommended"] == {"resolution": 256, "num_frames": 16, "steps": 30, "guidance_scale": 9.0}
    assert wider["budget_s"] == 60


def test_a_host_with_a_gpu_keeps_the_memory_based_answer(app: Flask) -> None:
    client = app.test_client()
    writer = get_context(app).writer
    writer.write([gpu_sample(used=10 * 10**9, host=HOST)])
    assert writer.flush()
    body = recommendation(client, "max_time_s=600")
    assert body["basis"] == "memory"
    assert body["gpu"]["gpu"] == "0"
    assert recommendation(client, "gpu=cpu")["basis"] == "time"  # a CPU worker beside the GPU is still asked for
