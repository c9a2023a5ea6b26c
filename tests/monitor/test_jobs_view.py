"""Jobs are rebuilt from events; the generator's start-up stages are not a job."""

from __future__ import annotations

from common.events import STARTUP_JOB_ID
from monitor.analysis.jobs import group_by_job


def test_start_up_stages_are_not_listed_as_a_job() -> None:
    events = [
        {"job_id": STARTUP_JOB_ID, "stage": "model_load"},
        {"job_id": "abc", "stage": "text_encoding"},
        {"job_id": "abc", "status": "succeeded"},
    ]

    assert list(group_by_job(events)) == ["abc"]
    assert len(group_by_job(events)["abc"]) == 2
