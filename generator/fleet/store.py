"""Queue mode's job book, in Redis: every job's record, its changes of state, and the queue's indexes.

The contract the rest of queue mode relies on:
- A job is the hash `i2v:job:<id>`: `body` (the Job as JSON) and the fields that change hands between
  processes: `state` (authoritative), `serve_as` (the priority list it waits in), `attempt`, `token` (the
  worker and attempt running it), `cancel`, `lost` (workers that died running it), `published`, `suspect_since`.
- Every change of state is one WATCH/MULTI transaction that checks the state it leaves: an API cancelling a
  queued job and a worker claiming it cannot both win, and of two deliveries of one job only one runs it.
- While a job runs, only the current attempt's token writes its body or ends it (checked in the same round
  trip), so a worker given up for dead can neither report progress nor finish: a job succeeds at most once.
- A running job holds the lease `i2v:lease:<id>`, renewed by its worker; `sweep_running` hands a job whose
  lease has been gone for a whole grace period back to the queue, or fails it with the reason once its
  workers have died MAX_LOST times.
- Sorted sets index the jobs: `i2v:jobs` by creation, `i2v:queued:<priority>`, `i2v:running` and
  `i2v:succeeded` (by end): listing, queue positions, per-priority depth and age, the ETA's history.
Finished jobs expire after `retention_s`; `trim` drops their index entries.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from common.events import FINAL_STATES
from generator.jobs import Job, QueueFull
from generator.validation import PRIORITIES, JobParams

PREFIX = "i2v"
# A job whose worker dies this many times is failed rather than run again (it may be what kills them).
MAX_LOST = 2
LIST_PAGE = 200
LIST_SCAN_MAX = 10_000

# One round trip per denoising step: write the body only while the caller's attempt owns the job, and tell
# it whether a cancel was asked for (-1: the job is no longer this attempt's).
_WRITE_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'body', ARGV[2])
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 1 end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a delivered job: `run` it (with `token`), or skip it and say why."""

    # run | busy (another attempt holds it) | done (had ended) | ended (now, out of attempts) | missing
    verdict: str
    job: Job | None = None
    token: str | None = None
    attempt: int = 0


@dataclass(frozen=True)
class Swept:
    """A running job whose worker stopped answering: `requeued` (publish it again) or ended (`failed`...)."""

    job: Job
    action: str
    serve_as: str = "normal"  # the priority list to publish a requeued job to


def job_from_fields(fields: dict[str, str]) -> Job:
    """Rebuild a job from its hash: the body, with the authoritative state and the cancel flag over it."""
    job = Job.from_row(fields["body"])
    job.state = fields.get("state", job.state)
    job.cancel_requested = fields.get("cancel") == "1"
    return job


class RedisJobStore:
    """Jobs in Redis, shared by the API and every worker; see the module's contract."""

    def __init__(
        self, client: redis.Redis, *, retention_s: float = 7 * 86400, clock: Callable[[], float] = time.time
    ) -> None:
        # Any: redis-py types its answers as bytes-or-str unions; with decode_responses they are str.
        self.r: Any = client
        self.retention_s = retention_s
        self.clock = clock
        self._write_if_owner = client.register_script(_WRITE_IF_OWNER)

    @staticmethod
    def key(job_id: str) -> str:
        """Return a job's hash key."""
        return f"{PREFIX}:job:{job_id}"

    @staticmethod
    def queued_key(priority: str) -> str:
        """Return the index of the jobs waiting at one priority."""
        return f"{PREFIX}:queued:{priority}"

    @staticmethod
    def lease_key(job_id: str) -> str:
        """Return the key a running job's worker keeps alive."""
        return f"{PREFIX}:lease:{job_id}"

    # ---- the API's side -------------------------------------------------------------------------------

    def create(self, job: Job, max_queued: int, retry_after_s: int) -> None:
        """Record a new queued job, or raise QueueFull when `max_queued` jobs wait already."""
        watched = [self.queued_key(p) for p in PRIORITIES]

        def create_in(pipe: Any) -> None:
            if sum(pipe.zcard(k) for k in watched) >= max_queued:
                raise QueueFull(retry_after_s)
            pipe.multi()
            pipe.hset(
                self.key(job.job_id),
                mapping={"body": job.to_row(), "state": "queued", "serve_as": job.priority, "attempt": 0,
                         "token": "", "cancel": 0, "published": 0},
            )  # fmt: skip
            pipe.zadd(f"{PREFIX}:jobs", {job.job_id: job.created_at})
            pipe.zadd(self.queued_key(job.priority), {job.job_id: job.created_at})

        self.r.transaction(create_in, *watched)

    def mark_published(self, job_id: str) -> None:
        """Note that the broker holds a message for the job (an unpublished one is failed by `sweep_running`)."""
        self.r.hset(self.key(job_id), "published", 1)

    def forget(self, job_id: str) -> None:
        """Remove a job the broker refused, so it neither runs nor counts."""
        pipe = self.r.pipeline()
        pipe.delete(self.key(job_id))
        pipe.zrem(f"{PREFIX}:jobs", job_id)
        for p in PRIORITIES:
            pipe.zrem(self.queued_key(p), job_id)
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        """Return the job, or None."""
        fields = self.r.hgetall(self.key(job_id))
        return job_from_fields(fields) if fields else None

    def _many(self, job_ids: builtins.list[str]) -> builtins.list[Job]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
        return [job_from_fields(fields) for fields in pipe.execute() if fields]

    def queued_jobs(self) -> builtins.list[Job]:
        """Return the waiting jobs in the order they will be served: by priority, then oldest first."""
        ids: builtins.list[str] = []
        for p in PRIORITIES:
            ids += self.r.zrange(self.queued_key(p), 0, -1)
        return self._many(ids)

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        """Return the newest jobs first, optionally only those in `state` (scanning at most 10,000)."""
        if state == "queued":
            return sorted(self.queued_jobs(), key=lambda job: job.created_at, reverse=True)[:limit]
        if state in ("running", "succeeded"):
            return self._many(self.r.zrevrange(f"{PREFIX}:{state}", 0, limit - 1))
        jobs: builtins.list[Job] = []
        for start in range(0, LIST_SCAN_MAX, LIST_PAGE):
            ids = self.r.zrevrange(f"{PREFIX}:jobs", start, start + LIST_PAGE - 1)
            jobs += [job for job in self._many(ids) if state is None or job.state == state]
            if len(jobs) >= limit or len(ids) < LIST_PAGE:
                break
        return jobs[:limit]

    def position(self, job_id: str) -> int | None:
        """Return the 1-based place of a queued job in serving order, or None when it is not queued."""
        state, serve_as = self.r.hmget(self.key(job_id), "state", "serve_as")
        if state != "queued" or serve_as not in PRIORITIES:
            return None
        pipe = self.r.pipeline(transaction=False)
        for p in PRIORITIES[: PRIORITIES.index(serve_as)]:
            pipe.zcard(self.queued_key(p))
        pipe.zrank(self.queued_key(serve_as), job_id)
        *ahead, rank = pipe.execute()
        return None if rank is None else sum(ahead) + rank + 1

    def pending(self) -> int:
        """Return how many jobs wait, all priorities together."""
        return sum(count for count, _ in self.depths().values())

    def depths(self) -> dict[str, tuple[int, float | None]]:
        """Return, per priority, how many jobs wait and the oldest one's age in seconds (None when empty)."""
        pipe = self.r.pipeline(transaction=False)
        for p in PRIORITIES:
            pipe.zcard(self.queued_key(p))
            pipe.zrange(self.queued_key(p), 0, 0, withscores=True)
        answers = pipe.execute()
        now = self.clock()
        out: dict[str, tuple[int, float | None]] = {}
        for i, p in enumerate(PRIORITIES):
            count, oldest = answers[2 * i], answers[2 * i + 1]
            out[p] = (count, max(now - oldest[0][1], 0.0) if oldest else None)
        return out

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or flag a running one to stop at its next denoising step."""
        key = self.key(job_id)

        def cancel_in(pipe: Any) -> Job | None:
            fields = pipe.hgetall(key)
            if not fields:
                return None
            job = job_from_fields(fields)
            if job.state == "queued":
                job.state, job.finished_at, job.error = "cancelled", self.clock(), "cancelled before it started"
                pipe.multi()
                self._end(pipe, job, fields)
            elif job.state == "running":
                job.cancel_requested = True
                pipe.multi()
                pipe.hset(key, "cancel", 1)
            return job

        return self.r.transaction(cancel_in, key, value_from_callable=True)

    # ---- a worker's side ------------------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_s: float) -> Claim:
        """Take a delivered job for `owner` if nobody runs it and it has not ended (idempotent on the job id)."""
        key, lease = self.key(job_id), self.lease_key(job_id)

        def claim_in(pipe: Any) -> Claim:
            fields = pipe.hgetall(key)
            if not fields:
                return Claim("missing")
            job = job_from_fields(fields)
            if job.state in FINAL_STATES:
                return Claim("done", job)
            if job.state == "running" and pipe.exists(lease):
                return Claim("busy", job)
            attempt, lost = int(fields.get("attempt", 0)) + 1, int(fields.get("lost", 0))
            if job.state == "running":  # its worker died and no sweep has handed it back yet
                lost += 1
                job.notes.append(f"attempt {attempt - 1} stopped with its worker ({fields.get('token')}): run again")
                if lost >= MAX_LOST:
                    self._fail_exhausted(pipe, job, fields, lost)
                    return Claim("ended", job)
            token = f"{owner}#{attempt}"
            job.state, job.started_at, job.step = "running", self.clock(), 0
            pipe.multi()
            pipe.hset(
                key,
                mapping={"state": "running", "attempt": attempt, "lost": lost, "token": token, "body": job.to_row()},
            )
            pipe.hdel(key, "suspect_since")
            for p in PRIORITIES:
                pipe.zrem(self.queued_key(p), job_id)
            pipe.zadd(f"{PREFIX}:running", {job_id: job.started_at})
            pipe.set(lease, token, px=int(lease_s * 1000))
            return Claim("run", job, token, attempt)

        return self.r.transaction(claim_in, key, lease, value_from_callable=True)

    def write(self, job: Job, token: str) -> int:
        """Write a running job's body if `token` still owns it: 1 when a cancel was asked, 0 if not, -1 lost."""
        return int(self._write_if_owner(keys=[self.key(job.job_id)], args=[token, job.to_row()]))

    def renew(self, job_id: str, token: str, lease_s: float) -> None:
        """Keep a running job's lease alive for another `lease_s`."""
        pipe = self.r.pipeline()
        pipe.set(self.lease_key(job_id), token, px=int(lease_s * 1000))
        pipe.hdel(self.key(job_id), "suspect_since")
        pipe.execute()

    def finish(self, job: Job, token: str) -> bool:
        """End a running job in its final state if `token` still owns it; False when another attempt does."""
        key = self.key(job.job_id)

        def finish_in(pipe: Any) -> bool:
            fields = pipe.hgetall(key)
            if not fields or not _holds(fields, token) or fields.get("state") != "running":
                return False
            pipe.multi()
            self._end(pipe, job, fields)
            return True

        return self.r.transaction(finish_in, key, value_from_callable=True)

    def requeue(self, job: Job, token: str) -> str | None:
        """Put a job this attempt owns back in the queue (its notes and parameters as they are now).

        Return the priority it waits at (publish its task there), or None when the attempt no longer owns it.
        """
        key = self.key(job.job_id)

        def requeue_in(pipe: Any) -> str | None:
            fields = pipe.hgetall(key)
            if not fields or not _holds(fields, token):
                return None
            serve_as: str = fields.get("serve_as") or job.priority
            pipe.multi()
            self._back_to_queue(pipe, job, serve_as)
            return serve_as

        return self.r.transaction(requeue_in, key, value_from_callable=True)

    def _back_to_queue(self, pipe: Any, job: Job, serve_as: str) -> None:
        job.state, job.step, job.started_at, job.cancel_requested = "queued", 0, None, False
        key = self.key(job.job_id)
        pipe.hset(key, mapping={"state": "queued", "token": "", "serve_as": serve_as, "body": job.to_row()})
        pipe.hdel(key, "suspect_since")
        pipe.zrem(f"{PREFIX}:running", job.job_id)
        pipe.zadd(self.queued_key(serve_as), {job.job_id: job.created_at})
        pipe.delete(self.lease_key(job.job_id))

    def _end(self, pipe: Any, job: Job, fields: dict[str, str]) -> None:
        key = self.key(job.job_id)
        pipe.hset(key, mapping={"state": job.state, "token": "", "body": job.to_row()})
        pipe.zrem(f"{PREFIX}:running", job.job_id)
        for p in PRIORITIES:
            pipe.zrem(self.queued_key(p), job.job_id)
        if job.state == "succeeded":
            pipe.zadd(f"{PREFIX}:succeeded", {job.job_id: job.finished_at or self.clock()})
        pipe.delete(self.lease_key(job.job_id))
        pipe.expire(key, int(self.retention_s))

    def _fail_exhausted(self, pipe: Any, job: Job, fields: dict[str, str], lost: int) -> None:
        job.state, job.finished_at = "failed", self.clock()
        job.error = f"the workers running this job stopped answering {lost} times: it is not run again"
        job.suggestion = "submit the job again; check the workers' logs for what stopped them"
        pipe.multi()
        self._end(pipe, job, fields)

    # ---- housekeeping, run by every worker (each step is a transaction, so two sweepers agree) -------

    def sweep_running(self, grace_s: float) -> builtins.list[Swept]:
        """Hand back (or end) running jobs whose lease has been gone for `grace_s`; fail unpublished ones."""
        swept: builtins.list[Swept] = []
        for job_id in self.r.zrange(f"{PREFIX}:running", 0, -1):
            if not self.r.exists(self.lease_key(job_id)):
                result = self._sweep_one(job_id, grace_s)
                if result is not None:
                    swept.append(result)
        for p in PRIORITIES:
            for job_id in self.r.zrangebyscore(self.queued_key(p), "-inf", self.clock() - 60):
                if self.r.hget(self.key(job_id), "published") == "0":
                    result = self._fail_unpublished(job_id)
                    if result is not None:
                        swept.append(result)
        return swept

    def _sweep_one(self, job_id: str, grace_s: float) -> Swept | None:
        key, lease = self.key(job_id), self.lease_key(job_id)

        def sweep_in(pipe: Any) -> Swept | None:
            fields = pipe.hgetall(key)
            if not fields or fields.get("state") != "running" or pipe.exists(lease):
                return None
            now = self.clock()
            suspect = fields.get("suspect_since")
            if suspect is None:  # first sight: its worker may only have been cut off from Redis for a moment
                pipe.multi()
                pipe.hset(key, "suspect_since", now)
                return None
            if now - float(suspect) < grace_s:
                return None
            job = job_from_fields(fields)
            attempt, lost = int(fields.get("attempt", 1)), int(fields.get("lost", 0)) + 1
            if job.cancel_requested:
                job.state, job.finished_at, job.error = "cancelled", now, "cancelled while its worker stopped"
                pipe.multi()
                self._end(pipe, job, fields)
                return Swept(job, "cancelled")
            if lost >= MAX_LOST:
                self._fail_exhausted(pipe, job, fields, lost)
                return Swept(job, "failed")
            job.notes.append(
                f"attempt {attempt} stopped with its worker ({fields.get('token')}: its lease lapsed over "
                f"{now - float(suspect):.0f} s ago): queued again"
            )
            serve_as = fields.get("serve_as") or job.priority
            pipe.multi()
            pipe.hset(key, "lost", lost)
            self._back_to_queue(pipe, job, serve_as)
            return Swept(job, "requeued", serve_as)

        return self.r.transaction(sweep_in, key, lease, value_from_callable=True)

    def _fail_unpublished(self, job_id: str) -> Swept | None:
        key = self.key(job_id)

        def fail_in(pipe: Any) -> Swept | None:
            fields = pipe.hgetall(key)
            if not fields or fields.get("state") != "queued" or fields.get("published") != "0":
                return None
            job = job_from_fields(fields)
            job.state, job.finished_at = "failed", self.clock()
            job.error = "the broker did not take this job when it was submitted (the submission was refused)"
            pipe.multi()
            self._end(pipe, job, fields)
            return Swept(job, "failed")

        return self.r.transaction(fail_in, key, value_from_callable=True)

    def promote(self, max_wait_s: float) -> builtins.list[Job]:
        """Serve jobs that waited `max_wait_s` below high priority as high from now: the lowest never starves."""
        promoted = []
        for p in PRIORITIES[1:]:
            for job_id in self.r.zrangebyscore(self.queued_key(p), "-inf", self.clock() - max_wait_s):
                job = self._promote_one(job_id, p)
                if job is not None:
                    promoted.append(job)
        return promoted

    def _promote_one(self, job_id: str, priority: str) -> Job | None:
        key = self.key(job_id)

        def promote_in(pipe: Any) -> Job | None:
            fields = pipe.hgetall(key)
            if not fields or fields.get("state") != "queued" or fields.get("serve_as") != priority:
                return None
            job = job_from_fields(fields)
            waited = self.clock() - job.created_at
            job.notes.append(f"waited {waited:.0f} s as {priority}: served as {PRIORITIES[0]} from then on")
            pipe.multi()
            pipe.hset(key, mapping={"serve_as": PRIORITIES[0], "body": job.to_row()})
            pipe.zrem(self.queued_key(priority), job_id)
            pipe.zadd(self.queued_key(PRIORITIES[0]), {job_id: job.created_at})
            return job

        return self.r.transaction(promote_in, key, value_from_callable=True)

    def trim(self) -> None:
        """Drop index entries of jobs past retention (their hashes have expired)."""
        cutoff = self.clock() - self.retention_s
        for index in ("jobs", "succeeded"):
            self.r.zremrangebyscore(f"{PREFIX}:{index}", "-inf", cutoff)

    # ---- the workers' registry ------------------------------------------------------------------------

    def register_worker(self, name: str, info: dict[str, Any], ttl_s: float) -> None:
        """Announce a live worker (host, GPU, model, readiness) for `ttl_s`."""
        pipe = self.r.pipeline()
        pipe.set(f"{PREFIX}:worker:{name}", json.dumps(info), px=int(ttl_s * 1000))
        pipe.zadd(f"{PREFIX}:workers", {name: self.clock()})
        pipe.execute()

    def unregister_worker(self, name: str) -> None:
        """Say a worker has stopped."""
        pipe = self.r.pipeline()
        pipe.delete(f"{PREFIX}:worker:{name}")
        pipe.zrem(f"{PREFIX}:workers", name)
        pipe.execute()

    def workers(self) -> builtins.list[dict[str, Any]]:
        """Return the live workers' announcements, by name."""
        names = self.r.zrange(f"{PREFIX}:workers", 0, -1)
        if not names:
            return []
        infos = self.r.mget([f"{PREFIX}:worker:{name}" for name in names])
        gone = [name for name, info in zip(names, infos, strict=True) if info is None]
        if gone:
            self.r.zrem(f"{PREFIX}:workers", *gone)
        return [{"name": name, **json.loads(info)} for name, info in zip(names, infos, strict=True) if info]


def new_job(job_id: str, prompt: str, params: JobParams, priority: str) -> Job:
    """Return a fresh queued job."""
    return Job(job_id=job_id, prompt=prompt, requested=params, effective=params, priority=priority)


def _holds(fields: dict[str, Any], attempt: str) -> bool:
    """Return whether the job's stored attempt id is `attempt` (an ownership mark, not a secret)."""
    return str(fields.get("token") or "") == attempt
