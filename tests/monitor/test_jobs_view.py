"""The jobs list: rows read back from `job_summary` points, plus the jobs still open; never a window of events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from common.events import STARTUP_JOB_ID, Event
from monitor.analysis.job_list import recent_jobs
from monitor.analysis.job_summary import JobSummarizer, summary_point, summary_row
from monitor.analysis.jobs import group_by_job, summarize
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Point, Store, open_store
from monitor.storage.schema import JOB_EVENT, event_time_ns, event_to_point, point_to_event
from monitor.web.context import get_context

S = 1_000_000_000
NOW_NS = 1_714_565_400 * S  # 2024-05-01T12:10:00Z
PARAMS = {"resolution": 512, "num_frames": 16, "steps": 3, "guidance_scale": 9.0, "fps": 8, "seed": 1}


def job(
    job_id: str, start_s: int, end: str | None = "succeeded", *, requested: Mapping[str, Any] | None = None
) -> list[Event]:
    """Return a job's events from `start_s` seconds after 12:00:00: queued, running, stages, and its end."""

    def at(offset_s: float) -> str:
        seconds = start_s + offset_s
        return f"2024-05-01T12:{int(seconds // 60):02d}:{seconds % 60:09.6f}Z"

    common: dict[str, Any] = {"job_id": job_id, "host": "node-a", "gpu": "0", "params": PARAMS, "prompt": "a fox"}
    events = [
        Event(kind="job", status="queued", started_at=at(0), requested=dict(requested or {}), **common),
        Event(kind="job", status="running", started_at=at(1), **common),
        Event(kind="stage", stage="text_encoding", started_at=at(1), duration_s=0.5, **common),
        *[
            Event(kind="stage", stage="denoising_step", step=i, total_steps=3, started_at=at(1.5 + 0.2 * i),
                  duration_s=0.2, **common)
            for i in range(3)
        ],
        Event(kind="stage", stage="denoising", started_at=at(1.5), duration_s=0.6, peak_memory_bytes=7 << 30,
              peak_memory_allocated_bytes=6 << 30,
              **common),
    ]  # fmt: skip
    if end == "failed":
        extra = {"error": "CUDA out of memory", "suggestion": "try 256p"}
        events.append(Event(kind="job", status="failed", started_at=at(0), duration_s=2.1, **extra, **common))
    elif end == "succeeded":
        events.append(Event(kind="stage", stage="decode_video", started_at=at(2.1), duration_s=0.4, **common))
        events.append(Event(kind="job", status="succeeded", started_at=at(0), duration_s=2.5, video_path="a.mp4",
                            **common))  # fmt: skip
    return events


def as_dicts(events: Sequence[Event]) -> list[dict[str, Any]]:
    return [point_to_event(event_to_point(e)) for e in events]


def test_start_up_stages_are_not_listed_as_a_job() -> None:
    events = [
        {"job_id": STARTUP_JOB_ID, "stage": "model_load"},
        {"job_id": "abc", "stage": "text_encoding"},
        {"job_id": "abc", "status": "succeeded"},
    ]

    assert list(group_by_job(events)) == ["abc"]
    assert len(group_by_job(events)["abc"]) == 2


@pytest.mark.parametrize(
    "events",
    [job("ok", 0), job("oom", 0, "failed"), job("smaller", 0, requested={**PARAMS, "resolution": 768})],
    ids=["succeeded", "failed with a suggestion", "degraded"],
)
def test_a_stored_summary_reads_back_as_the_row_its_events_give(events: list[Event]) -> None:
    end = events[-1]
    dicts = as_dicts(events)
    point = summary_point(end.job_id, dicts, point_to_event(event_to_point(end)), event_time_ns(end))
    assert summary_row(point) == summarize(end.job_id, dicts)


class CountingStore:
    """The real store, counting which measurements are read (the seam the cost check needs)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads: list[str] = []

    def query_points(self, measurement: str, *args: Any, **kwargs: Any) -> list[Point]:
        self.reads.append(measurement)
        return self._store.query_points(measurement, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


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
    built = create_app(config, store=CountingStore(open_store(config.store_url)), clock_ns=lambda: NOW_NS)  # type: ignore[arg-type]
    yield built
    get_context(built).close()


def test_the_list_reads_the_newest_summaries_and_the_open_jobs_never_the_events(app: Flask) -> None:
    client = app.test_client()
    for events in (job("first", 0), job("second", 10, "failed"), job("third", 20), job("running", 30, None)):
        assert client.post("/monitor/api/events", json=[e.to_dict() for e in events]).status_code == 200
    assert get_context(app).writer.flush()
    store: CountingStore = get_context(app).store  # type: ignore[assignment]
    store.reads.clear()

    body = client.get("/monitor/api/jobs?window=1h&limit=3").get_json()
    assert [(j["id"], j["status"]) for j in body["jobs"]] == [("running", "running"), ("third", "succeeded"),
                                                             ("second", "failed")]  # fmt: skip
    assert body["count"] == 3
    assert body["jobs"][0]["stages"]["denoising"]["steps"] == 3  # an open job's stages so far
    assert body["jobs"][2]["error"] == "CUDA out of memory"
    assert JOB_EVENT not in store.reads
    assert client.get("/monitor/api/jobs?window=1h&host=node-b").get_json()["jobs"] == []
    assert client.get("/monitor/api/status").get_json()["job_state_changes"] == 3 + 3 + 3 + 2


def test_a_job_that_just_ended_is_listed_before_its_summary_reaches_the_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    summarizer = JobSummarizer(lambda points: None, store)  # the writer has not delivered anything yet
    summarizer.listen(job("done", 0))
    summarizer.listen(job("late", 10)[3:5])  # a job the monitor met mid-run: only its steps were heard
    try:
        rows = recent_jobs(store, summarizer.live_rows, NOW_NS, 3600, 10)
    finally:
        store.close()
    assert [(r["id"], r["status"]) for r in rows] == [("late", "running"), ("done", "succeeded")]
    assert rows[1]["finished_at"] == "2024-05-01T12:00:02.500000Z"


def test_a_job_lost_in_a_crash_the_instant_it_started_running_reads_failed() -> None:
    # Lost in a crash, a job ends when it was last known alive: here the instant of its `running` event. Ordered
    # by end, the two tie; the end state must still come last.
    at = "2026-12-01T19:29:36.532406Z"
    base = {"job_id": "lost", "kind": "job", "stage": None, "host": "fault-host", "gpu": "cpu"}
    events = [
        {
            **base,
            "status": "queued",
            "started_at": "2026-12-01T19:29:36.530526Z",
            "ended_at": "2026-12-01T19:29:36.530526Z",
        },
        {**base, "status": "failed", "started_at": "2026-12-01T19:29:36.530526Z", "ended_at": at},
        {**base, "status": "running", "started_at": at, "ended_at": at},
    ]
    assert summarize("lost", events)["state"] == "failed"
