"""Retention removes the oldest finished jobs, row and folder, past the age or size limit; never an active job."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.config import GeneratorConfig
from generator.jobs import JobBook
from generator.retention import Retention, folder_bytes
from tests.generator.test_jobs import PARAMS, finished_jobs

DAY_S = 86400.0
START = 1_700_000_000.0


def give_outputs(outputs: Path, job_id: str, size_bytes: int) -> Path:
    """Write a job's folder as the generator does: an input image and a clip, `size_bytes` in all."""
    folder = outputs / job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.png").write_bytes(b"i" * (size_bytes // 4))
    (folder / "video.mp4").write_bytes(b"v" * (size_bytes - size_bytes // 4))
    return folder


@pytest.fixture
def book(tmp_path: Path) -> JobBook:
    book = JobBook(tmp_path / "state", queue_size=8)
    yield book
    book.close()


def test_jobs_finished_before_the_age_limit_go_with_their_folders_and_active_ones_stay(
    tmp_path: Path, book: JobBook
) -> None:
    outputs = tmp_path / "outputs"
    now = START + 40 * DAY_S  # with a 30-day limit: jobs 0-3 finished 40 days ago go, 4 and 5 (a day ago) stay
    jobs = finished_jobs(6, start=START)
    for job in jobs[4:]:
        job.finished_at = now - DAY_S
    book.store_finished(jobs)
    running = book.submit("r" * 32, "running", PARAMS, retry_after_s=1)
    queued = book.submit("q" * 32, "waiting", PARAMS, retry_after_s=1)
    assert book.take(timeout_s=1) is running
    for job in [*jobs, running, queued]:
        give_outputs(outputs, job.job_id, 1000)

    retention = Retention(book, outputs, max_age_s=30 * DAY_S, max_bytes=None, clock=lambda: now)
    result = retention.sweep()

    assert result.removed_for_age == 4
    for job in jobs[:4]:
        assert book.get(job.job_id) is None
        assert not (outputs / job.job_id).exists()
    for job in [*jobs[4:], queued, running]:
        assert book.get(job.job_id) is not None
        assert (outputs / job.job_id / "video.mp4").is_file()
    assert result.outputs_bytes == 2000  # the two finished jobs kept; active ones are not counted
    assert retention.removed_total == {"age": 4, "size": 0}
    assert retention.sweep().removed_for_age == 0  # nothing more to do


def test_past_the_size_limit_the_oldest_finished_jobs_go_until_it_fits(tmp_path: Path, book: JobBook) -> None:
    outputs = tmp_path / "outputs"
    jobs = finished_jobs(10, start=START)
    book.store_finished(jobs)
    for job in jobs:
        give_outputs(outputs, job.job_id, 10_000)
    big_active = book.submit("q" * 32, "waiting", PARAMS, retry_after_s=1)
    give_outputs(outputs, big_active.job_id, 10**6)  # never removed, whatever its size

    retention = Retention(book, outputs, max_age_s=None, max_bytes=35_000)
    result = retention.sweep()

    assert result.removed_for_size == 7
    assert result.outputs_bytes == 30_000
    assert [j.job_id for j in book.list(state="succeeded", limit=100)] == [j.job_id for j in reversed(jobs[7:])]
    assert sorted(p.name for p in outputs.iterdir()) == sorted([big_active.job_id, *(j.job_id for j in jobs[7:])])
    assert book.get(big_active.job_id).state == "queued"


def test_a_job_finishing_later_is_measured_once_and_counted(tmp_path: Path, book: JobBook) -> None:
    outputs = tmp_path / "outputs"
    retention = Retention(book, outputs, max_age_s=None, max_bytes=None)
    job = book.submit("a" * 32, "one", PARAMS, retry_after_s=1)
    give_outputs(outputs, job.job_id, 4096)
    assert retention.sweep().outputs_bytes == 0  # still queued: not measured
    book.take(timeout_s=1)
    book.update(job, state="succeeded", finished_at=START)
    assert retention.sweep().outputs_bytes == 4096
    assert folder_bytes(outputs / job.job_id) == 4096
    assert folder_bytes(outputs / "missing") == 0


def test_retention_limits_come_from_the_environment_and_flags() -> None:
    default = GeneratorConfig.from_sources([], environ={})
    assert default.retention_max_age_s == 30 * DAY_S
    assert default.retention_max_bytes is None
    env = {"GENERATOR_RETENTION_DAYS": "7", "GENERATOR_RETENTION_GB": "2.5"}
    configured = GeneratorConfig.from_sources([], environ=env)
    assert (configured.retention_max_age_s, configured.retention_max_bytes) == (7 * DAY_S, 2_500_000_000)
    flags = GeneratorConfig.from_sources(["--retention-days", "0", "--retention-gb", "100"], environ=env)
    assert (flags.retention_max_age_s, flags.retention_max_bytes) == (None, 100 * 10**9)
    with pytest.raises(ValueError, match="GENERATOR_RETENTION_DAYS"):
        GeneratorConfig(retention_days=-1).validate()
