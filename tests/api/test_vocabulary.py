"""Both services name a job's facts alike: `job_id`, `state` (JOB_STATES) and RFC 3339 UTC times.

One finished job is put in the generator's book; the events the generator would send for it are posted to the
monitor; the generator's view of it and the monitor's (its detail and its row in the list) then agree field for
field, and the deprecated names the older clients read (`created_at`, `id`, `status`) are still served.
"""

from __future__ import annotations

import re
import time

import pytest
from flask import Flask

from common.events import JOB_STATES, epoch_s
from generator.events import job_state_event
from generator.jobs import Job
from monitor.web.context import get_context
from tests.api.conftest import TOKEN
from tests.generator.test_jobs import PARAMS

JOB_ID = "c" * 32
SHARED = ("job_id", "state", "submitted_at", "started_at", "finished_at")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_a_job_reads_the_same_from_the_generator_and_the_monitor(generator_app: Flask, monitor_app: Flask) -> None:
    now = time.time()
    job = Job(JOB_ID, "a fox", PARAMS, PARAMS, state="succeeded", created_at=now - 30, gpu="0")
    job.started_at, job.finished_at = now - 20, now - 5
    generator_app.extensions["generator"].book.store_finished([job])
    events = [job_state_event(job, state, "api-host", "0").to_dict() for state in ("queued", "running", "succeeded")]
    posted = monitor_app.test_client().post(
        "/monitor/api/events", json={"events": events}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert posted.status_code == 200, posted.get_data(as_text=True)
    assert get_context(monitor_app).writer.flush()

    generator = generator_app.test_client().get(f"/api/jobs/{JOB_ID}").get_json()
    detail = monitor_app.test_client().get(f"/monitor/api/jobs/{JOB_ID}?window=1h").get_json()
    listed = monitor_app.test_client().get("/monitor/api/jobs?window=1h").get_json()["jobs"]
    row = next(r for r in listed if r["job_id"] == JOB_ID)

    shared = {name: generator[name] for name in SHARED}
    assert shared["state"] == "succeeded"
    assert all(RFC3339_UTC.match(shared[name]) for name in ("submitted_at", "started_at", "finished_at")), shared
    assert epoch_s(shared["finished_at"]) == pytest.approx(job.finished_at, abs=1e-6)  # the job's own end
    assert {name: detail[name] for name in SHARED} == shared
    assert {name: row[name] for name in SHARED} == shared
    # The deprecated names, for the clients written against them.
    assert generator["created_at"] == job.created_at
    assert (detail["id"], detail["status"]) == (row["id"], row["status"]) == (JOB_ID, "succeeded")


def test_both_openapi_documents_describe_the_shared_names_and_mark_the_old_ones_deprecated(
    generator_app: Flask, monitor_app: Flask
) -> None:
    generator = generator_app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["Job"]
    monitor = monitor_app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["Job"]
    for schema in (generator, monitor):
        properties = schema["properties"]
        assert {"job_id", "state"} <= set(schema["required"])
        for name in ("submitted_at", "started_at", "finished_at"):
            assert properties[name] == {**properties[name], "type": "string", "format": "date-time"}, name
    assert set(generator["properties"]["state"]["enum"]) <= set(JOB_STATES)
    deprecated = {
        "generator": {n for n, p in generator["properties"].items() if p.get("deprecated")},
        "monitor": {n for n, p in monitor["properties"].items() if p.get("deprecated")},
    }
    assert deprecated == {"generator": {"created_at"}, "monitor": {"id", "status"}}
