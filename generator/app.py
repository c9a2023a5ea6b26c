"""The generator's HTTP API and page: submit, watch, cancel and fetch jobs; health, readiness and metrics."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request, send_file
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from common import job_token, openapi
from common.auth import bearer_allows
from common.events import iso_from_epoch_s
from common.http_metrics import instrument
from common.redact import redact_url
from common.sizing import LIMITS, RESOLUTIONS, form_defaults
from common.viewer import session_blueprint, viewer_only
from generator import eta, progress, rating
from generator.acceleration import Acceleration, prepare_cache
from generator.admission import table_estimate
from generator.config import GeneratorConfig
from generator.events import EventSender, job_state_event, rejection_event
from generator.fleet.unavailable import QueueUnavailable
from generator.fleet_status import fleet_status
from generator.jobs import ACTIVE_STATES, Job, JobBook, QueueFull
from generator.metrics import GeneratorMetrics
from generator.pipeline import pick_device
from generator.predictor import MonitorPredictor, advice
from generator.retention import Retention
from generator.validation import (
    MAX_PROMPT_CHARS,
    PRIORITIES,
    JobParams,
    ValidationError,
    parse_image,
    parse_params,
    parse_priority,
    parse_prompt,
)
from generator.worker import Worker, acceleration_view

if TYPE_CHECKING:
    from generator.fleet.api_queue import CeleryQueue

api = Blueprint("generator", __name__)
log = logging.getLogger(__name__)


class Runtime:
    """What the routes share: the job book, the workers, the event sender and the metrics.

    Two backends behind one set of verbs: single-host mode (no queue URL) keeps the SQLite `JobBook` and one
    in-process worker per local GPU; queue mode keeps jobs in Redis and publishes them to Celery for the
    `python -m generator worker` processes (`CeleryQueue`), and this process runs no model.
    """

    def __init__(self, config: GeneratorConfig, devices: list[torch.device] | None = None) -> None:
        self.config = config
        self.metrics = GeneratorMetrics()
        self.fleet: CeleryQueue | None = None
        self.book: JobBook | CeleryQueue
        if config.queue_url:
            from generator.fleet.api_queue import CeleryQueue  # Celery and Redis load only in queue mode

            self.book = self.fleet = CeleryQueue(
                config.queue_url, config.queue_size, visibility_timeout_s=config.visibility_timeout_s
            )
        else:
            self.book = local_book = JobBook(config.state_dir, config.queue_size, config.priority_max_wait_s)
        self.metrics.watch_queue(self.depths)
        self.events = EventSender(
            config.monitor_url,
            config.state_dir / "event-spool",
            spool_max_bytes=config.event_spool_bytes,
            token=config.ingest_token,
        )
        self.metrics.watch_events(self.events)
        # Retention reads the local job book; in queue mode the jobs live in Redis and it does not run.
        self.retention: Retention | None = None
        if self.fleet is None:
            self.retention = Retention(
                local_book,
                config.outputs,
                max_age_s=config.retention_max_age_s,
                max_bytes=config.retention_max_bytes,
            )
            self.metrics.watch_retention(self.retention)
        # Admission asks the monitor for estimates learned from measured jobs, else uses the table.
        self.predictor = MonitorPredictor(config.monitor_url, config.host_name) if config.monitor_url else None
        self.workers: list[Worker] = []
        self.acceleration: Acceleration | None = None  # queue mode: the worker processes' own, in their /health
        if self.fleet is not None:
            return
        device, dtype = pick_device()
        if devices is None:
            count = torch.cuda.device_count() if device.type == "cuda" else 0
            devices = [torch.device("cuda", index) for index in range(count)] or [device]
        # no devices: a runtime that serves the API alone (the listing benchmark's), compiled for no GPU
        self.acceleration = config.acceleration(on_gpu=any(d.type == "cuda" for d in devices))
        self.workers = [
            Worker(
                book=local_book,
                events=self.events,
                metrics=self.metrics,
                model=config.model,
                device=d,
                dtype=dtype,
                outputs=config.outputs,
                cache_dir=config.state_dir / "cache",
                host_name=config.host_name,
                memory_fraction=config.gpu_memory_fraction,
                estimate=self.predictor.for_gpu(str(d.index or 0)) if self.predictor else table_estimate,
                acceleration=self.acceleration,
            )
            for d in devices
        ]
        for job in local_book.recovered:
            # Lost to a crash: failed in the API, so failed in the request metrics too, or the error ratio
            # (GeneratorErrorRateHigh) could never see crashes.
            self.metrics.requests.labels("failed").inc()
            if job.finished_at is not None:
                self.metrics.request_duration.observe(max(job.finished_at - job.created_at, 0.0))
            self.events.emit(job_state_event(job, "failed", config.host_name, job.gpu or self.workers[0].gpu))

    def start(self) -> None:
        """Start the workers (each loads, compiles and warms its model in the background)."""
        if self.acceleration and self.acceleration.compile and self.acceleration.cache_dir is not None:
            # Before any worker compiles: the caches' folder is process-wide, read when inductor first needs it.
            loaded = prepare_cache(self.acceleration.cache_dir)
            log.info("compile cache %s (%d artifacts loaded)", self.acceleration.cache_dir, loaded)
        for worker in self.workers:
            worker.start()
        if self.retention is not None:
            self.retention.start()

    def close(self) -> None:
        """Stop the workers, deliver what events can be, and close the job book."""
        if self.retention is not None:
            self.retention.stop()
        for worker in self.workers:
            worker.stop()
        self.events.flush(timeout_s=5)
        self.events.close()
        self.book.close()

    def history(self) -> list[Job]:
        """Return recent succeeded jobs, the basis of every time estimate."""
        if isinstance(self.book, JobBook):
            return self.book.history()  # kept as jobs succeed: no read
        return self.book.list(state="succeeded", limit=JobBook.HISTORY_JOBS)

    def worker_count(self) -> int:
        """Return how many workers serve the queue: local ones, or the live ones announced in Redis."""
        if self.fleet is None:
            return len(self.workers)
        return max(sum(1 for w in self.fleet.workers() if w.get("ready")), 1)

    @property
    def event_gpu(self) -> str:
        """The GPU tag of events this process emits itself (queued, cancelled while queued)."""
        return self.workers[0].gpu if self.workers else "queue"

    def depths(self) -> dict[str, tuple[int, float | None]]:
        """Return per priority the jobs waiting and the oldest one's age in seconds."""
        if self.fleet is not None:
            try:
                return self.fleet.depths()
            except QueueUnavailable:
                return {}
        now = time.time()
        out: dict[str, tuple[int, float | None]] = {p: (0, None) for p in PRIORITIES}
        for job in self.book.queued_jobs():
            count, age = out.get(job.priority, (0, None))
            out[job.priority] = (count + 1, max(age or 0.0, now - job.created_at))
        return out


def runtime() -> Runtime:
    """Return the app's runtime."""
    return current_app.extensions["generator"]


def create_app(config: GeneratorConfig, runtime_factory: Callable[[GeneratorConfig], Runtime] = Runtime) -> Flask:
    """Build the generator app; its workers start loading the model at once."""
    config.outputs.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__)
    # The image limit plus room for the form's other fields: a larger body is refused with 413 unread.
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes + 64 * 1024
    rt = runtime_factory(config)
    app.extensions["generator"] = rt
    instrument(app, rt.metrics.registry)
    # Each open progress stream holds one of waitress' threads: half of them at most, the rest serve requests.
    app.extensions["progress_streams"] = progress.StreamSlots(max(config.threads // 2, 1))
    app.register_blueprint(api)
    openapi.register(app, Path(__file__).with_name("openapi.yaml"))
    app.register_blueprint(advice)  # /api/recommendation and /api/predict, proxied to the monitor
    app.register_blueprint(fleet_status)  # /api/fleet: the workers and the queue, for the monitor's dashboard
    app.register_blueprint(session_blueprint("viewer_session", "/api", _tokens))  # the page's viewer sign-in
    # Job tokens (for rating one's own clip) are keyed from the admin token the monitor shares, so it can verify
    # them; without one, with a random key of this generator's own (the monitor's rating route is open then).
    token_key = (
        job_token.key_from_admin_token(config.admin_token)
        if config.admin_token
        else job_token.local_key(config.state_dir / "job-token.key")
    )
    rating.init_app(app, token_key)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(QueueUnavailable, _queue_unavailable)
    app.register_error_handler(Exception, _unexpected_error)
    rt.start()
    return app


def _http_error(error: HTTPException) -> tuple[Response, int]:
    message = error.description or error.name
    if error.code == 413:
        if request.method == "POST" and request.path == "/api/jobs":
            runtime().metrics.reject(413)  # refused before the route ran: a submission all the same
        limit = runtime().config.max_upload_bytes // 2**20
        message = (
            f"the request is too large: the image must be at most {limit} MB "
            f"and the prompt at most {MAX_PROMPT_CHARS} characters"
        )
    return jsonify(error=message, status=error.code), error.code or 500


def _queue_unavailable(error: QueueUnavailable) -> tuple[Response, int]:
    response = jsonify(error=str(error), status=503)
    response.headers["Retry-After"] = "10"
    return response, 503


def _unexpected_error(error: Exception) -> tuple[Response, int]:
    current_app.logger.exception("unhandled error on %s", request.path)
    return jsonify(error="internal error; see the generator's log", status=500), 500


def _tokens() -> tuple[str | None, str | None]:
    config = runtime().config
    return config.viewer_token, config.admin_token


viewer = viewer_only(_tokens)  # guards the routes that show prompts or clips


def _require_admin() -> Response | None:
    if bearer_allows(request.headers.get("Authorization"), runtime().config.admin_token):
        return None
    response = jsonify(error="this action needs the admin token: send 'Authorization: Bearer <ADMIN_TOKEN>'")
    response.status_code = 401
    return response


def job_view(job: Job, history: list[Job] | None = None) -> dict[str, Any]:
    """Return a job's public status: state, place, progress, ETA, stage times, parameters, result or error.

    `history` (the recent succeeded jobs) is read once per request by a caller that shows many jobs.
    """
    rt = runtime()
    eta_s: float | None = None
    position = None
    if job.state in ACTIVE_STATES and history is None:
        history = rt.history()
    if job.state == "running":
        eta_s = eta.remaining_s(job, history or [])
    elif job.state == "queued":
        history = history or []
        position = rt.book.position(job.job_id)
        queued = rt.book.queued_jobs()
        ahead = queued[: (position or 1) - 1]
        running = rt.book.list(state="running")
        wait = eta.queue_wait_s(ahead, running, history, rt.worker_count())
        own = eta.duration_estimate_s(job.effective, history)
        eta_s = None if wait is None or own is None else wait + own
    total = job.total_steps or job.effective.steps
    return {
        "job_id": job.job_id,
        "state": job.state,
        "priority": job.priority,
        "host": job.host,
        "gpu": job.gpu,
        "status_url": f"/api/jobs/{job.job_id}",
        "position": position,
        "progress": {"step": job.step, "total_steps": total, "ratio": round(job.step / total, 4) if total else 0},
        "eta_s": None if eta_s is None else round(eta_s, 1),
        "stage_durations_s": {k: round(v, 4) for k, v in job.stage_durations_s.items()},
        "requested": job.requested.to_dict(),
        "effective": job.effective.to_dict(),
        "notes": job.notes,
        "prompt": job.prompt,
        # The monitor's vocabulary too: RFC 3339 UTC times. `created_at` (epoch seconds) is the deprecated alias
        # of `submitted_at`, kept for the clients written against it.
        "submitted_at": iso_from_epoch_s(job.created_at),
        "started_at": iso_from_epoch_s(job.started_at),
        "finished_at": iso_from_epoch_s(job.finished_at),
        "created_at": job.created_at,
        "peak_memory_bytes": job.peak_memory_bytes,
        "peak_memory_allocated_bytes": job.peak_memory_allocated_bytes,
        "video_url": f"/api/jobs/{job.job_id}/video" if job.state == "succeeded" else None,
        "error": job.error,
        "suggestion": job.suggestion,
    }


@api.get("/")
def index() -> str:
    """Serve the page to submit a job and watch it."""
    rt = runtime()
    # Where the workers run decides what the form offers first: a job that finishes quickly there. In queue mode
    # the workers are processes elsewhere: a GPU's defaults unless every ready one announced a CPU.
    device_type, device = ("cuda", "")
    if rt.workers:
        device_type, device = rt.workers[0].device.type, rt.workers[0].gpu
    elif rt.fleet is not None:
        with contextlib.suppress(QueueUnavailable):  # Redis away: the page still serves, with a GPU's defaults
            gpus = {str(w.get("gpu")) for w in rt.fleet.workers() if w.get("ready")}
            if gpus == {"cpu"}:
                device_type, device = "cpu", "cpu"
    return render_template(
        "index.html",
        defaults=form_defaults(device_type),
        device=device,
        resolutions=RESOLUTIONS,
        limits=LIMITS,
        max_prompt=MAX_PROMPT_CHARS,
        monitor_url=rt.config.monitor_url,
        max_upload_bytes=rt.config.max_upload_bytes,
        viewer_token_required=bool(rt.config.viewer_token),
    )


@api.post("/api/jobs")
@viewer  # the answer shows the job, prompt included
def submit_job() -> tuple[Response, int] | Response:
    """Validate a multipart submission and queue it; 202 with the job, or a 4xx naming the field."""
    rt = runtime()
    try:
        upload = request.files.get("image")
        image = parse_image(upload.read() if upload else b"", rt.config.max_upload_bytes)
        prompt = parse_prompt(request.form.get("prompt"))
        params = parse_params(request.form)
        priority = parse_priority(request.form)
    except ValidationError as error:
        rt.metrics.reject(error.status)
        # Every request is reported, refused ones too, so failure rates have the right denominator.
        submitted_prompt = request.form.get("prompt") if error.field != "prompt" else None
        rt.events.emit(rejection_event(error, submitted_prompt, rt.config.host_name, rt.event_gpu))
        return jsonify(error.to_dict()), error.status
    try:
        return _queue_job(rt, image, prompt, params, priority)
    except QueueUnavailable:
        rt.metrics.requests.labels("rejected").inc()
        raise


def _queue_job(
    rt: Runtime, image: Image.Image, prompt: str, params: JobParams, priority: str
) -> tuple[Response, int] | Response:
    history = rt.history()
    per_job = eta.duration_estimate_s(params, history) or 60.0
    retry_after = max(int(per_job * rt.book.pending() / rt.worker_count()), 1)
    if rt.book.is_full():
        return _queue_full(QueueFull(retry_after))
    # The input is on disk before the job is queued: a worker may take it the moment it is.
    job_id = uuid.uuid4().hex
    job_dir = rt.config.outputs / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    image.save(job_dir / "input.partial.png", format="PNG")
    (job_dir / "input.partial.png").replace(job_dir / "input.png")
    try:
        job = rt.book.submit(
            job_id,
            prompt,
            params,
            retry_after_s=retry_after,
            on_queued=lambda queued: rt.events.emit(
                job_state_event(queued, "queued", rt.config.host_name, rt.event_gpu)
            ),
            priority=priority,
        )
    except QueueFull as full:
        shutil.rmtree(job_dir, ignore_errors=True)
        return _queue_full(full)
    except QueueUnavailable:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    rt.metrics.queue_pending.set(rt.book.pending())
    # Only the submitter gets the job's token, here and nowhere else: it lets them rate their own clip.
    response = jsonify({**job_view(job), "rating_token": rating.token_for(job.job_id)})
    response.headers["Location"] = f"/api/jobs/{job.job_id}"
    return response, 202


def _queue_full(full: QueueFull) -> tuple[Response, int]:
    rt = runtime()
    rt.metrics.reject(429)
    response = jsonify(error=str(full), field=None, allowed=rt.config.queue_size)
    response.headers["Retry-After"] = str(full.retry_after_s)
    return response, 429


@api.get("/api/jobs")
@viewer
def list_jobs() -> tuple[Response, int] | Response:
    """List jobs, newest first (`?state=` filters, `?limit=` up to 500)."""
    state = request.args.get("state")
    if state is not None and state not in ("queued", "running", "succeeded", "failed", "cancelled"):
        return jsonify(error="state must be one of queued, running, succeeded, failed, cancelled"), 400
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        return jsonify(error="limit must be an integer between 1 and 500"), 400
    if not 1 <= limit <= 500:
        return jsonify(error="limit must be an integer between 1 and 500"), 400
    rt = runtime()
    history = rt.history()
    return jsonify(jobs=[job_view(job, history) for job in rt.book.list(state=state, limit=limit)])


def _find(job_id: str) -> Job | tuple[Response, int]:
    job = runtime().book.get(job_id)
    if job is None:
        return jsonify(error=f"no job {job_id[:64]!r}: check the job_id returned by POST /api/jobs"), 404
    return job


@api.get("/api/jobs/<job_id>")
@viewer
def get_job(job_id: str) -> tuple[Response, int] | Response:
    """Return one job's status."""
    job = _find(job_id)
    return job if isinstance(job, tuple) else jsonify(job_view(job))


@api.get("/api/jobs/<job_id>/events")
@viewer  # the events carry the job's status, prompt included
def job_events(job_id: str) -> tuple[Response, int] | Response:
    """Stream the job's status as Server-Sent Events until it ends (generator/progress.py)."""
    job = _find(job_id)
    if isinstance(job, tuple):
        return job

    book = runtime().book

    def key() -> str | None:
        found = book.get(job_id)
        if found is None:
            return None
        return progress.event_id(found.state, found.step, book.position(job_id), len(found.notes))

    def view() -> dict[str, Any]:
        found = book.get(job_id)
        return job_view(found or job)

    slots = current_app.extensions["progress_streams"]
    return progress.respond(key, view, request.headers.get("Last-Event-ID"), slots)


@api.post("/api/jobs/<job_id>/cancel")
@viewer  # the answer shows the job; the admin token passes this check too
def cancel_job(job_id: str) -> tuple[Response, int] | Response:
    """Cancel a queued job at once or a running one at its next denoising step (202 until it stops)."""
    denied = _require_admin()
    if denied is not None:
        return denied
    rt = runtime()
    job = _find(job_id)
    if isinstance(job, tuple):
        return job
    if job.state in ("succeeded", "failed", "cancelled"):
        return jsonify({**job_view(job), "error": f"job already {job.state}; nothing to cancel"}), 409
    job = rt.book.cancel(job_id) or job
    if job.state == "cancelled":
        rt.metrics.requests.labels("cancelled").inc()
        rt.metrics.queue_pending.set(rt.book.pending())
        rt.events.emit(job_state_event(job, "cancelled", rt.config.host_name, rt.event_gpu))
        return jsonify(job_view(job))
    return jsonify(job_view(job)), 202


@api.get("/api/jobs/<job_id>/video")
@viewer
def job_video(job_id: str) -> tuple[Response, int] | Response:
    """Serve a finished job's H.264 MP4 (range requests supported, so browsers can seek)."""
    job = _find(job_id)
    if isinstance(job, tuple):
        return job
    if job.state != "succeeded" or not job.video_path:
        return jsonify(error=f"job is {job.state}: the video exists once it has succeeded"), 409
    path = Path(job.video_path)
    if not path.is_file():  # queue mode: the worker wrote it to the shared outputs, maybe mounted elsewhere
        path = runtime().config.outputs / job.job_id / path.name
    if not path.is_file():
        return jsonify(error=f"the video of job {job.job_id} is not in this generator's outputs"), 404
    return send_file(path, mimetype="video/mp4", conditional=True, max_age=3600)


@api.get("/health")
def health() -> Response:
    """Liveness, with the PID the monitor attributes GPU memory to."""
    rt = runtime()
    workers = [{"gpu": w.gpu, "ready": w.ready.is_set(), "status": w.status, "error": w.load_error} for w in rt.workers]
    queue: dict[str, Any] = {"mode": "in-process"}
    if rt.fleet is not None:
        queue = {"mode": "celery", "url": redact_url(rt.config.queue_url or "")}
        try:
            workers = rt.fleet.workers()
            queue["depths"] = {p: {"pending": n, "oldest_age_s": age} for p, (n, age) in rt.fleet.depths().items()}
        except QueueUnavailable as error:
            queue["error"] = str(error)
    return jsonify(
        status="ok",
        pid=os.getpid(),
        host=rt.config.host_name,
        model=rt.config.model,
        workers=workers,
        acceleration=acceleration_view(rt.acceleration, rt.workers),
        queue=queue,
        queue_pending=sum(n for n, _ in rt.depths().values()) if "error" not in queue else None,
        events_spooled=rt.events.pending(),
        time=time.time(),
    )


@api.get("/ready")
def ready() -> tuple[Response, int]:
    """200 once every worker's model is loaded, compiled and warmed (queue mode: once Redis answers), else 503 and why.

    Compiling for the warm-up sizes happens here, before ready: a job taken earlier would wait for the compile
    (minutes on a cold cache) or race it for the GPU. Jobs submitted meanwhile are queued and run once ready.
    """
    rt = runtime()
    if rt.fleet is not None:
        try:
            rt.fleet.ping()
        except QueueUnavailable as error:
            return jsonify(ready=False, reason=str(error)), 503
        return jsonify(ready=True), 200
    workers = rt.workers
    if all(worker.ready.is_set() for worker in workers):
        return jsonify(ready=True), 200
    errors = [worker.load_error for worker in workers if worker.load_error]
    waiting = [worker.status for worker in workers if not worker.ready.is_set()]
    return jsonify(ready=False, reason=errors[0] if errors else waiting[0]), 503


@api.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of the generator's metrics."""
    rt = runtime()
    with contextlib.suppress(QueueUnavailable):  # Redis away: the queue's gauges are left out of this scrape
        rt.metrics.queue_pending.set(rt.book.pending())
    rt.metrics.events_spooled.set(rt.events.pending())
    rt.metrics.events_spool_fill.set(rt.events.spool_fill_ratio())
    return Response(generate_latest(rt.metrics.registry), mimetype=CONTENT_TYPE_LATEST)
