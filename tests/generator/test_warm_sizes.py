"""A worker knows the sizes its process has run: it says so on each job's first step and charges a new size's warm-up.

The first denoising step at a size new to the process pays a one-off warm-up (cuDNN, the allocator). The worker
(the tiny model on the CPU, two-step jobs of sizes below the API's floor, queued straight into its book) tells the
monitor which jobs paid it, and adds the monitor's predicted warm-up to the time of a job whose size is new to it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from generator import eta
from generator.admission import MemoryEstimate
from generator.events import EventSender
from generator.jobs import Job, JobBook
from generator.metrics import GeneratorMetrics
from generator.predictor import MonitorPredictor
from generator.validation import JobParams
from generator.warm_sizes import WarmSizes
from generator.worker import WARMUP, Worker
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import open_store
from monitor.web.context import get_context
from tests.monitor.history import NOW_NS, gpu_sample, history, random_shapes, summarize_into
from tests.servers import AppServer, wait_for

HOST = "gen-host"


class FirstSteps(logging.Handler):
    """Keep what each job's first denoising step said (every event rides on its log record)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: dict[str, bool | None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Keep step 1's `first_at_size`."""
        event: dict[str, Any] = record.event  # type: ignore[attr-defined]
        if event["stage"] == "denoising_step" and event["step"] == 1:
            self.said[event["job_id"]] = event["first_at_size"]


class TinyWorker:
    """A started worker on the tiny model (CPU): one generator process."""

    def __init__(self, root: Path, steps: FirstSteps) -> None:
        self.root, self.steps = root, steps
        self.book = JobBook(root / "state", queue_size=4)
        self.worker = Worker(
            book=self.book,
            events=EventSender(None, root / "spool", spool_max_bytes=2**20),
            metrics=GeneratorMetrics(),
            model="tiny",
            device=torch.device("cpu"),
            dtype=torch.float32,
            outputs=root / "outputs",
            cache_dir=root / "cache",
            host_name=HOST,
        )
        self.worker.start()
        wait_for(lambda: self.worker.ready.is_set() or self.worker.load_error is not None, 300, "the model to load")
        assert self.worker.load_error is None

    def run(self, resolution: int, num_frames: int, guidance_scale: float = 9.0) -> bool | None:
        """Run a two-step job of this size to its end; return what its first step said."""
        params = JobParams(resolution, num_frames, steps=2, guidance_scale=guidance_scale, fps=8, seed=1)
        job_id = uuid.uuid4().hex
        (self.root / "outputs" / job_id).mkdir(parents=True)
        Image.new("RGB", (80, 60), (200, 120, 40)).save(self.root / "outputs" / job_id / "input.png")
        self.book.submit(job_id, "a red fox", params, retry_after_s=1)

        def ended() -> bool:
            job = self.book.get(job_id)
            return job is not None and job.state not in ("queued", "running")

        wait_for(ended, 300, f"job {job_id} to end")
        job = self.book.get(job_id)
        assert job is not None
        assert job.state == "succeeded", job.error
        return self.steps.said[job_id]

    def close(self) -> None:
        """Stop the worker: its process ends."""
        self.worker.stop()
        self.book.close()


@pytest.fixture
def first_steps() -> Iterator[FirstSteps]:
    handler = FirstSteps()
    logger = logging.getLogger("generator.event")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.slow
def test_each_jobs_first_step_says_whether_its_size_was_new_to_the_process_and_a_restart_forgets(
    tmp_path: Path, first_steps: FirstSteps
) -> None:
    process = TinyWorker(tmp_path, first_steps)
    try:
        assert process.run(64, 8) is True
        assert process.run(64, 8) is False  # a repeat: no warm-up
        assert not process.worker.warm_sizes.is_new(WARMUP)  # the start-up warm-up ran its size
    finally:
        process.close()
    restarted = TinyWorker(tmp_path, first_steps)  # the same state and book, a new process
    try:
        assert restarted.run(64, 8) is True
    finally:
        restarted.close()


def test_a_new_sizes_predicted_run_adds_the_warm_up_a_size_run_before_does_not() -> None:
    known = JobParams(512, 16, 20, 9.0, 8)
    sizes = WarmSizes()
    assert sizes.ran(known) is True
    assert sizes.ran(replace(known, steps=50, seed=3)) is False  # steps and seed do not change the shape
    assert sizes.is_new(replace(known, guidance_scale=1.0))  # one batch instead of two: another shape
    answer = MemoryEstimate(8 * 10**9, "memory estimate from the monitor", run_s=6.0, warmup_s=0.5)

    assert eta.predicted_run_s(answer, sizes.is_new(known)) == pytest.approx(6.0)
    assert eta.predicted_run_s(answer, sizes.is_new(replace(known, num_frames=24))) == pytest.approx(6.5)
    assert eta.predicted_run_s(8 * 10**9, True) is None  # the table predicts no time
    assert eta.predicted_run_s(MemoryEstimate(8 * 10**9, "an older monitor", run_s=6.0), True) == pytest.approx(6.0)


def test_a_running_jobs_eta_before_its_first_step_is_its_predicted_run_less_the_time_it_has_run() -> None:
    now = time.time()
    job = Job("j", "a fox", WARMUP, WARMUP, state="running", started_at=now - 2.0, predicted_run_s=6.5)

    assert eta.remaining_s(job, [], now=now) == pytest.approx(4.5)
    assert eta.remaining_s(replace(job, started_at=now - 9.0), [], now=now) == 0.0


def test_the_monitors_answer_carries_the_warm_time_and_warm_up_when_kept_for_an_outage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    store = open_store(url)
    summarize_into(store, history(random_shapes(30), host=HOST))
    store.write([gpu_sample(used=20 * 10**9, own=15 * 10**9, host=HOST)])
    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp_path / "spool", data_dir=tmp_path)
    app = create_app(config, store=store, clock_ns=lambda: NOW_NS)
    server = AppServer(app).start()
    now = [0.0]
    try:
        predictor = MonitorPredictor(server.url, HOST, clock=lambda: now[0])
        params = JobParams(512, 16, 50, 9.0, 8)
        answer = predictor.estimate(params, "0")
    finally:
        server.stop()
        get_context(app).close()
    now[0] = 61  # the monitor is gone: its last answer for the job stands in
    kept = predictor.estimate(params, "0")

    assert isinstance(answer, MemoryEstimate)
    assert answer.run_s is not None
    assert answer.run_s > 0
    assert answer.warmup_s is not None
    assert 0.3 < answer.warmup_s < 0.9  # no job said it was first at its size: the H200's prior
    assert isinstance(kept, MemoryEstimate)
    assert (kept.run_s, kept.warmup_s) == (answer.run_s, answer.warmup_s)
    assert "ago" in kept.source
