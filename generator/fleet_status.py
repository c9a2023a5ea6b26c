"""`GET /api/fleet`: the workers and the queue they serve, in one shape whichever mode the generator runs in.

- Single-host mode: this process' own workers (one per local GPU, or the CPU) and its in-process queue.
- Queue mode: every live worker's announcement in Redis (each worker's housekeeping rewrites it every third of
  its lease, and it expires after one lease, so a dead worker drops out within `GENERATOR_LEASE_S`) and the
  shared queue's depth and oldest job's age per priority. Redis away answers 503 with the reason.

Each worker: name, host, GPU index (`cpu` on a CPU), the card's name and UUID, the model, its state (`loading`,
`idle`, `busy`, `failed`), the job it runs, and its heartbeat's age. The monitor's dashboard reads this through its
`--generator-url` (monitor/web/fleet.py) and adds each GPU's latest sample.

`advice_target` picks the worker whose GPU the page's recommendation and prediction are asked for.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from flask import Blueprint, Response, current_app, jsonify

from common.redact import redact_url
from generator.validation import PRIORITIES

fleet_status = Blueprint("fleet_status", __name__)


class AnnouncingQueue(Protocol):
    """What the view reads from queue mode's `CeleryQueue` (it raises QueueUnavailable when Redis is away)."""

    url: str

    def workers(self) -> list[dict[str, Any]]:
        """Return the live workers' announcements."""
        ...

    def depths(self) -> dict[str, tuple[int, float | None]]:
        """Return per priority the jobs waiting and the oldest one's age."""
        ...


def worker_state(ready: bool, error: str | None, job_id: str | None) -> str:
    """Return a worker's state in one word: busy (runs a job), idle, loading (its model), or failed (to load)."""
    if job_id:
        return "busy"
    if ready:
        return "idle"
    return "failed" if error else "loading"


def local_workers(runtime: Any) -> list[dict[str, Any]]:
    """Return this process' own workers (single-host mode); their heartbeat is this answer, 0 s old."""
    config = runtime.config
    views = []
    for worker in runtime.workers:
        job_id, ready = worker.current_job_id, worker.ready.is_set()
        views.append(
            {
                "name": f"{config.host_name}-gpu{worker.gpu}",
                "host": config.host_name,
                "gpu": worker.gpu,
                "gpu_name": worker.gpu_name,
                "gpu_uuid": worker.gpu_uuid,
                "model": config.model,
                "ready": ready,
                "state": worker_state(ready, worker.load_error, job_id),
                "job_id": job_id,
                "heartbeat_age_s": 0.0,
                "error": worker.load_error,
            }
        )
    return views


def announced_workers(queue: AnnouncingQueue, now: float) -> list[dict[str, Any]]:
    """Return queue mode's live workers from their announcements, by host and GPU."""
    views = []
    for announced in queue.workers():
        job_id, ready, error = announced.get("job_id"), bool(announced.get("ready")), announced.get("error")
        seen_at = announced.get("seen_at")
        views.append(
            {
                "name": announced.get("name"),
                "host": announced.get("host"),
                "gpu": str(announced.get("gpu")),
                "gpu_name": announced.get("gpu_name"),
                "gpu_uuid": announced.get("gpu_uuid"),
                "model": announced.get("model"),
                "ready": ready,
                "state": worker_state(ready, error, job_id),
                "job_id": job_id,
                "heartbeat_age_s": None if seen_at is None else round(max(now - float(seen_at), 0.0), 1),
                "error": error,
            }
        )
    return sorted(views, key=lambda w: (str(w["host"]), str(w["gpu"]), str(w["name"])))


def fleet_view(runtime: Any) -> dict[str, Any]:
    """Return the workers and the queue (per priority, in serving order); QueueUnavailable when Redis is away."""
    now = time.time()
    queue: AnnouncingQueue | None = runtime.fleet
    if queue is None:
        workers, mode, backend = local_workers(runtime), "in-process", "this generator's memory and SQLite book"
        depths = runtime.depths()
    else:
        workers, mode, backend = announced_workers(queue, now), "queue", f"Redis at {redact_url(queue.url)}"
        depths = queue.depths()
    priorities = [
        {"priority": p, "pending": depths.get(p, (0, None))[0], "oldest_age_s": _round(depths.get(p, (0, None))[1])}
        for p in PRIORITIES
    ]
    return {
        "time": now,
        "api_host": runtime.config.host_name,
        # How often a queue-mode worker rewrites its announcement: an older heartbeat means it is struggling.
        "heartbeat_interval_s": None if queue is None else round(runtime.config.lease_s / 3, 2),
        "queue": {
            "mode": mode,
            "backend": backend,
            "pending": sum(p["pending"] for p in priorities),
            "priorities": priorities,
        },
        "workers": workers,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class NoAdviceTarget(Exception):
    """No worker to ask the monitor about: `status` is 400 (the query names none of them) or 503 (none ready)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def advice_target(runtime: Any, host: str | None, gpu: str | None) -> tuple[str, str]:
    """Return the (host, GPU) to ask the monitor about; NoAdviceTarget says why there is none.

    Single-host mode: one of this generator's GPUs (its first unless `gpu` names another). Queue mode: one of the
    fleet's ready workers (`host`/`gpu` pick one), by default the one that offers a job the most memory, since the
    largest job any worker can run is what the fleet can run (a worker hands a job that does not fit back).
    """
    queue: AnnouncingQueue | None = getattr(runtime, "fleet", None)
    if queue is None:
        local_host = runtime.predictor.host_name
        targets = [(local_host, worker.gpu) for worker in runtime.workers]
        where = "this generator's"
    else:
        ready = [w for w in queue.workers() if w.get("ready")]
        ready.sort(key=lambda w: (-(w.get("usable_bytes") or 0), str(w.get("name"))))
        targets = [(str(w.get("host")), str(w.get("gpu"))) for w in ready]
        where = "the fleet's ready workers'"
    if not targets:
        raise NoAdviceTarget(
            503,
            "no worker is ready in the fleet: start `python -m generator worker --queue ...` on a GPU host, "
            "or wait for a starting worker to load its model",
        )
    matching = [(h, g) for h, g in targets if (host is None or h == host) and (gpu is None or g == gpu)]
    if not matching:
        choices = ", ".join(g if queue is None else f"{h}/{g}" for h, g in targets)
        raise NoAdviceTarget(400, f"gpu{'' if queue is None else ' and host'} must name one of {where}: {choices}")
    return matching[0]


@fleet_status.get("/api/fleet")
def fleet() -> Response:
    """Return the workers (host, GPU, state, job, heartbeat) and the queue's depth and oldest age per priority."""
    return jsonify(fleet_view(current_app.extensions["generator"]))
