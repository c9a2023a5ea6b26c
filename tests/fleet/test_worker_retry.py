"""A queue-mode worker's own decisions, on a real redis-server and the real pipeline code (micro model):
an out-of-memory failure is retried once at the next smaller size, with both attempts in the notes; a second
one ends the job; a warm shutdown hands the running job back to the queue.

The OOM is injected (a CPU has none to give): `torch.cuda.OutOfMemoryError` raised where the pipeline runs,
as a GPU's allocator raises it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from PIL import Image

from generator.events import EventSender
from generator.fleet.broker import QUEUE_NAME, make_celery
from generator.fleet.gpu_worker import QueueWorker
from generator.fleet.store import RedisJobStore, new_job
from generator.metrics import GeneratorMetrics
from generator.validation import JobParams
from tests.servers import RedisServer

ASKED = JobParams(resolution=512, num_frames=16, steps=10, guidance_scale=1.0, fps=8)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run this module's pipelines on one thread, as the worker processes do: on two shared cores, torch's
    default threads spin against each other and a one-second job takes a minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def worker(
    redis_server: RedisServer, micro_model: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None
) -> QueueWorker:
    """One queue worker in this process, its model loaded and warmed."""
    root = tmp_path_factory.mktemp("worker")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    running = QueueWorker(
        store=RedisJobStore(client),
        celery=make_celery(redis_server.url, visibility_timeout_s=3600),
        name="worker-test",
        lease_s=30,
        events=EventSender(None, root / "spool", spool_max_bytes=2**20),
        metrics=GeneratorMetrics(),
        model=str(micro_model),
        device=torch.device("cpu"),
        dtype=torch.float32,
        outputs=root / "outputs",
        cache_dir=root / "cache",
        host_name="host-t",
    )
    assert running.load(), running.load_error
    return running


def submit(worker: QueueWorker, params: JobParams = ASKED) -> str:
    """Record a queued job with its input on disk, as the API does; return its id."""
    job = new_job(uuid.uuid4().hex, "a fox", params, "normal")
    (worker.outputs / job.job_id).mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 120, 40)).save(worker.outputs / job.job_id / "input.png")
    worker.store.create(job, max_queued=100, retry_after_s=1)
    return job.job_id


def failing_first(worker: QueueWorker, monkeypatch: pytest.MonkeyPatch, failures: int) -> list[JobParams]:
    """Make the next `failures` pipeline runs raise CUDA's OOM error; return the parameters of every run."""
    real: Callable[..., Any] = worker._call_pipeline
    runs: list[JobParams] = []

    def call(params: JobParams, *args: Any, **kwargs: Any) -> Any:
        runs.append(params)
        if len(runs) <= failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(params, *args, **kwargs)

    monkeypatch.setattr(worker, "_call_pipeline", call)
    return runs


def published(worker: QueueWorker) -> int:
    """Return how many task messages wait in the broker's lists (all priorities)."""
    return sum(worker.store.r.llen(key) for key in worker.store.r.keys(f"{QUEUE_NAME}*"))


def test_an_oom_is_retried_once_at_the_next_size_down_with_both_attempts_noted(
    worker: QueueWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = failing_first(worker, monkeypatch, failures=1)
    job_id = submit(worker)
    before = published(worker)
    worker.handle(job_id)  # attempt 1: out of memory at 512p/16
    job = worker.store.get(job_id)
    assert job is not None
    assert job.state == "queued"
    assert published(worker) == before + 1  # its task is on the queue again, for whichever worker is free
    assert (job.effective.resolution, job.effective.num_frames) == (256, 16)
    worker.handle(job_id)  # attempt 2, as the redelivered task runs it
    job = worker.store.get(job_id)
    assert job is not None
    assert job.state == "succeeded", job.error
    assert [(p.resolution, p.num_frames) for p in runs] == [(512, 16), (256, 16)]
    assert job.requested == ASKED
    (retry_note,) = [note for note in job.notes if "ran out of GPU memory" in note]
    assert "512p/16 frames" in retry_note
    assert "retried once at 256p/16 frames" in retry_note
    assert (worker.outputs / job_id / "video.mp4").is_file()


def test_a_second_oom_ends_the_job_with_the_suggestion(worker: QueueWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_first(worker, monkeypatch, failures=2)
    job_id = submit(worker)
    worker.handle(job_id)
    worker.handle(job_id)
    job = worker.store.get(job_id)
    assert job is not None
    assert job.state == "failed"
    assert (job.error or "").startswith("CUDA out of memory")
    assert "try 256p with 8 frames" in (job.suggestion or "")
    assert any("retried once" in note for note in job.notes)


def test_a_warm_shutdown_hands_the_running_job_back_to_the_queue(worker: QueueWorker) -> None:
    job_id = submit(worker, JobParams(resolution=256, num_frames=8, steps=10, guidance_scale=1.0, fps=8))
    worker.stop_at_next_step()
    try:
        worker.handle(job_id)
    finally:
        worker._stop.clear()
    job = worker.store.get(job_id)
    assert job is not None
    assert job.state == "queued"
    assert "stopped during this attempt: queued again" in job.notes[-1]
    worker.handle(job_id)  # the next worker runs it
    assert worker.store.get(job_id).state == "succeeded"
