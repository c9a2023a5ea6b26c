"""The predictor: the prior with no history, known laws learned from a synthetic history, margins, when it fits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from monitor.analysis.laws import Laws, Observation
from monitor.analysis.predict import JobShape, Predictor
from monitor.analysis.scaling import MEMORY, MIN_MARGIN_RATIO, OUTSIDE, STEP, Law, Z
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Store
from monitor.web.context import get_context
from tests.monitor.history import (
    H100,
    NOW_NS,
    GiB,
    each_store,
    gpu_sample,
    history,
    random_shapes,
    store_url,
    summarize_into,
    true_peak_bytes,
    true_run_s,
    true_step_s,
)
from tests.servers import wait_for

PROBES = [JobShape(256, 8, 10), JobShape(512, 16, 50), JobShape(768, 24, 80), JobShape(1024, 32, 100)]


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from each_store(request, tmp_path)


def observed(shape: JobShape, i: int = 0, *, peak_noise: float = 0.01, time_noise: float = 0.01) -> Observation:
    """Return one job following the synthetic history's laws, with a small deterministic error."""
    wobble = (i % 5) - 2
    step_s = true_step_s(shape) * (1 + time_noise * wobble / 2)
    outside_s = (true_run_s(shape) - shape.steps * true_step_s(shape)) * (1 - time_noise * wobble / 2)
    peak = round(true_peak_bytes(shape) * (1 + peak_noise * wobble / 2))
    return Observation(H100, shape, peak, outside_s + shape.steps * step_s, step_s)


def test_with_no_history_the_prior_is_the_design_table(tmp_path: Path) -> None:
    from monitor.storage.sqlite import SqliteStore

    predictor = Predictor(SqliteStore(tmp_path / "empty.db"), clock_ns=lambda: NOW_NS)
    predictor.start()
    for shape, table_gib in [(JobShape(256, 16, 50), 6), (JobShape(512, 16, 50), 12), (JobShape(1024, 16, 50), 20)]:
        prediction = predictor.predict(shape, H100)
        assert prediction.memory.value == table_gib * GiB
        assert prediction.memory.source == "prior"
        assert prediction.memory.jobs == 0
        assert prediction.memory.margin == pytest.approx(table_gib * GiB * Z * MEMORY.unmeasured_spread)
        assert prediction.time.value == pytest.approx(OUTSIDE.prior_value(shape) + 50 * STEP.prior_value(shape))
    assert predictor.predict(JobShape(768, 32, 50), None).memory.value == pytest.approx(
        (16 + 16 * 0.15) * GiB, rel=1e-6
    )
    assert "prior" in predictor.predict(JobShape(512, 16, 50), H100).describe()
    predictor.close()


@pytest.mark.parametrize("jobs", [60, 200])
def test_known_laws_are_learned_within_a_few_percent(jobs: int) -> None:
    laws = Laws([observed(s, i) for i, s in enumerate(random_shapes(jobs))])
    for probe in PROBES:
        memory = laws.memory.estimate(probe)
        assert memory.value == pytest.approx(true_peak_bytes(probe), rel=0.01)
        assert laws.time.estimate(probe).value == pytest.approx(true_run_s(probe), rel=0.02)
        assert abs(memory.value - true_peak_bytes(probe)) <= memory.margin  # the truth lies within the margin


def test_the_margin_shrinks_as_jobs_accumulate() -> None:
    probe = JobShape(512, 16, 50)
    shapes = random_shapes(160)
    margins, prior_weights = [], []
    for n in (0, 5, 20, 80, 160):
        observations = [(s, true_peak_bytes(s) * (1 + 0.005 * ((i % 3) - 1))) for i, s in enumerate(shapes[:n])]
        estimate = Law(MEMORY, observations).estimate(probe)
        margins.append(estimate.margin / estimate.value)
        prior_weights.append(estimate.prior_weight)
    assert margins == sorted(margins, reverse=True)
    assert prior_weights == sorted(prior_weights, reverse=True)
    assert prior_weights[0] == 1.0
    assert prior_weights[-1] < 0.01
    assert margins[-1] < 0.05
    assert margins[-1] >= MIN_MARGIN_RATIO


def test_jobs_all_of_one_size_set_its_level_and_the_margin_widens_far_from_them() -> None:
    here, far = JobShape(512, 16, 50), JobShape(1024, 32, 50)
    law = Law(MEMORY, [(here, true_peak_bytes(here))] * 20)
    near_estimate, far_estimate = law.estimate(here), law.estimate(far)
    assert near_estimate.value == pytest.approx(true_peak_bytes(here), rel=0.01)  # the table says 12.9 GB, truth 7.6
    assert far_estimate.margin / far_estimate.value > 2 * near_estimate.margin / near_estimate.value
    assert far_estimate.value + far_estimate.margin >= true_peak_bytes(far)  # safe where it had to guess


def test_guidance_off_halves_the_work_through_the_unet() -> None:
    assert JobShape(512, 16, 50, guidance_scale=1.0).x == pytest.approx(JobShape(512, 16, 50).x / 2)


def test_the_predictor_learns_from_the_store_per_gpu_model(store: Store) -> None:
    summarize_into(store, history(random_shapes(40), gpu="0"))
    summarize_into(store, history(random_shapes(10, seed=9), gpu="1", seed=4, peak=lambda s: 2 * true_peak_bytes(s)))
    store.write([gpu_sample(used=10**9, gpu="0"), gpu_sample(used=10**9, gpu="1", name="Other GPU", total=24 * 10**9)])
    predictor = Predictor(store, clock_ns=lambda: NOW_NS)
    predictor.start()

    h100 = predictor.predict(JobShape(512, 16, 50), H100)
    other = predictor.predict(JobShape(512, 16, 50), "Other GPU")
    unknown = predictor.predict(JobShape(512, 16, 50), "Never seen")

    assert (h100.memory.source, h100.memory.jobs) == ("learned", 40)
    assert h100.memory.value == pytest.approx(true_peak_bytes(JobShape(512, 16, 50)), rel=0.03)
    assert h100.time.value == pytest.approx(true_run_s(JobShape(512, 16, 50)), rel=0.03)
    assert (other.memory.source, other.memory.jobs) == ("learned", 10)
    assert other.memory.value > 1.5 * h100.memory.value
    assert unknown.memory.source == "prior"
    status = predictor.status()
    assert set(status["models"]) == {H100, "Other GPU"}
    assert status["models"][H100]["held_out"]["memory"]["jobs"] == 40
    predictor.close()


class CountingStore:
    """The real store, counting the reads of `job_summary`: the predictor must not read per request."""

    def __init__(self, store: Store) -> None:
        self.store, self.reads = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def query_points(self, measurement: str, *args: Any, **kwargs: Any) -> Any:
        self.reads += measurement == "job_summary"
        return self.store.query_points(measurement, *args, **kwargs)


def test_it_reads_the_store_at_start_and_on_the_cadence_and_learns_each_ended_job_without_reading(
    tmp_path: Path,
) -> None:
    from monitor.storage.sqlite import SqliteStore

    counting = CountingStore(SqliteStore(tmp_path / "m.db"))
    summarize_into(counting.store, history(random_shapes(5)))
    counting.store.write([gpu_sample(used=10**9)])
    now = [100.0]
    predictor = Predictor(
        counting,  # type: ignore[arg-type]  # a wrapper passing the rest to a real Store
        clock_ns=lambda: NOW_NS,
        monotonic=lambda: now[0],
        refit_after_s=300,
        min_refit_interval_s=0,
    )
    predictor.start()
    shape = JobShape(512, 16, 50)
    for _ in range(20):
        assert predictor.predict(shape, H100).memory.jobs == 5
    assert counting.reads == 1

    # A job ends: the summarizer hands its point over, and the next fit takes it without reading the store.
    more = history(random_shapes(3, seed=5), seed=8, start_s=NOW_NS // 10**9 - 600)
    summarize_into(counting.store, more)
    from monitor.analysis.job_summary import JobSummarizer

    JobSummarizer(lambda _points: None, None, on_summary=predictor.mark_dirty).listen(more)
    wait_for(lambda: predictor.predict(shape, H100).memory.jobs == 8, 10, "the ended jobs to be learned")
    assert counting.reads == 1

    wait_for(lambda: predictor.status()["fitting"] is False, 10, "the fits of the ended jobs to finish")
    fits = predictor.fits_total
    now[0] += 301  # the cadence: the next prediction answers at once and sets a read of the store going
    assert predictor.predict(shape, H100).memory.jobs == 8
    wait_for(lambda: counting.reads == 2 and predictor.fits_total == fits + 1, 10, "the store to be read again")
    assert predictor.predict(shape, H100).memory.jobs == 8  # the same jobs: held ones are not counted twice
    predictor.close()


@pytest.fixture(params=["sqlite", "influxdb"])
def monitor_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=store_url(request.param, tmp_path, request),
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
    )
    app = create_app(config, clock_ns=lambda: NOW_NS)
    yield app
    get_context(app).close()


def test_predict_learns_from_ingested_jobs_and_judges_the_fit_now(monitor_app: Flask) -> None:
    client = monitor_app.test_client()
    ctx = get_context(monitor_app)
    ctx.writer.write([gpu_sample(used=20 * 10**9, own=15 * 10**9)])  # the sampler names the GPU before jobs run
    assert ctx.writer.flush()
    events = history(random_shapes(30))
    for start in range(0, len(events), 1000):
        batch = [e.to_dict() for e in events[start : start + 1000]]
        assert client.post("/monitor/api/events", json={"events": batch}).status_code == 200
    # Each job's end is learned in the background: wait for the fit, as a request would simply not.
    wait_for(lambda: ctx.predictor.laws(H100).memory.n == 30, 20, "the 30 jobs to be learned")

    body = client.get("/monitor/api/predict?resolution=512&frames=16&steps=50&gpu=0&host=node-a").get_json()

    assert body["memory"]["source"] == "learned"
    assert body["memory"]["jobs"] == 30
    assert body["memory"]["peak_bytes"] == pytest.approx(true_peak_bytes(JobShape(512, 16, 50)), rel=0.03)
    assert body["memory"]["estimate_bytes"] == body["memory"]["peak_bytes"] + body["memory"]["margin_bytes"]
    assert body["gpu"]["model"] == H100
    # all but the others' 5 GB would be 75 GB: the 80% cap binds first
    assert body["gpu"]["available_bytes"] == 80 * 10**9 * 8 // 10
    assert body["fits"] is True
    assert "learned from 30 job(s)" in body["how"]
    assert (
        client.get("/monitor/api/predict?resolution=1024&frames=32&steps=50&gpu=" + H100).get_json()["gpu"]["gpu"]
        == "0"
    )


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("frames=16&steps=50", "resolution is required"),
        ("resolution=500&frames=16&steps=50", "resolution must be one of 256, 512, 768, 1024"),
        ("resolution=512&frames=sixteen&steps=50", "frames must be an integer from 8 to 32"),
        ("resolution=512&frames=16&steps=500", "steps must be from 10 to 100"),
        ("resolution=512&frames=16&steps=50&guidance=nan", "guidance must be from 1 to 20"),
    ],
)
def test_predict_refuses_bad_parameters_saying_what_to_change(tmp_path: Path, query: str, says: str) -> None:
    config = replace(MonitorConfig(), store_url=f"sqlite:///{tmp_path}/m.db", spool_dir=tmp_path / "spool")
    app = create_app(config, clock_ns=lambda: NOW_NS)
    try:
        response = app.test_client().get(f"/monitor/api/predict?{query}")
        assert response.status_code == 400
        assert says in response.get_json()["error"]
    finally:
        get_context(app).close()


def test_the_per_step_law_learns_the_median_step_so_a_first_steps_warm_up_does_not_bend_it() -> None:
    # An H200's 256p/16/25 job: its first step at a size new to the process took 0.75 s, the rest 0.10 s.
    from monitor.analysis.jobs import stage_breakdown
    from monitor.analysis.predict import observation
    from monitor.storage import Point

    durations = [0.75] + [0.10] * 24
    events = [
        {"kind": "stage", "stage": "denoising_step", "duration_s": d, "step": i + 1} for i, d in enumerate(durations)
    ]
    denoising = stage_breakdown(events)["denoising"]
    assert denoising["mean_step_s"] == pytest.approx(0.126)
    assert denoising["median_step_s"] == pytest.approx(0.10)

    fields = {"resolution": 256, "num_frames": 16, "steps": 25, "guidance_scale": 9.0, "run_s": 3.6}
    fields |= {"denoising_steps": 25, "mean_step_s": 0.126, "median_step_s": 0.10}
    learned = observation(Point("job_summary", {}, fields, 0))
    assert learned is not None
    assert learned.step_s == pytest.approx(0.10)
    assert learned.outside_s == pytest.approx(3.6 - 2.5)  # the warm-up is outside the loop's steps
    older = observation(Point("job_summary", {}, {**fields, "median_step_s": None}, 0))
    assert older is not None
    assert older.step_s == pytest.approx(0.126)  # summaries stored before the median: the mean
