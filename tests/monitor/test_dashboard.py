"""The dashboard blueprint: the page and Chart.js are served, and its three reads (targets, quality, queue)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from common.events import Event
from monitor.analysis.queue import queue_steps
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Point
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, event_to_point
from monitor.web import dashboard
from monitor.web.context import NODE_MODULES, get_context

S = 1_000_000_000
NOW_NS = 1_714_565_400 * S  # 2024-05-01T12:10:00Z
NOW_MS = NOW_NS // 1_000_000


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name="node-a",
        alert_state_path=None,
    )
    built = create_app(config, clock_ns=lambda: NOW_NS)
    yield built
    get_context(built).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def write(app: Flask, points: list[Point]) -> None:
    get_context(app).writer.write(points)
    assert get_context(app).writer.flush()


def test_the_page_loads_its_script_and_chart_js_from_this_monitor(client: FlaskClient) -> None:
    page = client.get("/monitor/").get_data(as_text=True)
    loads = re.findall(r'<(?:script|link)[^>]* (?:src|href)="([^"]+)"', page)
    assert loads == [
        "/monitor/static/dashboard.css",
        "/monitor/vendor/chart.umd.min.js",
        "/monitor/static/dashboard.js",
    ]
    links = re.findall(r'<a [^>]*href="([^"]+)"', page)
    assert links == ["http://127.0.0.1:7860/", "/monitor/"]  # the generator's tab, this one
    for path in loads:
        with client.get(path) as answer:  # a streamed file: closing it closes the file
            assert answer.status_code == 200, path


def test_chart_js_is_served_from_node_modules_and_nothing_else_is(client: FlaskClient, tmp_path: Path) -> None:
    if not (NODE_MODULES / dashboard.VENDOR_FILES["chart.umd.min.js"]).is_file():
        pytest.fail("node_modules/chart.js is missing: run `npm install` (make test does it)")
    with client.get("/monitor/vendor/chart.umd.min.js") as answer:
        assert answer.status_code == 200
        assert answer.mimetype == "text/javascript"
        assert b"Chart.js v4.6.1" in answer.data[:300]
    assert client.get("/monitor/vendor/package.json").status_code == 404
    assert client.get("/monitor/vendor/..%2Fpackage.json").status_code == 404


def test_a_missing_chart_js_says_how_to_install_it(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    get_context(app).node_modules = tmp_path
    answer = client.get("/monitor/vendor/chart.umd.min.js")
    assert answer.status_code == 404
    assert "npm install" in answer.get_json()["error"]


def test_targets_lists_the_hosts_and_gpus_that_sent_samples(app: Flask, client: FlaskClient) -> None:
    write(
        app,
        [
            Point(HOST_SAMPLE, {"host": "node-b"}, {"cpu_ratio": 0.5}, NOW_NS - 60 * S),
            Point(GPU_SAMPLE, {"host": "node-b", "gpu": "10"}, {"utilization_ratio": 0.1}, NOW_NS - 60 * S),
            Point(GPU_SAMPLE, {"host": "node-b", "gpu": "2"}, {"utilization_ratio": 0.1}, NOW_NS - 60 * S),
            Point(GPU_SAMPLE, {"host": "old", "gpu": "0"}, {"utilization_ratio": 0.1}, NOW_NS - 2 * 86_400 * S),
        ],
    )
    body = client.get("/monitor/api/targets").get_json()
    assert body["hosts"] == ["node-a", "node-b"]  # this monitor's host even before its first sample
    assert body["gpus"] == {"node-b": ["2", "10"]}
    assert body["this_host"] == "node-a"


def quality_point(job_id: str, at_s: int, **fields: Any) -> Point:
    return Point("quality", {"host": "node-a", "gpu": "0"}, {"job_id": job_id, **fields}, NOW_NS - at_s * S)


def test_quality_gives_each_jobs_latest_scores_oldest_first(app: Flask, client: FlaskClient) -> None:
    write(
        app,
        [
            quality_point("j1", 300),  # queued: nothing to draw
            quality_point("j1", 290, combined=0.7, smoothness=0.9, low_quality=False),
            quality_point("j2", 200, combined=0.4, smoothness=0.5, low_quality=True),
            quality_point("j1", 100, combined=0.8, smoothness=0.9, rating=5, low_quality=False),  # rated later
            quality_point("j3", 50, combined=0.9),
            quality_point("old", 7200, combined=0.9),
        ],
    )
    body = client.get("/monitor/api/quality?window=1h").get_json()
    assert [(s["job_id"], s["combined"]) for s in body["scores"]] == [("j2", 0.4), ("j1", 0.8), ("j3", 0.9)]
    assert body["scores"][0]["low_quality"] is True
    assert body["scores"][1]["rating"] == 5
    assert client.get("/monitor/api/quality?gpu=1").get_json()["scores"] == []
    assert client.get("/monitor/api/quality?window=soon").status_code == 400


def state(job_id: str, status: str, at_s: float, duration_s: float = 0.0) -> dict[str, Any]:
    """A job event as point_to_event returns it: `ended_at` is `at_s` seconds after NOW."""
    from monitor.storage.schema import iso_from_us

    end_us = (NOW_NS // 1000) + round(at_s * 1e6)
    return {
        "job_id": job_id,
        "kind": "job",
        "status": status,
        "started_at": iso_from_us(end_us - round(duration_s * 1e6)),
        "ended_at": iso_from_us(end_us),
    }


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([], [(-600, 0, 0), (0, 0, 0)], id="no jobs"),
        pytest.param(
            [state("a", "queued", -500), state("a", "running", -400), state("a", "succeeded", -300, duration_s=200)],
            [(-600, 0, 0), (-500, 1, 0), (-400, 0, 1), (-300, 0, 0), (0, 0, 0)],
            id="one job: the final event spans the job and counts at its end",
        ),
        pytest.param(
            [
                state("a", "queued", -500), state("b", "queued", -490), state("a", "running", -480),
                state("a", "failed", -300, 200), state("b", "running", -300), state("b", "cancelled", -100, 390),
            ],
            [(-600, 0, 0), (-500, 1, 0), (-490, 2, 0), (-480, 1, 1), (-300, 0, 1), (-100, 0, 0), (0, 0, 0)],
            id="two jobs, the second waits for the first",
        ),
        pytest.param(
            [state("a", "queued", -7000), state("a", "running", -200)],
            [(-600, 1, 0), (-200, 0, 1), (0, 0, 1)],
            id="queued before the window: waiting from its start",
        ),
        pytest.param(
            [state("a", "queued", -100), state("a", "cancelled", -50, 50)],
            [(-600, 0, 0), (-100, 1, 0), (-50, 0, 0), (0, 0, 0)],
            id="cancelled while queued",
        ),
        pytest.param(
            [state("a", "queued", -100), state("a", "queued", -100), state("a", "running", 30)],
            [(-600, 0, 0), (-100, 1, 0), (0, 1, 0)],
            id="a replayed event counts once; one after the end is left out",
        ),
    ],
)  # fmt: skip
def test_queue_steps_rebuild_the_queue_from_job_state_events(
    events: list[dict[str, Any]], expected: list[tuple[int, int, int]]
) -> None:
    steps = queue_steps(events, NOW_MS - 600_000, NOW_MS)
    assert [((p["t_ms"] - NOW_MS) // 1000, p["pending"], p["running"]) for p in steps] == expected


def test_queue_reads_the_stored_job_events(app: Flask, client: FlaskClient) -> None:
    def event(status: str, at_s: int) -> Point:
        started = state("j1", status, at_s)["started_at"]
        return event_to_point(Event(job_id="j1", host="node-a", gpu="0", kind="job", status=status, started_at=started))

    write(app, [event("queued", -120), event("running", -60)])
    body = client.get("/monitor/api/queue?window=5m").get_json()
    assert body["source"] == "job_event"
    assert [(p["pending"], p["running"]) for p in body["points"]] == [(0, 0), (1, 0), (0, 1), (0, 1)]
    assert client.get("/monitor/api/queue?window=5m&host=node-b").get_json()["points"][-1]["running"] == 0
