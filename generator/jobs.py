"""Hold every job, keep its state on disk across restarts, and queue the jobs waiting for a worker."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.events import FINAL_STATES, iso_from_epoch_s
from generator.validation import PRIORITIES, JobParams

ACTIVE_STATES = ("queued", "running")
# A running job's last sign of life (a stage, a step) is written to disk at most this often: after a crash, the
# job ended when it was last known alive, to this much, rather than when the generator came back.
ALIVE_EVERY_S = 2.0


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
    alive_at: float | None = None  # running: the last time a worker was known to work on it (epoch seconds)
    step: int = 0
    total_steps: int = 0
    stage_durations_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    suggestion: str | None = None
    video_path: str | None = None
    peak_memory_bytes: int | None = None  # reserved: what the card had to give (generator/peak_memory.py)
    peak_memory_allocated_bytes: int | None = None
    # The monitor's predicted run (s) as admission got it: warm, plus the warm-up when the size was new to the
    # worker's process. None without a monitor's answer.
    predicted_run_s: float | None = None
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
    """The jobs, persisted in SQLite, and the queued ones in serving order; safe to use from any thread.

    Only the active jobs (queued, running) live in memory, as the objects the workers update; a finished job is
    read back from the database when asked for. Listing reads the newest rows through an index, so it costs
    the page asked for, not the number of jobs stored; the last succeeded jobs (the ETA's basis) are kept in
    a short list updated as jobs succeed.
    """

    HISTORY_JOBS = 20  # succeeded jobs the time estimates are based on

    def __init__(
        self,
        state_dir: Path,
        queue_size: int,
        priority_max_wait_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock  # wall-clock epoch seconds: the jobs' times
        self._db = sqlite3.connect(state_dir / "jobs.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._migrate()
        self._lock = threading.Condition()
        self._active: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._queue_size = queue_size
        self._priority_max_wait_s = priority_max_wait_s
        self._history: deque[Job] = deque(maxlen=self.HISTORY_JOBS)  # newest first
        self.recovered: list[Job] = []
        self._alive_written: dict[str, float] = {}  # running job → the alive_at on disk
        self._recover()

    def _migrate(self) -> None:
        """Create the table and its indexes; give a database from before them its state and finish columns."""
        db = self._db
        # output_bytes: the bytes outputs/<id>/ takes, measured by retention once the job has finished.
        db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, created_at REAL, body TEXT, state TEXT, "
            "finished_at REAL, output_bytes INTEGER)"
        )
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        if "state" not in columns:
            with self._transaction():
                db.execute("ALTER TABLE jobs ADD COLUMN state TEXT")
                db.execute("ALTER TABLE jobs ADD COLUMN finished_at REAL")
                db.execute("ALTER TABLE jobs ADD COLUMN output_bytes INTEGER")
                db.execute(
                    "UPDATE jobs SET state = json_extract(body, '$.state'), "
                    "finished_at = json_extract(body, '$.finished_at')"
                )
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL")
        db.execute(
            "CREATE INDEX IF NOT EXISTS jobs_unmeasured ON jobs (finished_at) "
            "WHERE finished_at IS NOT NULL AND output_bytes IS NULL"
        )

    def _recover(self) -> None:
        """Reload the active jobs; a job that was running when the process died failed, queued ones queue again.

        A job lost in a crash ended when it was last known alive (its last stage or step on disk), not at this
        restart: its run time must not include the downtime. The restart's time goes in its notes.
        """
        restarted_at = self._clock()
        rows = self._db.execute(
            "SELECT body FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at"
        ).fetchall()
        for (body,) in rows:
            job = Job.from_row(body)
            if job.state == "running":
                known = [t for t in (job.alive_at, job.started_at, job.created_at) if t is not None]
                job.state, job.finished_at = "failed", min(max(known), restarted_at)
                job.error = "lost in a crash: the generator stopped while this job was running"
                job.suggestion = "submit the job again"
                job.notes = [
                    *job.notes,
                    f"lost in a crash: last known alive at {iso_from_epoch_s(job.finished_at)}; "
                    f"the generator restarted at {iso_from_epoch_s(restarted_at)}",
                ]
                self._persist(job)
                self.recovered.append(job)
            else:
                self._queue.append(job.job_id)
                self._active[job.job_id] = job
        rows = self._db.execute(
            "SELECT body FROM jobs WHERE state = 'succeeded' ORDER BY created_at DESC LIMIT ?", (self.HISTORY_JOBS,)
        ).fetchall()
        self._history.extend(Job.from_row(body) for (body,) in rows)

    def _persist(self, job: Job) -> None:
        if job.state == "running" and job.alive_at is not None:
            self._alive_written[job.job_id] = job.alive_at
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (job_id, created_at, state, finished_at, body) VALUES (?, ?, ?, ?, ?)",
            (job.job_id, job.created_at, job.state, job.finished_at, job.to_row()),
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
            job = Job(
                job_id=job_id,
                prompt=prompt,
                requested=params,
                effective=params,
                priority=priority,
                created_at=self._clock(),
            )
            self._active[job.job_id] = job
            self._queue.append(job.job_id)
            self._persist(job)
            on_queued(job)
            self._lock.notify_all()
            return job

    def store_finished(self, jobs: Iterable[Job]) -> None:
        """Store finished jobs as they are, in one transaction (restoring a backup, filling a benchmark)."""
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO jobs (job_id, created_at, state, finished_at, body) VALUES (?, ?, ?, ?, ?)",
                ((j.job_id, j.created_at, j.state, j.finished_at, j.to_row()) for j in jobs if j.state in FINAL_STATES),
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Run many statements as one commit (one fsync, not one per row); roll back on an error."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, job_id: str) -> Job | None:
        """Return the job, or None (a finished job is a copy read from disk)."""
        with self._lock:
            job = self._active.get(job_id)
            if job is not None:
                return job
            row = self._db.execute("SELECT body FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return Job.from_row(row[0]) if row else None

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        """Return the newest jobs first, optionally only those in `state`; reads at most `limit` rows."""
        if state in ACTIVE_STATES:
            with self._lock:
                jobs = [job for job in self._active.values() if job.state == state]
            return sorted(jobs, key=lambda job: job.created_at, reverse=True)[:limit]  # at most the queue's size
        with self._lock:
            if state is None:
                rows = self._db.execute(
                    "SELECT job_id, body FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT job_id, body FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit)
                ).fetchall()
            live = {job_id: self._active[job_id] for job_id, _ in rows if job_id in self._active}
        # An active job's row lags its progress: the object the worker updates is the truth.
        return [live[job_id] if job_id in live else Job.from_row(body) for job_id, body in rows]

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
            return [self._active[job_id] for job_id in self._serving_order()]

    def _serving_order(self) -> builtins.list[str]:
        """Order the queue by priority, oldest first within one; a job waiting too long counts as high."""
        now = self._clock()

        def rank(job_id: str) -> int:
            job = self._active[job_id]
            if now - job.created_at >= self._priority_max_wait_s or job.priority not in PRIORITIES:
                return 0
            return PRIORITIES.index(job.priority)

        return sorted(self._queue, key=rank)  # stable: submission order within a rank

    def running_jobs(self) -> builtins.list[Job]:
        """Return the jobs being generated now."""
        with self._lock:
            return [job for job in self._active.values() if job.state == "running"]

    def history(self) -> builtins.list[Job]:
        """Return the last succeeded jobs, newest first: what time estimates are based on."""
        with self._lock:
            return list(self._history)

    def take(self, timeout_s: float) -> Job | None:
        """Wait up to `timeout_s` for the next queued job, mark it running and return it."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._queue, timeout=timeout_s):
                return None
            job_id = self._serving_order()[0]
            self._queue.remove(job_id)
            job = self._active[job_id]
            job.state, job.started_at = "running", self._clock()
            job.alive_at = job.started_at
            self._persist(job)
            return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or flag a running one to stop at its next denoising step."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                return self.get(job_id)
            if job.state == "queued":
                self._queue.remove(job_id)
                job.state, job.finished_at = "cancelled", self._clock()
                job.error = "cancelled before it started"
                self._persist(job)
                del self._active[job_id]
            elif job.state == "running":
                job.cancel_requested = True
            return job

    def update(self, job: Job, **changes: Any) -> None:
        """Change a job's fields; state changes are written to disk, and a finished job leaves memory.

        Any change to a running job is a sign of life: `alive_at` moves, and reaches the disk every ALIVE_EVERY_S.
        """
        with self._lock:
            for name, value in changes.items():
                setattr(job, name, value)
            alive_due = False
            if job.state == "running":
                job.alive_at = self._clock()
                alive_due = job.alive_at - self._alive_written.get(job.job_id, 0.0) >= ALIVE_EVERY_S
            if "state" in changes or "effective" in changes or "video_path" in changes or alive_due:
                self._persist(job)
            if job.state in FINAL_STATES and self._active.get(job.job_id) is job:
                del self._active[job.job_id]
                self._alive_written.pop(job.job_id, None)
                if job.state == "succeeded":
                    self._history.appendleft(job)

    # ---- retention: what the sweeper reads and removes --------------------------------------------------

    def finished_before(self, finished_at: float, limit: int) -> builtins.list[str]:
        """Return up to `limit` ids of jobs that finished before `finished_at`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
                (finished_at, limit),
            ).fetchall()
        return [job_id for (job_id,) in rows]

    def oldest_finished(self, limit: int) -> builtins.list[tuple[str, int]]:
        """Return up to `limit` finished jobs, oldest first, with the bytes their outputs take (0 if unmeasured)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, COALESCE(output_bytes, 0) FROM jobs WHERE finished_at IS NOT NULL "
                "AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
                (limit,),
            ).fetchall()
        return [(job_id, int(size)) for job_id, size in rows]

    def unmeasured(self, limit: int) -> builtins.list[str]:
        """Return up to `limit` finished jobs whose outputs' size is not recorded yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND output_bytes IS NULL "
                "AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
                (limit,),
            ).fetchall()
        return [job_id for (job_id,) in rows]

    def set_output_bytes(self, sizes: Iterable[tuple[str, int]]) -> None:
        """Record the bytes each finished job's outputs take."""
        with self._lock, self._transaction():
            self._db.executemany("UPDATE jobs SET output_bytes = ? WHERE job_id = ?", [(n, j) for j, n in sizes])

    def output_bytes(self) -> int:
        """Return the bytes the finished jobs' outputs take, as measured."""
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(output_bytes), 0) FROM jobs").fetchone()
        return int(total)

    def forget(self, job_ids: Iterable[str]) -> int:
        """Delete finished jobs' rows (never an active job's); return how many went."""
        with self._lock:
            ids = {job_id for job_id in job_ids if job_id not in self._active}
            before = self._db.total_changes
            with self._transaction():
                self._db.executemany(
                    "DELETE FROM jobs WHERE job_id = ? AND state IN ('succeeded', 'failed', 'cancelled')",
                    [(job_id,) for job_id in ids],
                )
            gone = self._db.total_changes - before
            self._history = deque((j for j in self._history if j.job_id not in ids), maxlen=self.HISTORY_JOBS)
        return gone

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
