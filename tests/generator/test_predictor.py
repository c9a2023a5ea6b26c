"""Admission control takes the monitor's learned estimate when it answers, the table when not, and says which."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from flask import Flask

from common.sizing import GiB
from generator.admission import admit, table_estimate
from generator.predictor import MonitorPredictor, advice
from generator.validation import JobParams
from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Store, open_store
from monitor.web.context import get_context
from tests.monitor.gated_store import GatedStore
from tests.monitor.history import NOW_NS, gpu_sample, history, random_shapes, summarize_into, true_peak_bytes
from tests.servers import AppServer, free_port, wait_for

HOST = "gen-host"
DEFAULT_JOB = JobParams(resolution=512, num_frames=16, steps=50, guidance_scale=9.0, fps=8)
TIGHT = (10 * GiB, 80 * GiB)  # 10 GiB free: the table's 12 GiB for 512p/16 does not fit, the H100's 7.7 GB does


class CountingSession(requests.Session):
    """A real session that counts its GETs."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.gets += 1
        return super().get(*args, **kwargs)


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real monitor (SQLite) that has measured 30 jobs on this generator's H100, served over HTTP."""
    app = measured_monitor(tmp_path_factory.mktemp("monitor"))
    server = AppServer(app).start()
    yield server.url
    server.stop()
    get_context(app).close()


def measured_monitor(tmp: Path, store: Store | None = None) -> Flask:
    """Return a monitor app whose store (SQLite, or `store` over it) holds 30 jobs measured on an H100."""
    url = f"sqlite:///{tmp}/m.db"
    store = store or open_store(url)
    summarize_into(store, history(random_shapes(30), host=HOST))
    store.write([gpu_sample(used=20 * 10**9, own=15 * 10**9, host=HOST)])
    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp / "spool", data_dir=tmp)
    return create_app(config, store=store, clock_ns=lambda: NOW_NS)  # fits the 30 jobs before serving


def test_admission_uses_the_monitors_learned_estimate_and_says_so(monitor: str) -> None:
    predictor = MonitorPredictor(monitor, HOST)

    verdict = admit(DEFAULT_JOB, lambda: TIGHT, predictor.for_gpu("0"))

    assert verdict.params == DEFAULT_JOB  # the table would have degraded it
    assert verdict.estimate_bytes == pytest.approx(true_peak_bytes(JobShape(512, 16, 50)), rel=0.1)
    assert verdict.notes[0].startswith("memory estimate from the monitor:")
    assert "learned from 30 job(s) measured on NVIDIA H100 80GB HBM3" in verdict.notes[0]
    assert admit(DEFAULT_JOB, lambda: TIGHT).params != DEFAULT_JOB


def test_admission_gets_the_learned_estimate_while_the_monitor_is_stuck_in_a_slow_fit(tmp_path: Path) -> None:
    gated = GatedStore(open_store(f"sqlite:///{tmp_path}/m.db"))
    app = measured_monitor(tmp_path, gated.as_store())
    server = AppServer(app).start()
    try:
        gated.hold()
        get_context(app).predictor.mark_dirty()  # the next fit reads a store that does not answer
        wait_for(gated.waiting.is_set, 10, "the monitor's fit to be stuck reading the store")

        verdict = admit(DEFAULT_JOB, lambda: TIGHT, MonitorPredictor(server.url, HOST).for_gpu("0"))

        assert verdict.params == DEFAULT_JOB  # not degraded by the table's 12 GiB
        assert "learned from 30 job(s) measured on NVIDIA H100 80GB HBM3" in verdict.notes[0]
        assert gated.waiting.is_set()  # the fit is still stuck
    finally:
        gated.release()
        server.stop()
        get_context(app).close()


def test_every_admission_gets_an_answer_from_the_monitors_latest_fit(tmp_path: Path) -> None:
    # On an H200 the prior's answer for 512p/16, given before any job was measured and kept, degraded a job that
    # fitted two minutes and fourteen measured jobs later: an answer is only as good as the fit behind it.
    url = f"sqlite:///{tmp_path}/m.db"
    store = open_store(url)
    store.write([gpu_sample(used=20 * 10**9, own=15 * 10**9, host=HOST)])
    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp_path / "spool", data_dir=tmp_path)
    app = create_app(config, store=store, clock_ns=lambda: NOW_NS)
    server = AppServer(app).start()
    session = CountingSession()
    predictor = MonitorPredictor(server.url, HOST, session=session, clock=lambda: 0.0)
    try:
        prior = predictor.estimate(DEFAULT_JOB, "0")
        assert "prior: the design's table" in prior.source

        summarize_into(store, history(random_shapes(30), host=HOST))
        get_context(app).predictor.mark_dirty()  # as the monitor does when a job ends
        wait_for(lambda: get_context(app).predictor.status()["models"], 10, "the monitor to fit the measured jobs")
        learned = predictor.estimate(DEFAULT_JOB, "0")  # at the same moment: nothing kept stands in for it
    finally:
        server.stop()
        get_context(app).close()

    assert "learned from 30 job(s)" in learned.source
    assert learned == pytest.approx(true_peak_bytes(JobShape(512, 16, 50)), rel=0.1)
    assert learned < prior
    assert session.gets == 2


def test_a_hung_monitor_costs_one_job_one_timeout_then_is_left_alone(monitor: str) -> None:
    # A monitor that accepts and never answers (frozen, or stuck) must not hold every job for the read timeout.
    now = [0.0]

    class HungAfterFirst(CountingSession):
        def get(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            if self.gets >= 1:
                self.gets += 1
                raise requests.ReadTimeout("the monitor did not answer")
            return super().get(*args, **kwargs)

    session = HungAfterFirst()
    predictor = MonitorPredictor(monitor, HOST, session=session, retry_after_s=30, clock=lambda: now[0])
    learned = predictor.estimate(DEFAULT_JOB, "0")
    now[0] = 5
    stale = predictor.estimate(DEFAULT_JOB, "0")
    assert stale == learned
    assert stale.source.endswith(
        "its answer from 5 s ago (the monitor did not answer (ReadTimeout); asking again in 30 s)"
    )
    for _ in range(5):
        assert predictor.estimate(DEFAULT_JOB, "0") == learned
    assert session.gets == 2  # left alone after the one that timed out
    now[0] = 36
    predictor.estimate(DEFAULT_JOB, "0")
    assert session.gets == 3


def test_without_the_monitor_the_table_answers_at_once_and_says_why() -> None:
    session, now = CountingSession(), [0.0]
    predictor = MonitorPredictor(f"http://127.0.0.1:{free_port()}", HOST, session=session, clock=lambda: now[0])

    verdict = admit(DEFAULT_JOB, lambda: TIGHT, predictor.for_gpu("0"))

    assert verdict.params == replace(DEFAULT_JOB, resolution=256)  # as the table decides
    assert verdict.notes[0].startswith("memory estimate from the table: 6.0 GB (the monitor did not answer (Connection")
    assert "degraded 512p/16 frames to 256p/16 frames" in verdict.notes[1]
    assert session.gets == 1  # the degraded shape did not ask again: the monitor is left alone a while
    assert predictor.estimate(DEFAULT_JOB, "0") == table_estimate(DEFAULT_JOB)
    assert session.gets == 1
    now[0] = 31
    predictor.estimate(DEFAULT_JOB, "0")
    assert session.gets == 2


def test_while_the_monitor_is_down_its_last_answer_for_the_job_beats_the_table(tmp_path: Path) -> None:
    app = measured_monitor(tmp_path)
    server = AppServer(app).start()
    now = [0.0]
    predictor = MonitorPredictor(server.url, HOST, retry_after_s=30, max_stale_s=3600, clock=lambda: now[0])
    try:
        learned = predictor.estimate(DEFAULT_JOB, "0")
    finally:
        server.stop()
        get_context(app).close()
    now[0] = 61  # the monitor is gone

    stale = predictor.estimate(DEFAULT_JOB, "0")
    assert stale == learned
    assert "learned from 30 job(s)" in stale.source
    assert "its answer from 61 s ago (the monitor did not answer (Connection" in stale.source
    assert predictor.estimate(replace(DEFAULT_JOB, num_frames=24), "0") == table_estimate(
        replace(DEFAULT_JOB, num_frames=24)
    )  # never asked for: the table
    now[0] = 3700
    assert predictor.estimate(DEFAULT_JOB, "0") == table_estimate(DEFAULT_JOB)  # too old to trust


def test_a_monitor_that_answers_nonsense_is_not_believed(monitor: str) -> None:
    predictor = MonitorPredictor(monitor + "/nowhere", HOST)
    estimate = predictor.estimate(DEFAULT_JOB, "0")
    assert estimate == table_estimate(DEFAULT_JOB)
    assert "did not answer (ValueError)" in estimate.source


def page_app(predictor: MonitorPredictor | None) -> Flask:
    """The generator's advice routes over a runtime with one GPU worker (the routes read nothing else)."""
    app = Flask("generator-page")
    app.extensions["generator"] = SimpleNamespace(predictor=predictor, workers=[SimpleNamespace(gpu="0")])
    app.register_blueprint(advice)
    return app


def test_the_page_gets_the_recommendation_and_predictions_through_the_generator(monitor: str) -> None:
    client = page_app(MonitorPredictor(monitor, HOST)).test_client()

    recommendation = client.get("/api/recommendation")
    assert recommendation.status_code == 200
    body = recommendation.get_json()
    assert body["gpu"]["host"] == HOST
    assert body["fits"] is True
    assert set(body["recommended"]) == {"resolution", "num_frames", "steps", "guidance_scale"}
    assert body["reason"]

    prediction = client.get("/api/predict?resolution=1024&frames=32&steps=50")
    assert prediction.status_code == 200
    assert prediction.get_json()["fits"] is True
    assert client.get("/api/predict?resolution=1000&frames=32&steps=50").status_code == 400
    assert client.get("/api/recommendation?gpu=5").status_code == 400


def test_the_page_routes_say_when_there_is_no_monitor_or_it_is_down() -> None:
    assert page_app(None).test_client().get("/api/recommendation").status_code == 503
    down = page_app(MonitorPredictor(f"http://127.0.0.1:{free_port()}", HOST)).test_client().get("/api/recommendation")
    assert down.status_code == 504
    assert "did not answer" in down.get_json()["error"]


def test_workers_get_the_monitors_estimate_when_a_monitor_is_configured(tmp_path: Path) -> None:
    from generator.app import Runtime
    from generator.config import GeneratorConfig

    config = GeneratorConfig(outputs=tmp_path / "out", state_dir=tmp_path / "state", monitor_url="http://127.0.0.1:9")
    runtime = Runtime(config)  # workers are built, not started: nothing loads
    try:
        assert runtime.predictor is not None
        assert runtime.workers[0].estimate is not table_estimate
    finally:
        runtime.events.close()
        runtime.book.close()
    bare = Runtime(replace(config, monitor_url=None, state_dir=tmp_path / "state2"))
    try:
        assert bare.predictor is None
        assert bare.workers[0].estimate is table_estimate
    finally:
        bare.events.close()
        bare.book.close()


@pytest.mark.parametrize(
    ("used_gb", "own_gb"),
    [(10, 10), (30, 10), (110, 10), (140, 0), (20, 0)],
    ids=["alone", "a small neighbour", "a neighbour filling the card", "a full card", "no generator attributed"],
)
def test_admission_and_the_monitors_fits_draw_the_same_line(used_gb: int, own_gb: int) -> None:
    # What /predict calls "fits" must be what admission runs undegraded: a job needing exactly the monitor's
    # available bytes is admitted as asked, one byte more is degraded or refused.
    from monitor.analysis.devices import DeviceState

    total, used, own = 141 * GiB, used_gb * GiB, own_gb * GiB
    device = DeviceState("h", "0", "NVIDIA H200", total, used, own or None, 0)
    available = device.available_bytes

    def memory() -> tuple[int, int]:
        return total - used, total

    at_line = admit(DEFAULT_JOB, memory, estimate=lambda params: available, resident_bytes=own)
    over_line = admit(DEFAULT_JOB, memory, estimate=lambda params: available + 1, resident_bytes=own)
    assert at_line.params == DEFAULT_JOB
    assert over_line.params != DEFAULT_JOB
