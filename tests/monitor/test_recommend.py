"""Recommendations: never beyond free memory less the margin, the seed tiers as the floor, reasons in words."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from monitor.analysis.devices import DeviceState
from monitor.analysis.predict import PRIOR_LAWS, JobShape, Laws, Observation, Prediction
from monitor.analysis.recommend import LADDER, recommend, seed_tier
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.web.context import get_context
from tests.monitor.history import (
    H100,
    NOW_NS,
    NOW_S,
    gpu_sample,
    history,
    job_events,
    random_shapes,
    store_url,
    true_peak_bytes,
    true_run_s,
    true_step_s,
)
from tests.servers import wait_for

GB = 10**9
LEARNED = Laws(
    [Observation(H100, s, round(true_peak_bytes(s)), true_run_s(s), true_step_s(s)) for s in random_shapes(80)]
)


def device(total_gb: float, used_gb: float, own_gb: float | None = None, model: str = H100) -> DeviceState:
    own = None if own_gb is None else int(own_gb * GB)
    return DeviceState("node-a", "0", model, int(total_gb * GB), int(used_gb * GB), own, NOW_NS)


def predictor(laws: Laws) -> object:
    time = laws.time
    return lambda shape: Prediction(
        H100, shape, laws.memory.estimate(shape), time.estimate(shape), time.warmup_estimate(shape)
    )


def ladder_index(shape: JobShape) -> int:
    return LADDER.index((shape.resolution, shape.num_frames, shape.steps))


@pytest.mark.parametrize("laws", [PRIOR_LAWS, LEARNED], ids=["prior", "learned"])
def test_a_recommendation_never_exceeds_free_memory_less_the_margin(laws: Laws) -> None:
    rng = random.Random(11)
    for _ in range(400):
        total = rng.choice((12, 16, 24, 40, 48, 80, 141))
        used = rng.uniform(0, total)
        own = rng.choice((None, rng.uniform(0, used)))
        state = device(total, used, own)
        result = recommend(state, predictor(laws), max_time_s=rng.choice((None, 30.0, 300.0)))  # type: ignore[arg-type]
        chosen = result.chosen.prediction
        free = state.memory_total_bytes - state.memory_used_bytes + (state.generator_memory_bytes or 0)
        if result.fits:
            assert chosen.peak_bytes <= free - chosen.margin_bytes
            assert chosen.estimate_bytes <= state.available_bytes
            # and nothing better on the ladder fitted
            assert not any(c.fits for c in result.candidates[: ladder_index(chosen.shape)])
        else:
            assert not any(c.fits for c in result.candidates)
            assert "nothing fits now" in result.reason


@pytest.mark.parametrize(
    ("usage", "tier"),
    [(0.0, (768, 24, 80)), (0.59, (768, 24, 80)), (0.6, (512, 16, 50)), (0.79, (512, 16, 50)), (0.8, (512, 8, 30))],
)
def test_the_seed_tiers_by_memory_in_use(usage: float, tier: tuple[int, int, int]) -> None:
    assert seed_tier(usage) == tier


def test_measurements_recommend_more_than_the_tier_when_it_fits() -> None:
    result = recommend(device(80, 40, own_gb=10), predictor(LEARNED))  # type: ignore[arg-type]
    assert result.fits
    assert result.floor == (768, 24, 80)
    assert result.chosen.prediction.shape == JobShape(1024, 32, 100)
    assert "more than the seed tier for 50% of memory in use (768p/24 frames/80 steps)" in result.reason
    assert "learned from 80 job(s)" in result.reason


def test_the_tier_is_recommended_when_it_is_the_best_that_fits() -> None:
    # 24 GB card, 9.5 GB in use (40%), none of it the generator's: 24 - 9.5 = 14.5 GB usable (under 80% of the
    # card); 768p/24 needs 13.6 GB and 768p/32 16.4 GB (the learned law).
    result = recommend(device(24, 9.5), predictor(LEARNED))  # type: ignore[arg-type]
    assert result.chosen.prediction.shape == JobShape(768, 24, 80)
    assert result.reason.startswith("768p/24 frames/80 steps, the seed tier for 40% of memory in use, needs about")


def test_below_the_tier_only_when_the_tier_does_not_fit_and_it_says_so() -> None:
    # An RTX 3060 (12 GB) nearly idle, with only the design table to go on: 768p/24 needs about 23 GB with margin.
    result = recommend(device(12, 1), predictor(PRIOR_LAWS))  # type: ignore[arg-type]
    assert result.fits
    assert result.floor == (768, 24, 80)
    assert ladder_index(result.chosen.prediction.shape) > ladder_index(JobShape(768, 24, 80))
    assert result.chosen.prediction.shape == JobShape(256, 16, 30)  # 6 GiB + 30% margin within 8.6 GB
    assert "the seed tier for 8% of memory in use (768p/24 frames/80 steps) does not fit memory" in result.reason
    assert "stepped down to 256p/16 frames/30 steps" in result.reason


def test_nothing_fits_on_a_full_card_and_it_says_to_wait() -> None:
    result = recommend(device(24, 23), predictor(LEARNED))  # type: ignore[arg-type]
    assert not result.fits
    assert result.chosen.prediction.shape == JobShape(256, 8, 30)
    assert "wait for memory to free up" in result.reason


def test_a_time_budget_skips_the_slow_sizes() -> None:
    result = recommend(device(80, 5, own_gb=5), predictor(LEARNED), max_time_s=60)  # type: ignore[arg-type]
    assert result.fits
    assert result.chosen.prediction.time.value <= 60
    assert ladder_index(result.chosen.prediction.shape) > 0
    assert "predicted to take longer than 60 s" in result.reason


@pytest.fixture(params=["sqlite", "influxdb"])
def monitor_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    url = store_url(request.param, tmp_path, request)
    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp_path / "spool", data_dir=tmp_path)
    app = create_app(config, clock_ns=lambda: NOW_NS)
    yield app
    get_context(app).close()


def test_the_recommendation_route_learns_from_ingested_jobs(monitor_app: Flask) -> None:
    client = monitor_app.test_client()
    writer = get_context(monitor_app).writer
    writer.write([gpu_sample(used=30 * GB, own=10 * GB), gpu_sample(used=1 * GB, gpu="1", name="Other GPU")])
    assert writer.flush()  # the sampler names the GPUs before jobs run
    events = [e.to_dict() for e in history(random_shapes(20))]
    for start in range(0, len(events), 1000):
        assert client.post("/monitor/api/events", json={"events": events[start : start + 1000]}).status_code == 200
    predictor = get_context(monitor_app).predictor
    wait_for(lambda: predictor.laws(H100).memory.n == 20, 20, "the 20 jobs to be learned in the background")

    body = client.get("/monitor/api/recommendation?gpu=0").get_json()

    assert body["fits"] is True
    assert body["gpu"]["model"] == H100
    assert body["recommended"] == {"resolution": 1024, "num_frames": 32, "steps": 100, "guidance_scale": 9.0}
    assert body["predicted"]["estimate_bytes"] <= body["gpu"]["available_bytes"]
    assert "learned from 20 job(s)" in body["predicted"]["how"]
    assert body["floor"] == {"resolution": 768, "num_frames": 24, "steps": 80}
    assert len(body["candidates"]) == len(LADDER)
    assert "more than the seed tier" in body["reason"]

    several = client.get("/monitor/api/recommendation")
    assert several.status_code == 400
    assert "pass gpu= one of node-a/0 (NVIDIA H100 80GB HBM3), node-a/1 (Other GPU)" in several.get_json()["error"]
    missing = client.get("/monitor/api/recommendation?gpu=7")
    assert missing.status_code == 404
    assert "no recent sample of GPU 7" in missing.get_json()["error"]
    assert client.get("/monitor/api/recommendation?gpu=0&max_time_s=soon").status_code == 400


def test_the_summary_ranks_generation_times_per_configuration(monitor_app: Flask) -> None:
    shape = JobShape(512, 16, 50)
    events = history([shape] * 20 + [JobShape(256, 8, 10)] * 3, noise=0.05)
    events += job_events("oom", submitted_s=NOW_S - 100, shape=shape, run_s=2.0, peak_bytes=None, status="failed")
    client = monitor_app.test_client()
    batch = [e.to_dict() for e in events]
    for start in range(0, len(batch), 1000):
        assert client.post("/monitor/api/events", json={"events": batch[start : start + 1000]}).status_code == 200
    assert get_context(monitor_app).writer.flush()

    body = client.get("/monitor/api/summary?window=1d").get_json()

    by_size = {(c["resolution"], c["num_frames"], c["steps"]): c for c in body["configurations"]}
    big = by_size[(512, 16, 50)]
    assert (big["jobs"], big["succeeded"], big["failed"], big["cancelled"]) == (21, 20, 1, 0)
    assert big["success_rate"] == pytest.approx(20 / 21, abs=1e-4)
    assert big["fastest_s"] <= big["median_s"] <= big["p95_s"]
    assert big["median_s"] == pytest.approx(true_run_s(shape), rel=0.05)
    assert big["gpu_model"] == "gpu 0"  # no sample named the GPU
    assert by_size[(256, 8, 10)]["jobs"] == 3
    assert client.get("/monitor/api/summary?window=forever").status_code == 400
