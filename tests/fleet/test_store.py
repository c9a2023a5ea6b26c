"""The Redis job store's contract on a real redis-server: one claim per job, owner-only writes, leases, aging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from generator.fleet.store import MAX_LOST, RedisJobStore, new_job
from generator.jobs import QueueFull
from generator.validation import JobParams
from tests.servers import RedisServer

PARAMS = JobParams(resolution=256, num_frames=8, steps=10, guidance_scale=1.0, fps=8)


class Clock:
    """A settable clock, so leases, grace periods and waits are stepped, not slept."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    yield server.start()
    server.stop()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[tuple[RedisJobStore, Clock]]:
    """A store on an emptied database, with a settable clock."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    clock = Clock()
    yield RedisJobStore(client, clock=clock), clock
    client.close()


def queue(store: RedisJobStore, clock: Clock, priority: str = "normal") -> str:
    """Record one queued job created now; return its id."""
    job = new_job(uuid.uuid4().hex, "a fox", PARAMS, priority)
    job.created_at = clock.now
    store.create(job, max_queued=100, retry_after_s=1)
    store.mark_published(job.job_id)
    clock.now += 1
    return job.job_id


def test_a_job_is_claimed_once_and_a_redelivery_after_its_end_is_skipped(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    job_id = queue(jobs, clock)
    first = jobs.claim(job_id, "worker-a", lease_s=30)
    assert first.verdict == "run"
    assert jobs.claim(job_id, "worker-b", lease_s=30).verdict == "busy"  # a duplicate while it runs
    assert first.job is not None
    assert first.token is not None
    first.job.state = "succeeded"
    assert jobs.finish(first.job, first.token)
    assert jobs.claim(job_id, "worker-b", lease_s=30).verdict == "done"  # a redelivery after it ended
    assert jobs.get(job_id).state == "succeeded"


def test_only_the_owning_attempt_writes_or_finishes(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    job_id = queue(jobs, clock)
    claim = jobs.claim(job_id, "worker-a", lease_s=30)
    assert claim.job is not None
    assert jobs.write(claim.job, claim.token or "") == 0
    assert jobs.cancel(job_id).cancel_requested
    assert jobs.write(claim.job, claim.token or "") == 1  # the cancel reaches the worker on its next write
    assert jobs.write(claim.job, "worker-b#1") == -1
    claim.job.state = "succeeded"
    assert not jobs.finish(claim.job, "worker-b#1")


def test_a_dead_workers_job_is_queued_again_after_the_grace_then_failed(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    job_id = queue(jobs, clock)
    for lost in range(1, MAX_LOST + 1):
        claim = jobs.claim(job_id, f"worker-{lost}", lease_s=30)
        assert claim.verdict == "run"
        jobs.r.delete(jobs.lease_key(job_id))  # the worker died: nobody renews its lease
        assert jobs.sweep_running(grace_s=5) == []  # first sight: maybe only a moment's outage
        clock.now += 2
        assert jobs.sweep_running(grace_s=5) == []
        clock.now += 5
        (swept,) = jobs.sweep_running(grace_s=5)
        if lost < MAX_LOST:
            assert swept.action == "requeued"
            assert jobs.get(job_id).state == "queued"
            assert "stopped with its worker" in swept.job.notes[-1]
    assert swept.action == "failed"
    assert "stopped answering" in (jobs.get(job_id).error or "")


def test_a_renewed_lease_clears_the_suspicion(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    job_id = queue(jobs, clock)
    claim = jobs.claim(job_id, "worker-a", lease_s=30)
    jobs.r.delete(jobs.lease_key(job_id))
    assert jobs.sweep_running(grace_s=5) == []
    jobs.renew(job_id, claim.token or "", lease_s=30)  # Redis was away a moment; the worker is back
    clock.now += 10
    assert jobs.sweep_running(grace_s=5) == []
    assert jobs.get(job_id).state == "running"


def test_queued_cancel_and_claim_cannot_both_win(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    job_id = queue(jobs, clock)
    assert jobs.cancel(job_id).state == "cancelled"
    assert jobs.claim(job_id, "worker-a", lease_s=30).verdict == "done"
    assert jobs.pending() == 0


def test_serving_order_positions_and_depths_follow_priority(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    batch, normal, high = (queue(jobs, clock, p) for p in ("batch", "normal", "high"))
    assert [job.job_id for job in jobs.queued_jobs()] == [high, normal, batch]
    assert [jobs.position(j) for j in (high, normal, batch)] == [1, 2, 3]
    depths = jobs.depths()
    assert {p: n for p, (n, _) in depths.items()} == {"high": 1, "normal": 1, "batch": 1}
    assert depths["batch"][1] == pytest.approx(3.0)  # created 3 s before the clock's now


def test_a_long_wait_is_served_as_high_so_the_lowest_never_starves(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    batch = queue(jobs, clock, "batch")
    clock.now += 100
    fresh_high = queue(jobs, clock, "high")
    (promoted,) = jobs.promote(max_wait_s=60)
    assert promoted.job_id == batch
    assert "served as high" in promoted.notes[-1]
    assert promoted.priority == "batch"  # what was asked stays on record
    assert [job.job_id for job in jobs.queued_jobs()] == [batch, fresh_high]  # older first within high
    assert jobs.promote(max_wait_s=60) == []


def test_a_full_queue_is_refused(store: tuple[RedisJobStore, Clock]) -> None:
    jobs, clock = store
    queue(jobs, clock)
    with pytest.raises(QueueFull):
        jobs.create(new_job("x", "a fox", PARAMS, "batch"), max_queued=1, retry_after_s=7)
