"""One GPU worker of queue mode: `python -m generator worker --queue redis://host:port/db [--gpu N]`.

The process loads and warms the model once, in its own main thread (the thread that later runs every job:
Celery's solo pool, no fork), then consumes `i2v.run_job` tasks one at a time. Each task claims its job in the
shared store (idempotent on the job id), runs it through the same `Worker` as single-host mode (admission
against this GPU, stage events, the scheduler-step cancel point, OOM handling, export) and writes every change
through `FleetBook`, whose writes only the current attempt may make. Beside it:
- a housekeeping thread announces the worker, renews the running job's lease, hands the jobs of workers that
  died back to the queue, and serves long-waiting low-priority jobs as high;
- a small HTTP server answers /health, /ready (model loaded and warmed) and /metrics for probes and Prometheus.
An out-of-memory failure is retried once at the next smaller size (on whichever worker takes it); a warm
shutdown (SIGTERM) stops the running job at its next step and hands it back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import redis
import torch
from celery import Celery, signals
from celery.exceptions import Reject
from flask import Flask, Response, jsonify
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from waitress.server import create_server

from common.events import FINAL_STATES
from generator.acceleration import prepare_cache
from generator.admission import GiB, admit, next_smaller
from generator.config import GeneratorConfig
from generator.events import EventSender
from generator.fleet.api_queue import REDIS_ERRORS, redis_client
from generator.fleet.broker import QUEUE_NAME, TASK_NAME, make_celery, publish
from generator.fleet.store import Claim, RedisJobStore
from generator.jobs import Job
from generator.metrics import GeneratorMetrics
from generator.pipeline import pick_device
from generator.predictor import MonitorPredictor
from generator.worker import OOM_PREFIX, Worker, acceleration_view

log = logging.getLogger(__name__)

# How long a worker keeps trying to record a job's end while Redis is away before giving the job up.
FINISH_RETRY_S = 600.0
# How often a job refused for lack of memory here is handed to the queue again before it is failed.
MAX_HANDBACKS = 2


class LostJob(Exception):
    """The job was handed to another attempt (this worker was given up for dead): drop this attempt's result."""


class FleetBook:
    """The job book a `Worker` writes through in queue mode: owner-checked writes to the shared store.

    Progress writes are best effort (a Redis outage skips them; the next one carries the latest state); the
    final write is retried until Redis answers; a write that finds the job no longer this attempt's marks it
    lost and asks the run to stop at its next step.
    """

    def __init__(self, store: RedisJobStore) -> None:
        self.store = store
        self.tokens: dict[str, str] = {}
        self.lost: set[str] = set()
        self._outage_logged = False

    def update(self, job: Job, **changes: Any) -> None:
        """Change a job's fields and write them, if this attempt still owns the job."""
        for name, value in changes.items():
            setattr(job, name, value)
        token = self.tokens[job.job_id]
        if changes.get("state") in FINAL_STATES:
            self._finish(job, token)
            return
        try:
            answer = self.store.write(job, token)
        except REDIS_ERRORS as error:
            if not self._outage_logged:
                log.warning("cannot record progress (%s): going on; the job's end is retried", error)
                self._outage_logged = True
            return
        self._outage_logged = False
        if answer < 0:
            self.lost.add(job.job_id)
        job.cancel_requested = job.cancel_requested or answer != 0

    def _finish(self, job: Job, token: str) -> None:
        deadline = time.monotonic() + FINISH_RETRY_S
        pause_s = 0.2
        while True:
            try:
                if not self.store.finish(job, token):
                    self.lost.add(job.job_id)
                    raise LostJob(f"job {job.job_id} belongs to another attempt now")
                return
            except REDIS_ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause_s)  # Redis is away: wait for it, the job's end must be recorded
                pause_s = min(pause_s * 2, 5.0)

    def pending(self) -> int:
        """Return 0: the queue's depth is the API's to report."""
        return 0


class QueueWorker(Worker):
    """A `Worker` whose end of a job may instead be a hand-back: an OOM retry, a shutdown, a lost attempt."""

    def __init__(self, *, store: RedisJobStore, celery: Celery, name: str, lease_s: float, **kwargs: Any) -> None:
        super().__init__(book=FleetBook(store), **kwargs)  # type: ignore[arg-type]
        self.store, self.celery, self.name, self.lease_s = store, celery, name, lease_s
        self.current: tuple[str, str] | None = None  # (job id, token) of the running attempt

    @property
    def fleet_book(self) -> FleetBook:
        """The book, typed."""
        return self.book  # type: ignore[return-value]

    def handle(self, job_id: str) -> None:
        """Run one delivered job, unless another attempt holds it or it has ended (then only acknowledge)."""
        claim = self._claim(job_id)
        if claim.verdict == "ended" and claim.job is not None:
            self.job_event(claim.job, "failed")
        if claim.verdict != "run" or claim.job is None or claim.token is None:
            log.info("job %s not run here: %s", job_id, claim.verdict)
            return
        job = claim.job
        job.host = self.host_name
        self.fleet_book.tokens[job_id] = claim.token
        self.current = (job_id, claim.token)
        try:
            if self._refused_here(job, claim):
                return
            self.run_job(job)
        except LostJob as error:
            log.warning("%s: this attempt's result is dropped", error)
        except Exception as error:  # the task's boundary: the job ends failed with the reason, the worker goes on
            log.exception("job %s could not be completed or reported", job_id)
            if job.state == "running" and job_id not in self.fleet_book.lost:
                self.fleet_book.update(
                    job, state="failed", finished_at=time.time(), error=f"internal error: {error.__class__.__name__}"
                )
        finally:
            self.current = None
            self.fleet_book.tokens.pop(job_id, None)
            self.fleet_book.lost.discard(job_id)

    def _claim(self, job_id: str) -> Claim:
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                return self.store.claim(job_id, self.name, self.lease_s)
            except REDIS_ERRORS:
                if time.monotonic() > deadline:
                    raise Reject("Redis stayed unreachable", requeue=True) from None
                time.sleep(1.0)

    def stop_at_next_step(self) -> None:
        """Stop the running job at its next denoising step; it is handed back to the queue."""
        self._stop.set()

    def _refused_here(self, job: Job, claim: Claim) -> bool:
        """Hand a job that cannot fit this GPU now to another worker; fail it when none can take it."""
        memory = self._memory()
        if memory is None:
            return False
        resident = torch.cuda.memory_allocated(self.device)
        verdict = admit(job.effective, memory, self.estimate, resident)
        if verdict.params is not None:
            return False
        handbacks = sum("handed back" in note for note in job.notes)
        others = [w for w in self.store.workers() if w["name"] != self.name and w.get("ready")]
        reason = verdict.notes[-1]
        if others and handbacks < MAX_HANDBACKS:
            job.notes.append(f"{self.host_name} GPU {self.gpu} {reason}: handed back to the queue for another GPU")
            serve_as = self.store.requeue(job, claim.token or "")
            if serve_as is not None:
                publish(self.celery, job.job_id, serve_as)
                self.job_event(job, "queued")
            return True
        fits = max((w.get("usable_bytes") or 0 for w in others), default=0)
        self.fleet_book.update(
            job,
            state="failed",
            finished_at=time.time(),
            error=f"no worker can fit this job: {reason}"
            + (f"; the largest other GPU offers {fits / GiB:.1f} GB" if fits else ""),
            suggestion="lower the resolution or the number of frames, or add a larger GPU",
        )
        self.metrics.requests.labels("failed").inc()
        self.job_event(job, "failed")
        return True

    def _finish(self, job: Job, state: str, **fields: Any) -> None:
        if job.job_id in self.fleet_book.lost:
            raise LostJob(f"job {job.job_id} was handed to another worker while it ran here")
        error = fields.get("error") or ""
        smaller = next_smaller(job.effective)
        if state == "failed" and error.startswith(OOM_PREFIX) and smaller is not None and self._first_oom(job):
            self.metrics.consecutive_ooms.inc()
            tried = job.effective
            job.notes.append(
                f"attempt at {tried.resolution}p/{tried.num_frames} frames ran out of GPU memory on {self.host_name} "
                f"GPU {self.gpu} ({error[:200]}): retried once at {smaller.resolution}p/{smaller.num_frames} frames"
            )
            job.effective = smaller
            self._hand_back(job)
            return
        if state == "cancelled" and self._stop.is_set() and not job.cancel_requested:
            job.notes.append(f"worker {self.name} stopped during this attempt: queued again")
            self._hand_back(job)
            return
        super()._finish(job, state, **fields)

    def _first_oom(self, job: Job) -> bool:
        return bool(self.store.r.hsetnx(self.store.key(job.job_id), "oom_retried", 1))

    def _hand_back(self, job: Job) -> None:
        serve_as = self.store.requeue(job, self.fleet_book.tokens[job.job_id])
        if serve_as is None:
            raise LostJob(f"job {job.job_id} was handed to another worker while it ran here")
        publish(self.celery, job.job_id, serve_as)
        self.job_event(job, "queued")
        log.info("job %s handed back to the queue: %s", job.job_id, job.notes[-1])


class Housekeeper:
    """A thread that announces the worker, renews its job's lease, and sweeps and ages the shared queue."""

    def __init__(self, worker: QueueWorker, config: GeneratorConfig, info: dict[str, Any]) -> None:
        self.worker, self.config, self.info = worker, config, info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Start ticking every third of the lease."""
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and say this worker has gone."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(*REDIS_ERRORS):  # else its announcement expires on its own
            self.worker.store.unregister_worker(self.worker.name)

    def tick(self) -> None:
        """Do one round: announce, renew, sweep, promote."""
        w, store, lease_s = self.worker, self.worker.store, self.config.lease_s
        current = w.current
        announcement = {**self.info, "ready": w.ready.is_set(), "error": w.load_error, "gpu_name": w.gpu_name,
                        "gpu_uuid": w.gpu_uuid, "job_id": current[0] if current else None,
                        "seen_at": time.time()}  # fmt: skip
        store.register_worker(w.name, announcement, ttl_s=lease_s)
        if current is not None:
            store.renew(current[0], current[1], lease_s)
        for swept in store.sweep_running(grace_s=lease_s):
            log.warning("job %s %s: %s", swept.job.job_id, swept.action, swept.job.notes[-1:] or swept.job.error)
            if swept.action == "requeued":
                publish(w.celery, swept.job.job_id, swept.serve_as)
                w.job_event(swept.job, "queued")
            else:
                w.job_event(swept.job, swept.action)
        for job in store.promote(self.config.priority_max_wait_s):
            publish(w.celery, job.job_id, "high")
        store.trim()

    def _run(self) -> None:
        while not self._stop.wait(self.config.lease_s / 3):
            try:
                self.tick()
                if self._failing:
                    log.info("Redis answers again: housekeeping resumed")
                self._failing = False
            except REDIS_ERRORS as error:
                if not self._failing:
                    log.warning(
                        "housekeeping cannot reach Redis (%s): retrying every %.1f s", error, self.config.lease_s / 3
                    )
                self._failing = True
            except Exception:  # the loop boundary: one bad round must not end the worker's lease renewals
                log.exception("housekeeping round failed; the next one runs as usual")


def health_app(worker: QueueWorker, metrics: GeneratorMetrics, events: EventSender) -> Flask:
    """Return the worker's probe and metrics endpoints."""
    app = Flask("generator-worker")

    @app.get("/health")
    def health() -> Response:
        return jsonify(
            status="ok", pid=os.getpid(), name=worker.name, host=worker.host_name, gpu=worker.gpu,
            ready=worker.ready.is_set(), progress=worker.status, error=worker.load_error,
            job_id=worker.current[0] if worker.current else None,
            acceleration=acceleration_view(worker.acceleration, [worker]), events_spooled=events.pending(),
        )  # fmt: skip

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        if worker.ready.is_set():
            return jsonify(ready=True), 200
        return jsonify(ready=False, reason=worker.load_error or worker.status), 503

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.events_spooled.set(events.pending())
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def run_worker(config: GeneratorConfig) -> int:
    """Load the model, then consume jobs until SIGTERM; return the exit status."""
    assert config.queue_url is not None
    device, dtype = pick_device()
    if device.type == "cuda":
        device = torch.device("cuda", config.gpu)
    gpu = str(config.gpu) if device.type == "cuda" else "cpu"
    name = f"{config.host_name}-gpu{gpu}-{os.getpid()}"
    metrics = GeneratorMetrics()
    events = EventSender(
        config.monitor_url,
        config.state_dir / "event-spool",
        spool_max_bytes=config.event_spool_bytes,
        token=config.ingest_token,
    )
    metrics.watch_events(events)
    store = RedisJobStore(redis_client(config.queue_url, timeout_s=5.0))
    celery = make_celery(config.queue_url, config.visibility_timeout_s)
    predictor = MonitorPredictor(config.monitor_url, config.host_name) if config.monitor_url else None
    acceleration = config.acceleration(on_gpu=device.type == "cuda")
    if acceleration.compile and acceleration.cache_dir is not None:
        # Before the first compile: the caches' folder is process-wide, read when inductor first needs it.
        prepare_cache(acceleration.cache_dir)
    worker = QueueWorker(
        store=store,
        celery=celery,
        name=name,
        lease_s=config.lease_s,
        events=events,
        metrics=metrics,
        model=config.model,
        device=device,
        dtype=dtype,
        outputs=config.outputs,
        cache_dir=config.state_dir / "cache",
        host_name=config.host_name,
        memory_fraction=config.gpu_memory_fraction,
        acceleration=acceleration,
        **({"estimate": predictor.for_gpu(gpu)} if predictor else {}),
    )
    server = create_server(health_app(worker, metrics, events), host=config.host, port=config.port, threads=2)
    threading.Thread(target=server.run, name="worker-health", daemon=True).start()
    info = {"host": config.host_name, "gpu": gpu, "model": config.model, "pid": os.getpid(),
            "port": config.port, "usable_bytes": _usable_bytes(device, config.gpu_memory_fraction)}  # fmt: skip
    housekeeper = Housekeeper(worker, config, info)
    housekeeper.start()
    log.info("worker %s loading model %s on %s", name, config.model, device)
    # In the thread that runs every job: with the solo pool, Celery runs tasks in this process' main thread.
    if not worker.load():
        housekeeper.stop()
        server.close()
        return 1

    @celery.task(name=TASK_NAME)
    def run_job(job_id: str) -> None:
        worker.handle(job_id)

    def shutting_down(**_: Any) -> None:
        worker.stop_at_next_step()

    signals.worker_shutting_down.connect(shutting_down, weak=False)
    log.info("worker %s ready: consuming %s on %s", name, QUEUE_NAME, config.queue_url.split("@")[-1])
    argv = ["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "-Q", QUEUE_NAME, "-n",
            f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel=INFO"]  # fmt: skip
    status = 0
    try:
        celery.worker_main(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        housekeeper.stop()
        events.flush(timeout_s=5)
        events.close()
        server.close()
    return status


def _usable_bytes(device: torch.device, fraction: float | None) -> int | None:
    if device.type != "cuda":
        return None
    _, total = torch.cuda.mem_get_info(device)
    return int(total * (fraction or 1.0) * 0.8)


def redis_reachable(url: str) -> str | None:
    """Return None when Redis at `url` answers a ping, else the reason."""
    try:
        redis_client(url, timeout_s=3.0).ping()
    except (redis.exceptions.RedisError, OSError) as error:
        return f"{error.__class__.__name__}: {error}"
    return None
