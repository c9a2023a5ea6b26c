"""Hold every job, keep its state on disk across restarts, and queue the jobs waiting for a worker."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from generator.validation import PRIORITIES, JobParams

ACTIVE_STATES = ("queued", "running")


class QueueFull(Exception):
    """The queue holds as many jobs as it may; `retry_after_s` estimates when a place frees up."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    """One generation request and everything known about it so far."""

    job_id: str
    prompt: str
    requested: JobParams
    effective: JobParams
    state: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    stage_durations_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    suggestion: str | None = None
    video_path: str | None = None
    peak_memory_bytes: int | None = None  # reserved: what the card had to give (generator/peak_memory.py)
    peak_memory_allocated_bytes: int | None = None
    cancel_requested: bool = False
    gpu: str | None = None
    # The class it is served in (high, normal, batch) and, in queue mode, the host whose worker ran it.
    priority: str = "normal"
    host: str | None = None

    def to_row(self) -> str:
        """Serialise for the job database."""
        return json.dumps(asdict(self))

    @classmethod
    def from_row(cls, text: str) -> Job:
        """Read a job back from the job database."""
        data = json.loads(text)
        data["requested"] = JobParams(**data["requested"])
        data["effective"] = JobParams(**data["effective"])
        return cls(**data)


class JobBook:
    """The jobs, persisted in SQLite, and the queued ones in serving order; safe to use from any thread."""

    def __init__(self, state_dir: Path, queue_size: int, priority_max_wait_s: float = 600.0) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_dir / "jobs.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, created_at REAL, body TEXT)")
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._queue_size = queue_size
        self._priority_max_wait_s = priority_max_wait_s
        self.recovered: list[Job] = []
        self._recover()

    def _recover(self) -> None:
        """Reload jobs; a job that was running when the process died failed, queued ones queue again."""
        for (body,) in self._db.execute("SELECT body FROM jobs ORDER BY created_at"):
            job = Job.from_row(body)
            if job.state == "running":
                job.state, job.finished_at = "failed", time.time()
                job.error = "the generator restarted while this job was running"
                job.suggestion = "submit the job again"
                self._persist(job)
                self.recovered.append(job)
            elif job.state == "queued":
                self._queue.append(job.job_id)
            self._jobs[job.job_id] = job

    def _persist(self, job: Job) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (job_id, created_at, body) VALUES (?, ?, ?)",
            (job.job_id, job.created_at, job.to_row()),
        )

    def is_full(self) -> bool:
        """Tell whether a new job would be refused."""
        with self._lock:
            return len(self._queue) >= self._queue_size

    def submit(
        self,
        job_id: str,
        prompt: str,
        params: JobParams,
        retry_after_s: int,
        on_queued: Callable[[Job], None] = lambda job: None,
        priority: str = "normal",
    ) -> Job:
        """Queue a new job (its input must already be on disk), or raise QueueFull.

        `on_queued` runs before any worker can take the job, so its "queued" event precedes "running".
        """
        with self._lock:
            if len(self._queue) >= self._queue_size:
                raise QueueFull(retry_after_s)
            job = Job(job_id=job_id, prompt=prompt, requested=params, effective=params, priority=priority)
            self._jobs[job.job_id] = job
            self._queue.append(job.job_id)
            self._persist(job)
            on_queued(job)
            self._lock.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        """Return the job, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Return the newest jobs first, optionally only those in `state`."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if state is None or job.state == state]
        return sorted(jobs, key=lambda job: job.created_at, reverse=True)[:limit]

    def position(self, job_id: str) -> int | None:
        """Return the 1-based place of a queued job, or None when it is not queued."""
        with self._lock:
            try:
                return self._serving_order().index(job_id) + 1
            except ValueError:
                return None

    def pending(self) -> int:
        """Return how many jobs wait for a worker."""
        with self._lock:
            return len(self._queue)

    def queued_jobs(self) -> builtins.list[Job]:
        """Return the queued jobs in order."""
        with self._lock:
            return [self._jobs[job_id] for job_id in self._serving_order()]

    def _serving_order(self) -> builtins.list[str]:
        """Order the queue by priority, oldest first within one; a job waiting too long counts as high."""
        now = time.time()

        def rank(job_id: str) -> int:
            job = self._jobs[job_id]
            if now - job.created_at >= self._priority_max_wait_s or job.priority not in PRIORITIES:
                return 0
            return PRIORITIES.index(job.priority)

        return sorted(self._queue, key=rank)  # stable: submission order within a rank

    def take(self, timeout_s: float) -> Job | None:
        """Wait up to `timeout_s` for the next queued job, mark it running and return it."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._queue, timeout=timeout_s):
                return None
            job_id = self._serving_order()[0]
            self._queue.remove(job_id)
            job = self._jobs[job_id]
            job.state, job.started_at = "running", time.time()
            self._persist(job)
            return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or flag a running one to stop at its next denoising step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._queue.remove(job_id)
                job.state, job.finished_at = "cancelled", time.time()
                job.error = "cancelled before it started"
                self._persist(job)
            elif job.state == "running":
                job.cancel_requested = True
            return job

    def update(self, job: Job, **changes: Any) -> None:
        """Change a job's fields; state changes are written to disk."""
        with self._lock:
            for name, value in changes.items():
                setattr(job, name, value)
            if "state" in changes or "effective" in changes or "video_path" in changes:
                self._persist(job)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
