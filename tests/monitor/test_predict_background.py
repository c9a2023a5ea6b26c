"""Fits run in the background: a slow or failing store delays no prediction, which answers from the last fit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from monitor.analysis.predict import JobShape, Predictor
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import open_store
from monitor.web.context import get_context
from tests.monitor.gated_store import GatedStore
from tests.monitor.history import H100, NOW_NS, NOW_S, gpu_sample, history, random_shapes, summarize_into
from tests.servers import wait_for

PREDICT = "/monitor/api/predict?resolution=512&frames=16&steps=50&gpu=0&host=node-a"


def measured_store(tmp_path: Path, jobs: int) -> GatedStore:
    """Return a gated SQLite store holding `jobs` measured jobs on an H100 that the sampler has named."""
    store = GatedStore(open_store(f"sqlite:///{tmp_path}/monitor.db"))
    store.write([gpu_sample(used=20 * 10**9, own=15 * 10**9)])
    summarize_into(store.store, history(random_shapes(jobs)))
    return store


def test_a_slow_fit_never_blocks_predict_which_answers_from_the_last_fit_at_once(tmp_path: Path) -> None:
    store = measured_store(tmp_path, 30)
    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/monitor.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config, store=store.as_store(), clock_ns=lambda: NOW_NS)
    ctx = get_context(app)
    client = app.test_client()
    try:
        assert ctx.predictor.laws(H100).memory.n == 30  # fitted before serving
        store.hold()
        ctx.predictor.mark_dirty()  # a read of the store (the cadence's), stuck behind a store that does not answer
        wait_for(store.waiting.is_set, 10, "the fit to be stuck reading the store")
        more = history(random_shapes(3, seed=5), seed=8, start_s=NOW_S - 600)
        assert client.post("/monitor/api/events", json={"events": [e.to_dict() for e in more]}).status_code == 200

        with ThreadPoolExecutor(1) as pool:  # a request that waited for the fit would never come back
            body = pool.submit(lambda: client.get(PREDICT).get_json()).result(timeout=10)

        assert (body["memory"]["source"], body["memory"]["jobs"]) == ("learned", 30)
        assert "learned from 30 job(s)" in body["how"]
        assert store.waiting.is_set()  # the fit is still stuck: the answer came from the previous one
        assert client.get("/monitor/api/predict/laws").get_json()["fitting"] is True
        store.release()
        wait_for(lambda: ctx.predictor.laws(H100).memory.n == 33, 10, "the jobs that ended meanwhile to be learned")
    finally:
        store.release()
        ctx.close()


def test_a_failing_store_keeps_the_last_fit_and_a_later_try_recovers(tmp_path: Path) -> None:
    store = measured_store(tmp_path, 20)
    predictor = Predictor(store.as_store(), clock_ns=lambda: NOW_NS, min_refit_interval_s=0, retry_after_s=0.05)
    predictor.start()
    shape = JobShape(512, 16, 50)
    assert predictor.predict(shape, H100).memory.jobs == 20
    try:
        store.failing = True
        predictor.mark_dirty()
        wait_for(lambda: predictor.fit_errors_total >= 2, 10, "the fit to fail and be tried again")
        assert predictor.predict(shape, H100).memory.jobs == 20  # the last fit answers meanwhile
        summarize_into(store.store, history(random_shapes(4, seed=6), seed=9, start_s=NOW_S - 900))
        store.failing = False
        wait_for(lambda: predictor.predict(shape, H100).memory.jobs == 24, 10, "the fit to recover")
    finally:
        predictor.close()


def test_the_laws_route_reports_each_models_held_out_error(tmp_path: Path) -> None:
    store = measured_store(tmp_path, 40)
    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/monitor.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config, store=store.as_store(), clock_ns=lambda: NOW_NS)
    try:
        body = app.test_client().get("/monitor/api/predict/laws").get_json()
        schemas = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]
    finally:
        get_context(app).close()

    # The answer has what the OpenAPI document promises, at every level.
    assert set(schemas["PredictLaws"]["required"]) <= set(body)
    assert set(schemas["ModelLaws"]["required"]) <= set(body["models"][H100])
    for quantity in ("memory", "time"):
        assert set(schemas["HeldOutError"]["required"]) <= set(body["models"][H100]["held_out"][quantity])

    model = body["models"][H100]
    assert model["jobs"] == 40
    held_out = model["held_out"]
    assert held_out["method"].startswith("leave one size out")
    for quantity in ("memory", "time"):
        assert held_out[quantity]["jobs"] == 40
        assert held_out[quantity]["sizes"] >= 10
        # The synthetic history follows the laws with 1% noise: unseen sizes are predicted about as well.
        assert 0 < held_out[quantity]["mean_relative_error"] < 0.03
        assert held_out[quantity]["mean_relative_error"] <= held_out[quantity]["max_relative_error"] < 0.08
    assert set(model["memory_bytes"]) == {"weights_bytes", "per_megapixel_frame_bytes", "attention_bytes"}
    assert body["fitted_at"]
    assert body["fits_total"] >= 1
