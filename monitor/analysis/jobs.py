"""Rebuild jobs from their stored events: latest status, parameters, times, and the per-stage breakdown."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from common.events import FINAL_STATES, STARTUP_JOB_ID, parse_iso

TERMINAL = FINAL_STATES


def _order(event: dict[str, Any]) -> tuple[str, bool, str]:
    # By end: an end state's event starts at submission, so ordering by start would put it before "running".
    # An end state sorts after whatever ends at the same instant: a job lost in a crash ends when it was last known
    # alive, which can be the very instant its `running` event marks.
    final = event["kind"] == "job" and event.get("status") in TERMINAL
    return (event["ended_at"], final, event["started_at"])


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((parse_iso(end) - parse_iso(start)).total_seconds(), 6)


def stage_breakdown(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sum each stage's durations; denoising also gets its step count, its step times and its first step's warm-up.

    `first_step_s` is step 1's seconds and `warmup_s` what it took beyond the median step (never below 0): the
    one-off warm-up a size new to the generator's process pays (cuDNN and the allocator at a new shape). The
    generator says on that step whether the size was new (`first_at_size`); a job of a size its process had run
    pays only a step's noise, and the laws learn the warm-up from the jobs that were first.
    """
    stages: dict[str, dict[str, Any]] = {}
    step_durations: list[float] = []
    first_step: dict[str, Any] | None = None
    for event in events:
        if event["kind"] != "stage" or not event.get("stage"):
            continue
        entry = stages.setdefault(event["stage"], {"duration_s": 0.0, "count": 0})
        entry["duration_s"] = round(entry["duration_s"] + event["duration_s"], 6)
        entry["count"] += 1
        if event["stage"] == "denoising_step":
            step_durations.append(event["duration_s"])
            if event.get("step") == 1:
                first_step = event
    steps = stages.pop("denoising_step", None)
    if steps is not None:
        denoising = stages.setdefault("denoising", {"duration_s": steps["duration_s"], "count": 1})
        denoising["steps"] = steps["count"]
        denoising["mean_step_s"] = round(steps["duration_s"] / steps["count"], 6)
        # The first step at a size new to the generator's process carries a one-off warm-up (0.4-0.8 s on an
        # H200, two to seven steps' worth at 256p): the median is the step's own time, what the laws learn.
        median = statistics.median(step_durations)
        denoising["median_step_s"] = round(median, 6)
        if first_step is not None:
            denoising["first_step_s"] = round(first_step["duration_s"], 6)
            denoising["warmup_s"] = round(max(first_step["duration_s"] - median, 0.0), 6)
            denoising["first_at_size"] = first_step.get("first_at_size")
    return stages


def summarize(job_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summarise one job from its events (any order): the jobs list's row."""
    ordered = sorted(events, key=_order)
    states = [e for e in ordered if e["kind"] == "job" and e.get("status")]
    first_state = {e["status"]: e["started_at"] for e in reversed(states)}
    last = ordered[-1]
    submitted, started = first_state.get("queued"), first_state.get("running")
    # An end state's event spans the whole job (it starts at submission): the job finished when it ended.
    finished = next((e["ended_at"] for e in reversed(states) if e["status"] in TERMINAL), None)

    def latest(name: str) -> Any:
        return next((e[name] for e in reversed(ordered) if e.get(name)), None)

    peaks = [e["peak_memory_bytes"] for e in ordered if e.get("peak_memory_bytes") is not None]
    run_s = _seconds_between(started, finished)
    allocated = [e["peak_memory_allocated_bytes"] for e in ordered if e.get("peak_memory_allocated_bytes") is not None]
    state = states[-1]["status"] if states else None
    return {
        "job_id": job_id,
        "state": state,
        **deprecated_aliases(job_id, state),
        "host": last["host"],
        "gpu": last["gpu"],
        "params": latest("params") or {},
        "requested": latest("requested") or {},
        "prompt": latest("prompt"),
        "video_path": latest("video_path"),
        "error": latest("error"),
        "suggestion": latest("suggestion"),
        "notes": latest("notes") or [],
        "peak_memory_bytes": max(peaks) if peaks else None,
        "peak_memory_allocated_bytes": max(allocated) if allocated else None,
        "submitted_at": submitted,
        "started_at": started,
        "finished_at": finished,
        "queued_s": _seconds_between(submitted, started),
        "run_s": run_s,
        "total_s": _seconds_between(submitted or started, finished),
        # One worker holds one GPU for the job's run; a CPU job held none. The energy is known only later, from the
        # GPU's counter (monitor/analysis/energy.py): a row read back from the job's summary has it.
        "gpu_seconds": run_s if last["gpu"] != "cpu" else None,
        "energy_j": None,
        "stages": stage_breakdown(ordered),
        "last_event_at": max(e["ended_at"] for e in ordered),
    }


def deprecated_aliases(job_id: str | None, state: str | None) -> dict[str, Any]:
    """Return a job row's deprecated names, kept for the clients written before both services shared one
    vocabulary (`job_id`, `state`): `id` and `status`."""
    return {"id": job_id, "status": state}


def detail(job_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the job's summary plus every event in order."""
    return {**summarize(job_id, events), "events": sorted(events, key=_order)}


def group_by_job(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group event dicts by job id; the generator's start-up stages are not a job and are left out."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("job_id") and event["job_id"] != STARTUP_JOB_ID:
            jobs.setdefault(event["job_id"], []).append(event)
    return jobs
