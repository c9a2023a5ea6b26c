"""Job state survives a restart: a job that was running fails, queued jobs queue again."""

from __future__ import annotations

from pathlib import Path

from common.sizing import GiB
from generator.admission import admit
from generator.jobs import JobBook
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
    assert "restarted" in reopened.get(first.job_id).error
    assert [job.job_id for job in reopened.recovered] == [first.job_id]
    assert reopened.take(timeout_s=1).job_id == second.job_id


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
