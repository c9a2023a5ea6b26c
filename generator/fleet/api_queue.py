"""The API's side of queue mode: the same job-book verbs as the in-process JobBook, over Redis and Celery.

`submit` records the job (state `queued`, on Redis with the broker's persistence) and only then publishes its
task, so a worker never receives a job it cannot read; a job the broker refuses is removed and the caller
answers 503. Every Redis or broker failure surfaces as `QueueUnavailable` with a reason, never a hang: the
client's connect and read timeouts and the publish retry policy bound each call to a few seconds.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from common.redact import redact_url
from generator.fleet.broker import make_celery, publish
from generator.fleet.store import RedisJobStore, new_job
from generator.fleet.unavailable import QueueUnavailable
from generator.jobs import Job
from generator.validation import JobParams

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError, OSError)


def redis_client(url: str, timeout_s: float = 3.0) -> redis.Redis:
    """Return a client for `url` whose every call gives up after `timeout_s` rather than hanging."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


class CeleryQueue:
    """Jobs submitted to the shared queue: recorded in Redis, published as Celery tasks."""

    def __init__(
        self,
        url: str,
        max_queued: int,
        *,
        visibility_timeout_s: float,
        client: redis.Redis | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.url = url
        self.max_queued = max_queued
        self.store = RedisJobStore(client or redis_client(url))
        self.celery = celery or make_celery(url, visibility_timeout_s)

    def _unavailable(self, error: BaseException) -> QueueUnavailable:
        return QueueUnavailable(
            f"the job queue (Redis at {redact_url(self.url)}) cannot be reached: {error.__class__.__name__}"
        )

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except REDIS_ERRORS as error:
            raise self._unavailable(error) from error

    def is_full(self) -> bool:
        """Tell whether a new job would be refused."""
        return self.pending() >= self.max_queued

    def submit(
        self,
        job_id: str,
        prompt: str,
        params: JobParams,
        retry_after_s: int,
        on_queued: Callable[[Job], None] = lambda job: None,
        priority: str = "normal",
    ) -> Job:
        """Record and publish a job (its input must already be where workers read it); QueueFull when full."""
        job = new_job(job_id, prompt, params, priority)
        self._call(self.store.create, job, self.max_queued, retry_after_s)
        on_queued(job)
        try:
            publish(self.celery, job_id, priority)
        except REDIS_ERRORS as error:
            # Else left unpublished: the workers' sweep fails it within a minute, with the reason.
            with contextlib.suppress(*REDIS_ERRORS):
                self.store.forget(job_id)
            raise self._unavailable(error) from error
        # Published already: a worker may run it, and only the orphan check (after 60 s) reads the mark.
        with contextlib.suppress(*REDIS_ERRORS):
            self.store.mark_published(job_id)
        return job

    def get(self, job_id: str) -> Job | None:
        """Return the job, or None."""
        return self._call(self.store.get, job_id)

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        """Return the newest jobs first, optionally only those in `state`."""
        return self._call(self.store.list, state, limit)

    def position(self, job_id: str) -> int | None:
        """Return the 1-based place of a queued job in serving order."""
        return self._call(self.store.position, job_id)

    def pending(self) -> int:
        """Return how many jobs wait for a worker."""
        return self._call(self.store.pending)

    def depths(self) -> dict[str, tuple[int, float | None]]:
        """Return per priority how many jobs wait and the oldest one's age in seconds."""
        return self._call(self.store.depths)

    def queued_jobs(self) -> builtins.list[Job]:
        """Return the queued jobs in serving order."""
        return self._call(self.store.queued_jobs)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or ask the worker running it to stop at its next step."""
        return self._call(self.store.cancel, job_id)

    def workers(self) -> builtins.list[dict[str, Any]]:
        """Return the live workers' announcements (host, GPU, model, readiness, current job)."""
        return self._call(self.store.workers)

    def ping(self) -> None:
        """Raise QueueUnavailable unless Redis answers."""
        self._call(self.store.r.ping)

    def close(self) -> None:
        """Release the connections."""
        self.store.r.close()
        self.celery.close()
