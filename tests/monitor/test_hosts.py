"""A host name set on the generator only (or the monitor only) never silently empties a view."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.web.context import get_context
from tests.monitor.history import NOW_NS, NOW_S, gpu_sample, job_events


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/m.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name="analyst-box",
    )
    app = create_app(config, clock_ns=lambda: NOW_NS)
    yield app
    get_context(app).close()


def feed(app: Flask) -> None:
    """Samples as the monitor's host name; a job as the generator's default name, 'vm'."""
    events = job_events("j1", submitted_s=NOW_S - 600, shape=JobShape(512, 16, 20), run_s=5.0, peak_bytes=1, host="vm")
    answer = app.test_client().post("/monitor/api/events", json={"events": [e.to_dict() for e in events]})
    assert answer.status_code == 200
    ctx = get_context(app)
    ctx.writer.write([replace(gpu_sample(used=10**9), tags={"host": "analyst-box", "gpu": "0"})])
    assert ctx.writer.flush()


def test_targets_list_hosts_seen_in_jobs_and_samples_and_warn_of_a_split(app: Flask) -> None:
    feed(app)
    body = app.test_client().get("/monitor/api/targets").get_json()
    assert body["hosts"] == ["analyst-box", "vm"]
    assert body["hosts_with_jobs"] == ["vm"]
    assert "jobs arrived tagged host vm, which sent no samples" in body["warning"]
    assert "I2V_HOST_NAME" in body["warning"]


def test_ingest_logs_once_that_events_carry_another_host_name(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monitor.storage.ingest"):
        feed(app)
        feed(app)
    warnings = [r for r in caplog.records if "events arrive tagged host 'vm'" in r.getMessage()]
    assert len(warnings) == 1
    assert get_context(app).ingest.event_hosts == {"vm"}
    assert app.test_client().get("/monitor/api/status").get_json()["event_hosts"] == ["vm"]


@pytest.mark.parametrize("report", ["jobs.csv", "gpu.csv", "hosts.csv", "aggregate.csv"])
def test_an_unknown_host_is_answered_as_unknown_not_as_empty(app: Flask, report: str) -> None:
    feed(app)
    client = app.test_client()
    unknown = client.get(f"/monitor/api/reports/{report}?since=1h&host=nosuch")
    assert unknown.status_code == 404
    assert unknown.get_json()["error"] == (
        "unknown host 'nosuch': no samples and no jobs in the span; hosts seen then: analyst-box, vm"
    )
    assert client.get(f"/monitor/api/reports/{report}?since=1h&host=vm").status_code == 200
    assert client.get(f"/monitor/api/reports/{report}?since=1h&host=analyst-box").status_code == 200


def test_hosts_csv_has_a_row_per_bucket_and_host(app: Flask) -> None:
    from monitor.storage.base import Point

    ctx = get_context(app)
    ctx.writer.write(
        [
            Point("host_sample", {"host": "analyst-box"}, {"cpu_ratio": r, "memory_total_bytes": 8 * 10**9}, t)
            for r, t in ((0.25, NOW_NS - 90 * 10**9), (0.75, NOW_NS - 80 * 10**9))
        ]
    )
    assert ctx.writer.flush()
    text = app.test_client().get("/monitor/api/reports/hosts.csv?since=5m&bucket=1m").get_data(as_text=True)
    header, *rows = [line.split(",") for line in text.strip().split("\r\n")]
    assert header[:5] == ["bucket_start", "host", "samples", "cpu_ratio_mean", "cpu_ratio_max"]
    assert [(r[1], r[2], float(r[3]), float(r[4])) for r in rows] == [("analyst-box", "2", 0.5, 0.75)]
