"""The jobs list under its read cap: a window holding more events than the API reads still lists the newest jobs."""

from __future__ import annotations

import pytest

from common.events import Event
from monitor.web import api
from tests.monitor.test_api import Monitor, monitor  # noqa: F401  (the fixture: an app on SQLite and on influxd)


def job(job_id: str, minute: int) -> list[dict]:
    """Four events of one finished job that began `minute` minutes past 12:00 on 2024-05-01."""
    at = f"2024-05-01T12:0{minute}:00.000000Z"
    common = {"job_id": job_id, "host": "node-a", "gpu": "0", "started_at": at}
    return [
        Event(kind="job", status="queued", **common).to_dict(),
        Event(kind="job", status="running", **common).to_dict(),
        Event(kind="stage", stage="text_encoding", duration_s=1.0, **common).to_dict(),
        Event(kind="job", status="succeeded", duration_s=2.0, **common).to_dict(),
    ]


def test_every_job_is_listed_newest_first_when_the_window_holds_more_events_than_a_read_takes(
    monitor: Monitor,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The list reads one stored summary per job, not the jobs' events: a window holding more events than one
    # read takes (here two jobs' worth) still lists every job, the newest first.
    monkeypatch.setattr(api, "MAX_JOB_EVENTS", 8)
    monitor.post_events([*job("job-0", 0), *job("job-1", 1), *job("job-2", 2)])
    body = monitor.get("jobs", window="1h").json()
    assert [j["id"] for j in body["jobs"]] == ["job-2", "job-1", "job-0"]
    assert [j["status"] for j in body["jobs"]] == ["succeeded", "succeeded", "succeeded"]
