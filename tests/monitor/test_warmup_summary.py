"""A job's first-step warm-up: read from its step events into its summary and jobs.csv, learned, and served."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.events import Event, EventError
from monitor.analysis.job_summary import JobSummarizer, summary_row
from monitor.analysis.reports import JOB_COLUMNS, job_row
from monitor.analysis.scaling import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Store
from monitor.storage.schema import JOB_SUMMARY
from monitor.web.context import get_context
from tests.monitor.history import H100, NOW_NS, NOW_S, S, each_store, gpu_sample, job_events, true_step_s
from tests.servers import wait_for


def with_warmup(events: list[Event], warmup_s: float, first: bool | None) -> list[Event]:
    """Return the job's events with its first step longer by `warmup_s`, saying whether the size was new."""
    return [
        replace(e, duration_s=e.duration_s + warmup_s, first_at_size=first)
        if e.stage == "denoising_step" and e.step == 1
        else e
        for e in events
    ]


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from each_store(request, tmp_path)


def test_the_summary_keeps_the_first_steps_seconds_its_warm_up_and_the_generators_word(store: Store) -> None:
    shape = JobShape(256, 16, 25)
    events = job_events("fresh", submitted_s=NOW_S - 100, shape=shape, run_s=3.6, peak_bytes=6 * 10**9, step_s=0.1)

    JobSummarizer(store.write, store).listen(with_warmup(events, 0.65, True))

    [point] = store.query_points(JOB_SUMMARY, NOW_NS - 3600 * S, NOW_NS)
    assert point.fields["first_step_s"] == pytest.approx(0.75)
    assert point.fields["median_step_s"] == pytest.approx(0.1)
    assert point.fields["warmup_s"] == pytest.approx(0.65)
    assert point.fields["first_at_size"] is True
    denoising = summary_row(point)["stages"]["denoising"]
    assert denoising["warmup_s"] == pytest.approx(0.65)
    assert denoising["first_at_size"] is True
    row = dict(zip(JOB_COLUMNS, job_row(point, H100, {}), strict=True))
    assert row["first_step_s"] == pytest.approx(0.75)
    assert row["warmup_s"] == pytest.approx(0.65)
    assert row["first_at_size"] == "true"


def test_a_first_step_quicker_than_the_median_is_no_warm_up() -> None:
    from monitor.analysis.jobs import stage_breakdown

    steps = [0.09, 0.1, 0.1, 0.11]
    events = [
        {"kind": "stage", "stage": "denoising_step", "duration_s": d, "step": i + 1, "first_at_size": False}
        for i, d in enumerate(steps)
    ]
    denoising = stage_breakdown(events)["denoising"]
    assert denoising["first_step_s"] == pytest.approx(0.09)
    assert denoising["warmup_s"] == 0.0
    assert denoising["first_at_size"] is False


@pytest.mark.parametrize("value", ["yes", 1, 0.5, []])
def test_an_event_whose_first_at_size_is_not_a_boolean_is_refused(value: object) -> None:
    event = Event("job", "node-a", "0", "stage", "2024-05-01T12:00:00Z", stage="denoising_step", step=1).to_dict()
    with pytest.raises(EventError, match="first_at_size"):
        Event.from_dict({**event, "first_at_size": value})


def two_processes_of_jobs() -> list[Event]:
    """Return 16 jobs over two generator processes: the first of each size in a process pays 0.4-0.8 s."""
    sizes = [(256, 16), (512, 16), (512, 24), (768, 16), (1024, 16), (512, 16), (768, 24), (256, 16)]
    events: list[Event] = []
    at = NOW_S - 3600.0
    for process in range(2):
        seen: set[tuple[int, int]] = set()
        for i, size in enumerate(sizes):
            shape = JobShape(*size, 20)
            step = true_step_s(shape)
            first = size not in seen
            warmup = 0.4 + 0.4 * shape.x / JobShape(1024, 32, 1).x if first else 0.0
            run = 0.8 + shape.steps * step + warmup
            job = job_events(f"p{process}-{i}", submitted_s=at, shape=shape, run_s=run, peak_bytes=None, step_s=step)
            events += with_warmup(job, warmup, first)
            seen.add(size)
            at += 40
    return events


def test_predict_answers_the_warm_time_the_warm_up_and_a_fresh_sizes_total_and_the_laws_split_held_out(
    tmp_path: Path,
) -> None:
    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/m.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config, clock_ns=lambda: NOW_NS)
    try:
        client, ctx = app.test_client(), get_context(app)
        ctx.writer.write([gpu_sample(used=20 * 10**9, own=15 * 10**9)])
        assert ctx.writer.flush()
        events = [e.to_dict() for e in two_processes_of_jobs()]
        assert client.post("/monitor/api/events", json={"events": events}).status_code == 200
        wait_for(lambda: ctx.predictor.laws(H100).time.warmup.n == 12, 20, "the 12 first-at-size jobs to be learned")

        time = client.get("/monitor/api/predict?resolution=768&frames=32&steps=20&gpu=0&host=node-a").get_json()["time"]
        laws = client.get("/monitor/api/predict/laws").get_json()
        schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    finally:
        ctx.close()

    assert time["warmup_source"] == "learned"
    assert time["warmup_jobs"] == 12
    truth = 0.4 + 0.4 * JobShape(768, 32, 1).x / JobShape(1024, 32, 1).x
    assert time["warmup_s"] == pytest.approx(truth, rel=0.10)
    assert time["fresh_size_seconds"] == pytest.approx(time["seconds"] + time["warmup_s"], abs=0.002)
    assert time["fresh_size_margin_s"] >= time["margin_s"]
    assert "fresh_size_seconds" in time["basis"]
    assert "warmup_s" in time["basis"]

    model = laws["models"][H100]
    assert set(schemas["ModelLaws"]["required"]) <= set(model)
    assert model["warmup_jobs"] == 12
    assert set(model["time_warmup_s"]) == {"fixed_s", "per_megapixel_frame_s"}
    held_out = model["held_out"]
    for part in ("time", "time_warm", "time_first_at_size"):
        assert set(schemas["HeldOutError"]["required"]) <= set(held_out[part])
        assert held_out[part]["max_relative_error"] < 0.10
    assert held_out["time_first_at_size"]["jobs"] == 12
    assert held_out["time_warm"]["jobs"] == 4
    assert held_out["time"]["jobs"] == 16
