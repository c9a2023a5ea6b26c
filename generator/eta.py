"""Estimate how long jobs will take: from the monitor's prediction where admission got one, else from the stage
durations of the jobs already finished."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from generator.admission import MemoryEstimate
from generator.jobs import Job
from generator.validation import JobParams

TAIL_STAGES = ("decode_video", "export")
HEAD_STAGES = ("text_encoding", "image_encoding", "image_latents")


def _work(params: JobParams) -> float:
    # A denoising step, the decoder and the encoder scale with pixels times frames.
    return params.num_frames * params.resolution**2


def _scaled(history: Sequence[Job], params: JobParams, per_job: str) -> float | None:
    """Return the median over finished jobs of a per-job figure, scaled to `params`' amount of work."""
    values = []
    for job in history:
        durations = job.stage_durations_s
        if per_job == "step":
            value = durations.get("denoising_step_mean")
        else:
            stages = TAIL_STAGES if per_job == "tail" else HEAD_STAGES
            if not all(stage in durations for stage in stages):
                continue
            value = sum(durations[stage] for stage in stages)
        if value is not None:
            values.append(value * _work(params) / _work(job.effective))
    return statistics.median(values) if values else None


def duration_estimate_s(params: JobParams, history: Sequence[Job]) -> float | None:
    """Return the expected run time of a job with `params`, or None before any job has finished."""
    step, head, tail = (_scaled(history, params, part) for part in ("step", "head", "tail"))
    if step is None:
        return None
    return (head or 0.0) + step * params.steps + (tail or 0.0)


def predicted_run_s(estimate: int | None, new_size: bool) -> float | None:
    """Return the monitor's predicted run of a job (None without one): its warm time, plus the one-off warm-up
    when the job's size is new to the worker's process (its first denoising step pays it; generator/warm_sizes.py).
    """
    if not isinstance(estimate, MemoryEstimate) or estimate.run_s is None:
        return None
    warmup_s = estimate.warmup_s if new_size and estimate.warmup_s is not None else 0.0
    return estimate.run_s + warmup_s


def remaining_s(job: Job, history: Sequence[Job], now: float | None = None) -> float | None:
    """Return the expected time until a running job ends: from its own step times once it has some, before that
    from the monitor's prediction admission got (warm-up included for a new size), else from the history."""
    now = time.time() if now is None else now
    durations = job.stage_durations_s
    tail = _scaled(history, job.effective, "tail") or 0.0
    if job.step > 0 and "denoising_step_mean" in durations:
        return durations["denoising_step_mean"] * (job.total_steps - job.step) + tail
    if job.predicted_run_s is not None and job.started_at is not None:
        return max(job.predicted_run_s - (now - job.started_at), 0.0)
    total = duration_estimate_s(job.effective, history)
    if total is None or job.started_at is None:
        return None
    return max(total - (now - job.started_at), 0.0)


def queue_wait_s(ahead: Sequence[Job], running: Sequence[Job], history: Sequence[Job], workers: int) -> float | None:
    """Return the expected wait before a queued job starts, given the jobs ahead of it and the running ones."""
    total = 0.0
    for job in running:
        left = remaining_s(job, history)
        if left is None:
            return None
        total += left
    for job in ahead:
        estimate = duration_estimate_s(job.effective, history)
        if estimate is None:
            return None
        total += estimate
    return total / max(workers, 1)
