"""The read API over HTTP against the real app, on SQLite and on a real influxd."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from common.events import Event
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Point
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE
from monitor.web.context import get_context
from tests.servers import AppServer, InfluxServer

S = 1_000_000_000
NOW_NS = 1_714_565_400 * S  # 2024-05-01T12:10:00Z
JOB_START = "2024-05-01T12:00:00.000000Z"


@dataclass
class Monitor:
    url: str
    app: Flask

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}/monitor/api/{path}", params=params, timeout=10)

    def post_events(self, events: list[dict]) -> None:
        response = requests.post(f"{self.url}/monitor/api/events", json={"events": events}, timeout=10)
        assert response.status_code == 200, response.text
        assert get_context(self.app).writer.flush()

    def write(self, points: list[Point]) -> None:
        get_context(self.app).writer.write(points)
        assert get_context(self.app).writer.flush()


class FakeSampler:
    """The one seam: the sampler's health() as the API reads it."""

    def health(self) -> dict[str, Any]:
        return {"last_sample_time_s": NOW_NS / S - 1, "lag_s": 0.4, "gpu_count": 2, "running": True}


def start(tmp_path: Path, store_url: str, sampler: object = None) -> tuple[AppServer, Flask]:
    config = replace(
        MonitorConfig(), store_url=store_url, spool_dir=tmp_path / "spool", data_dir=tmp_path, host_name="node-a"
    )
    app = create_app(config, sampler=sampler, clock_ns=lambda: NOW_NS)  # type: ignore[arg-type]
    return AppServer(app).start(), app


@pytest.fixture(params=["sqlite", "influxdb"])
def monitor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Monitor]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/monitor.db"
    else:
        influxd: InfluxServer = request.getfixturevalue("influxd")
        url = influxd.store_url(f"api_{uuid.uuid4().hex[:8]}")
    server, app = start(tmp_path, url)
    yield Monitor(server.url, app)
    server.stop()
    get_context(app).close()


def gpu_samples(seconds: int, every_s: int = 2) -> list[Point]:
    points = []
    for ago in range(0, seconds, every_s):
        for gpu in ("0", "1"):
            fields = {"utilization_ratio": 0.5 if gpu == "0" else 1.0, "memory_used_bytes": 1000 + ago, "up": True}
            points.append(Point(GPU_SAMPLE, {"host": "node-a", "gpu": gpu}, fields, NOW_NS - (ago + 1) * S))
    return points


def test_series_returns_one_series_per_gpu_for_the_window(monitor: Monitor) -> None:
    monitor.write(gpu_samples(600))
    body = monitor.get("series", measurement=GPU_SAMPLE, window="5m").json()
    assert body["bucket_s"] == 1
    assert [s["tags"] for s in body["series"]] == [{"host": "node-a", "gpu": "0"}, {"host": "node-a", "gpu": "1"}]
    first = body["series"][0]
    assert len(first["points"]) == 150  # a sample every 2 s over 300 s
    assert first["points"][0]["mean"]["utilization_ratio"] == 0.5
    assert "up" not in first["points"][0]["mean"]  # booleans are not averaged
    assert first["points"][0]["count"] == {"utilization_ratio": 1, "memory_used_bytes": 1}
    assert first["points"][0]["samples"] == 1  # 1 s buckets over 2 s samples: one sample each
    only_gpu1 = monitor.get("series", window="5m", gpu="1", fields="memory_used_bytes").json()
    assert [s["tags"]["gpu"] for s in only_gpu1["series"]] == ["1"]
    assert set(only_gpu1["series"][0]["points"][0]["max"]) == {"memory_used_bytes"}


def test_a_cards_history_follows_its_uuid_across_an_index_change(monitor: Monitor) -> None:
    moved, other = "GPU-aaaaaaaa-0000-0000-0000-000000000001", "GPU-bbbbbbbb-0000-0000-0000-000000000002"
    # The first 100 s the card sits at index 0; then it is moved to index 1 and another card takes index 0.
    placements = [(moved, "0", other, "1")] * 50 + [(other, "0", moved, "1")] * 50
    points = [
        Point(
            GPU_SAMPLE,
            {"host": "node-a", "gpu": gpu, "uuid": uuid},
            {"utilization_ratio": 0.5},
            NOW_NS - (200 - 2 * i) * S,
        )
        for i, (uuid_a, gpu_a, uuid_b, gpu_b) in enumerate(placements)
        for uuid, gpu in ((uuid_a, gpu_a), (uuid_b, gpu_b))
    ]
    monitor.write(points)

    body = monitor.get("series", window="5m", uuid=moved).json()

    assert [(s["tags"]["gpu"], len(s["points"])) for s in body["series"]] == [("0", 50), ("1", 50)]
    assert {s["tags"]["uuid"] for s in body["series"]} == {moved}


def test_a_day_is_downsampled_to_at_most_about_300_buckets(monitor: Monitor) -> None:
    monitor.write(gpu_samples(86_400, every_s=60))
    body = monitor.get("series", window="24h", gpu="0").json()
    assert body["bucket_s"] == 288
    points = body["series"][0]["points"]
    assert 290 <= len(points) <= 301
    assert all(p["t_ms"] % (288 * 1000) == 0 for p in points)
    # Read from the rollups: each bucket says how many of the minute samples it averages, and none is lost.
    assert {p["samples"] for p in points[1:-1]} <= {4, 5}
    assert sum(p["samples"] for p in points) == 1440


def test_host_series(monitor: Monitor) -> None:
    monitor.write([Point(HOST_SAMPLE, {"host": "node-a"}, {"cpu_ratio": 0.25}, NOW_NS - 5 * S)])
    body = monitor.get("series", measurement=HOST_SAMPLE, window="1m", host="node-a").json()
    assert body["series"][0]["points"][0]["max"]["cpu_ratio"] == 0.25
    assert monitor.get("series", measurement=HOST_SAMPLE, window="1m", host="elsewhere").json()["series"] == []


def job_events(job_id: str, *, fail: bool = False) -> list[dict]:
    params = {"resolution": 512, "num_frames": 16, "steps": 3, "guidance_scale": 9.0, "fps": 8, "seed": 1}

    def ev(at_s: float, kind: str, duration_s: float = 0.0, **extra: Any) -> dict:
        base_s = 1_714_564_800 + at_s
        started = f"2024-05-01T12:00:{int(base_s % 60):02d}.{round(base_s % 1 * 1e6):06d}Z"
        return Event(
            job_id=job_id, host="node-a", gpu="0", kind=kind, started_at=started, duration_s=duration_s,
            params=params, prompt="a fox", **extra,
        ).to_dict()  # fmt: skip

    events = [
        ev(0, "job", status="queued"),
        ev(1, "job", status="running"),
        ev(1, "stage", 0.5, stage="text_encoding"),
        *[ev(1.5 + 0.2 * i, "stage", 0.2, stage="denoising_step", step=i + 1, total_steps=3) for i in range(3)],
    ]
    if fail:
        events.append(
            ev(2.1, "job", status="failed", error="CUDA out of memory", suggestion="try 256p or fewer frames")
        )
    else:
        events += [ev(2.1, "stage", 0.4, stage="decode_video"), ev(2.5, "job", status="succeeded", video_path="a.mp4")]
    return events


def test_jobs_are_rebuilt_from_their_events_with_the_stage_breakdown(monitor: Monitor) -> None:
    monitor.post_events(job_events("job-ok"))
    body = monitor.get("jobs", window="1h").json()
    (job,) = body["jobs"]
    assert job["id"] == "job-ok"
    assert job["status"] == "succeeded"
    assert job["params"]["resolution"] == 512
    assert job["submitted_at"] == "2024-05-01T12:00:00.000000Z"
    assert job["finished_at"] == "2024-05-01T12:00:02.500000Z"
    assert job["total_s"] == pytest.approx(2.5)
    assert job["stages"]["denoising"]["steps"] == 3
    assert job["stages"]["denoising"]["mean_step_s"] == pytest.approx(0.2)
    assert job["stages"]["decode_video"]["duration_s"] == pytest.approx(0.4)
    assert job["video_path"] == "a.mp4"
    assert monitor.get("jobs", window="1h", host="other").json()["jobs"] == []


def test_job_detail_lists_events_in_order_with_error_and_suggestion(monitor: Monitor) -> None:
    monitor.post_events(job_events("job-ok"))
    monitor.post_events(job_events("job-oom", fail=True))
    detail = monitor.get("jobs/job-oom").json()
    assert detail["status"] == "failed"
    assert detail["error"] == "CUDA out of memory"
    assert detail["suggestion"] == "try 256p or fewer frames"
    kinds = [(e["kind"], e["status"] or e["stage"]) for e in detail["events"]]
    assert kinds[:3] == [("job", "queued"), ("job", "running"), ("stage", "text_encoding")]
    assert kinds[-1] == ("job", "failed")
    assert [e["step"] for e in detail["events"] if e["stage"] == "denoising_step"] == [1, 2, 3]
    listing = monitor.get("jobs", window="1h", limit=1).json()
    assert listing["count"] == 1


@pytest.mark.parametrize(
    ("path", "params", "status", "needle"),
    [
        ("series", {"window": "5 minutes"}, 400, "window must be"),
        ("series", {"window": "0s"}, 400, "between 1s"),
        ("series", {"measurement": "cpu"}, 400, "gpu_sample or host_sample"),
        ("series", {"fields": "utilization_ratio,bogus"}, 400, "bogus"),
        ("jobs", {"limit": "many"}, 400, "limit must be an integer"),
        ("jobs", {"limit": "0"}, 400, "from 1 to 500"),
        ("jobs/no-such-job", {}, 404, "widen ?window="),
        ("nowhere", {}, 404, "no such endpoint"),
    ],
)
def test_bad_requests_get_json_that_says_what_to_change(
    monitor: Monitor, path: str, params: dict, status: int, needle: str
) -> None:
    response = monitor.get(path, **params)
    assert response.status_code == status
    assert needle in response.json()["error"]


def test_a_wrong_method_is_a_json_405(monitor: Monitor) -> None:
    response = requests.delete(f"{monitor.url}/monitor/api/status", timeout=10)
    assert response.status_code == 405
    assert "method" in response.json()["error"]


def test_status_reports_the_store_and_no_sampler(monitor: Monitor) -> None:
    monitor.write(gpu_samples(10))
    body = monitor.get("status").json()
    assert body["store_reachable"] is True
    assert body["spool_pending"] == 0
    assert body["dropped"] == 0
    assert body["sampler"] is None
    assert body["writer"]["points_written_total"] == 10


def test_status_includes_the_sampler_health(tmp_path: Path) -> None:
    server, app = start(tmp_path, f"sqlite:///{tmp_path}/m.db", sampler=FakeSampler())
    try:
        body = requests.get(f"{server.url}/monitor/api/status", timeout=10).json()
    finally:
        server.stop()
        get_context(app).close()
    assert body["gpu_count"] == 2
    assert body["sampler_lag_s"] == 0.4
    assert body["sampler"]["running"] is True
