"""The job book: state survives a restart (running fails, queued queue again), and its reads cost the page."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from common.sizing import GiB
from generator.admission import admit
from generator.jobs import ALIVE_EVERY_S, Job, JobBook
from generator.validation import JobParams

PARAMS = JobParams(resolution=256, num_frames=8, steps=10, guidance_scale=9.0, fps=8)


def test_a_restart_fails_the_running_job_and_requeues_the_rest(tmp_path: Path) -> None:
    book = JobBook(tmp_path, queue_size=4)
    first = book.submit("a", "one", PARAMS, retry_after_s=1)
    second = book.submit("b", "two", PARAMS, retry_after_s=1)
    assert book.take(timeout_s=1) is first
    book.close()

    reopened = JobBook(tmp_path, queue_size=4)

    assert reopened.get(first.job_id).state == "failed"
    assert "lost in a crash" in reopened.get(first.job_id).error
    assert [job.job_id for job in reopened.recovered] == [first.job_id]
    assert reopened.take(timeout_s=1).job_id == second.job_id


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_job_lost_in_a_crash_ended_when_last_known_alive_not_at_the_restart(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    book = JobBook(tmp_path, queue_size=4, clock=clock)
    job = book.submit("lost", "one", PARAMS, retry_after_s=1)
    clock.now = 1_010.0
    assert book.take(timeout_s=1) is job  # started at 1010
    for clock.now, step in ((1_011.0, 1), (1_013.5, 2), (1_014.0, 3)):
        book.update(job, step=step)  # signs of life; on disk at most every ALIVE_EVERY_S (1013.5, not 1014)
    book.close()  # the process dies here; it comes back an hour later

    clock.now = 4_614.0
    lost = JobBook(tmp_path, queue_size=4, clock=clock).get("lost")

    assert lost.state == "failed"
    assert 1_014.0 - ALIVE_EVERY_S <= lost.finished_at <= 1_014.0  # not 4614: the downtime is not run time
    assert lost.finished_at == 1_013.5
    assert lost.error.startswith("lost in a crash")
    assert lost.notes[-1] == (
        "lost in a crash: last known alive at 1970-01-01T00:16:53.500000Z; "
        "the generator restarted at 1970-01-01T01:16:54.000000Z"
    )


def test_admission_alternates_resolution_and_frames_and_refuses_what_never_fits() -> None:
    big = JobParams(resolution=1024, num_frames=32, steps=50, guidance_scale=9.0, fps=8)

    assert admit(big, None).params == big
    roomy = admit(big, lambda: (80 * GiB, 80 * GiB))
    assert roomy.params == big
    assert roomy.notes == ()
    tight = admit(big, lambda: (14 * GiB, 24 * GiB))
    assert (tight.params.resolution, tight.params.num_frames) == (512, 24)
    assert "degraded 1024p/32 frames to 768p/32 frames" in tight.notes[0]
    assert "degraded 768p/32 frames to 768p/24 frames" in tight.notes[1]
    assert admit(big, lambda: (1 * GiB, 8 * GiB)).params is None


def test_a_job_lost_to_a_crash_is_counted_failed_after_the_restart(tmp_path: Path) -> None:
    from generator.app import Runtime
    from generator.config import GeneratorConfig

    book = JobBook(tmp_path / "state", queue_size=4)
    book.submit("lost", "one", PARAMS, retry_after_s=1)
    book.take(timeout_s=1)  # running when the process died
    book.close()

    # The restarted process (workers not started: no model is loaded).
    runtime = Runtime(GeneratorConfig(outputs=tmp_path / "outputs", state_dir=tmp_path / "state", host_name="h1"))
    try:
        sample = runtime.metrics.registry.get_sample_value
        assert runtime.book.get("lost").state == "failed"
        assert sample("i2v_requests_total", {"status": "failed"}) == 1
        assert sample("i2v_request_duration_seconds_count") == 1
        # Every outcome and rejection reason is exported from the start, at 0 until it happens.
        assert sample("i2v_requests_total", {"status": "succeeded"}) == 0
        assert sample("i2v_requests_rejected_total", {"reason": "queue_full"}) == 0
    finally:
        runtime.events.close()
        runtime.book.close()


def test_a_submission_without_a_seed_gets_one_chosen_and_recorded() -> None:
    from werkzeug.datastructures import MultiDict

    from generator.validation import parse_params

    seeds = {parse_params(MultiDict({"prompt": "x"})).seed for _ in range(5)}
    assert all(isinstance(seed, int) and 0 <= seed < 2**32 for seed in seeds)
    assert len(seeds) > 1  # chosen at random, not a fixed default
    assert parse_params(MultiDict({"seed": "7"})).seed == 7


def finished_jobs(count: int, *, start: float = 1_700_000_000.0, state: str = "succeeded") -> list[Job]:
    """Finished jobs one second apart, oldest first."""
    return [
        Job(
            job_id=f"{i:032x}",
            prompt=f"prompt {i}",
            requested=PARAMS,
            effective=PARAMS,
            state=state,
            created_at=start + i,
            started_at=start + i,
            finished_at=start + i + 0.5,
            stage_durations_s={"denoising_step_mean": 0.5, "export": 0.1},
        )
        for i in range(count)
    ]


class CountedReads:
    """Counts the jobs parsed from the database (each one a row read and decoded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = Job.from_row.__func__

        def counted(cls: type[Job], text: str) -> Job:
            self.count += 1
            return original(cls, text)

        monkeypatch.setattr(Job, "from_row", classmethod(counted))


def test_a_listing_reads_only_its_page_and_a_restart_only_the_active_jobs(tmp_path: Path, monkeypatch) -> None:
    book = JobBook(tmp_path, queue_size=4)
    book.store_finished(finished_jobs(5000))
    queued = book.submit("q" * 32, "still waiting", PARAMS, retry_after_s=1)
    book.close()

    reads = CountedReads(monkeypatch)
    reopened = JobBook(tmp_path, queue_size=4)
    assert reads.count <= 1 + JobBook.HISTORY_JOBS  # the queued job and the ETA's history, not 5,000 jobs
    reads.count = 0
    page = reopened.list(limit=50)
    assert reads.count <= 50
    assert [job.job_id for job in page] == [queued.job_id] + [f"{i:032x}" for i in range(4999, 4950, -1)]
    assert page[0] is reopened.get(queued.job_id)  # an active job is the live object the workers update
    failed = reopened.list(state="failed", limit=10)
    assert failed == []
    assert [j.job_id for j in reopened.list(state="succeeded", limit=3)] == [f"{i:032x}" for i in (4999, 4998, 4997)]
    assert [j.job_id for j in reopened.history()][:2] == [f"{i:032x}" for i in (4999, 4998)]
    assert reopened.get(f"{7:032x}").prompt == "prompt 7"
    assert reopened.get("nope") is None


def test_a_finished_job_leaves_memory_and_feeds_the_history(tmp_path: Path) -> None:
    book = JobBook(tmp_path, queue_size=4)
    job = book.submit("a" * 32, "one", PARAMS, retry_after_s=1)
    assert book.take(timeout_s=1) is job
    assert book.running_jobs() == [job]
    book.update(job, state="succeeded", finished_at=time.time(), stage_durations_s={"denoising_step_mean": 0.2})
    assert book.running_jobs() == []
    assert [j.job_id for j in book.history()] == [job.job_id]
    stored = book.get(job.job_id)
    assert stored is not job
    assert (stored.state, stored.stage_durations_s) == ("succeeded", {"denoising_step_mean": 0.2})


def test_a_database_from_before_the_state_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "jobs.db")
    old.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, created_at REAL, body TEXT)")
    jobs = [*finished_jobs(3), Job(job_id="q" * 32, prompt="queued", requested=PARAMS, effective=PARAMS)]
    old.executemany("INSERT INTO jobs VALUES (?, ?, ?)", [(j.job_id, j.created_at, j.to_row()) for j in jobs])
    old.commit()
    old.close()

    book = JobBook(tmp_path, queue_size=4)
    assert [j.job_id for j in book.list(limit=10)] == ["q" * 32, f"{2:032x}", f"{1:032x}", f"{0:032x}"]
    assert [j.job_id for j in book.list(state="succeeded", limit=10)] == [f"{i:032x}" for i in (2, 1, 0)]
    assert book.take(timeout_s=1).job_id == "q" * 32
    assert book.finished_before(2e9, 10) == [f"{i:032x}" for i in range(3)]
