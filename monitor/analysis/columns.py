"""The column dictionary of every CSV report: each column's unit, what it means, and when it is blank and why.

It is served with the reports (`GET /monitor/api/reports/columns`), rendered into docs/reports.md
(`python -m monitor report columns`), and a test holds it to the reports' headers, so a column cannot be added
without saying what it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from monitor.analysis.aggregate import GROUP_KEYS, VALUE_COLUMNS
from monitor.analysis.reports import GPU_COLUMNS, HOST_COLUMNS, JOB_COLUMNS


@dataclass(frozen=True)
class Column:
    """One report column."""

    name: str
    unit: str
    meaning: str
    blank_when: str = ""


_PARAMS = {
    "resolution": ("pixels", "the clip's width and height"),
    "num_frames": ("frames", "frames in the clip"),
    "steps": ("steps", "denoising steps"),
    "guidance_scale": ("ratio", "classifier-free guidance scale (1 turns guidance off: half the UNet work)"),
    "fps": ("frames/s", "frames per second of the exported clip"),
    "seed": ("integer", "the random seed the job ran with (chosen and recorded when the request gave none)"),
}
_STAGES = {
    "text_encoding": "encoding the prompt",
    "image_encoding": "encoding the input image",
    "image_latents": "preparing the image latents",
    "denoising": "the whole denoising loop",
    "decode_video": "decoding latents to frames",
    "export": "writing the H.264 MP4",
}
_GPU_FIELDS = {
    "utilization_ratio": ("ratio 0-1", "GPU busy share, as NVML reports it"),
    "memory_used_bytes": ("bytes", "GPU memory in use, every process"),
    "temperature_c": ("°C", "GPU temperature"),
    "power_w": ("W", "board power draw"),
}

_JOB_FIXED = {
    "job_id": Column("job_id", "text", "the generator's job id"),
    "host": Column("host", "text", "the host tag the generator gave the job's events"),
    "gpu": Column("gpu", "text", "the GPU index the job ran on (a refused submission: the generator's own)"),
    "gpu_model": Column("gpu_model", "text", "the GPU's model name from the monitor's samples, else 'gpu N'"),
    "status": Column("status", "text", "how the job ended: succeeded, failed, cancelled, rejected or unfinished"),
    "submitted_at": Column(
        "submitted_at",
        "RFC 3339 UTC",
        "when the job was submitted",
        "its queued event was lost, or it was refused at input (finished_at is then when)",
    ),
    "started_at": Column(
        "started_at", "RFC 3339 UTC", "when a worker started it", "it never ran (cancelled queued, rejected)"
    ),
    "finished_at": Column("finished_at", "RFC 3339 UTC", "when it ended (its final event)"),
    "queued_s": Column("queued_s", "s", "started_at - submitted_at: the wait in the queue", "it never ran"),
    "run_s": Column("run_s", "s", "finished_at - started_at: the time on the GPU", "it never ran"),
    "total_s": Column("total_s", "s", "finished_at - submitted_at: what the user waited"),
    "denoising_steps": Column("denoising_steps", "steps", "denoising steps that ran", "it never denoised"),
    "mean_step_s": Column("mean_step_s", "s", "mean time of one denoising step", "it never denoised"),
    "median_step_s": Column(
        "median_step_s",
        "s",
        "median time of one denoising step: the first step's one-off warm-up at a size new to the generator left out",
        "it never denoised",
    ),
    "first_step_s": Column("first_step_s", "s", "time of the first denoising step", "it never denoised"),
    "warmup_s": Column(
        "warmup_s",
        "s",
        "first_step_s - median_step_s, at least 0: the one-off warm-up a size new to the generator's process pays",
        "it never denoised",
    ),
    "first_at_size": Column(
        "first_at_size",
        "true/false",
        "the job's size (resolution, frames, guidance) was new to its generator process: it paid the warm-up",
        "a generator from before it said so, or the job never denoised",
    ),
    "peak_memory_bytes": Column(
        "peak_memory_bytes",
        "bytes",
        "torch's peak reserved memory during the job: what the card had to give it",
        "not measured (a CPU run, or it failed before the pipeline ran)",
    ),
    "peak_memory_allocated_bytes": Column(
        "peak_memory_allocated_bytes",
        "bytes",
        "torch's peak memory held by live tensors during the job",
        "not measured (a CPU run, or it failed before the pipeline ran)",
    ),
    "nvml_peak_memory_bytes": Column(
        "nvml_peak_memory_bytes",
        "bytes",
        "the most NVML saw the generator's process use during the job (sampled: a short peak can fall between samples)",
        "no GPU sample of the generator's process in the job's span (a CPU run, or the monitor was down)",
    ),
    "energy_j": Column(
        "energy_j",
        "J",
        "the GPU's energy over the job's span, from NVML's total-energy counter (the whole card, idle draw included)",
        "a CPU job, a card without the counter, no counter reading before its start or after its end (it is "
        "added about one energy-read interval, 10 s by default, after the job ends)",
    ),
    "gpu_seconds": Column(
        "gpu_seconds", "s", "GPU time the job held: run_s on its one GPU", "a CPU job, or it never ran"
    ),
    "energy_cost": Column(
        "energy_cost",
        "currency",
        "energy_j at the configured price per kWh (MONITOR_PRICE_PER_KWH), in that price's currency",
        "no price per kWh configured, or energy_j is blank",
    ),
    "gpu_time_cost": Column(
        "gpu_time_cost",
        "currency",
        "gpu_seconds at the configured price per GPU-hour (MONITOR_PRICE_PER_GPU_HOUR)",
        "no price per GPU-hour configured, or gpu_seconds is blank",
    ),
    "cost": Column(
        "cost",
        "currency",
        "energy_cost + gpu_time_cost, over the parts known (prices are applied when the report is read)",
        "neither part is known",
    ),
    "clip_score": Column(
        "clip_score",
        "0-100",
        "100 x max(cos, 0) of the prompt's and the frames' CLIP embeddings, averaged",
        "no CLIP weights configured (clip_reason says), not scored yet, or the clip failed",
    ),
    "i2v_subject": Column(
        "i2v_subject",
        "0-1",
        "VBench-I2V subject consistency between the input image and the frames",
        "no CLIP weights configured, or not scored",
    ),
    "smoothness": Column("smoothness", "0-1", "motion smoothness from optical flow (1 = smooth)", "not scored"),
    "temporal_flickering": Column("temporal_flickering", "0-1", "VBench's flickering score (1 = none)", "not scored"),
    "dynamic_degree": Column("dynamic_degree", "0-1", "share of frame pairs with visible motion", "not scored"),
    "static": Column("static", "true/false", "the clip barely moves (VBench's dynamic-degree rule)", "not scored"),
    "combined": Column(
        "combined", "0-1", "0.5 CLIP + 0.3 smoothness + 0.2 rating, renormalised over the parts present", "not scored"
    ),
    "combined_before_rating": Column(
        "combined_before_rating",
        "0-1",
        "the combined score before the user's rating changed it",
        "not scored; equal to combined when not rated",
    ),
    "parts_used": Column(
        "parts_used",
        "text",
        "which parts the combined score used (clip, smoothness, rating), renormalised",
        "not scored",
    ),
    "clip_reason": Column("clip_reason", "text", "why clip_score is blank", "clip_score has a value"),
    "unscorable_reason": Column(
        "unscorable_reason", "text", "why the clip could not be scored at all", "it was scored, or not yet"
    ),
    "low_quality": Column("low_quality", "true/false", "combined below the quality threshold", "not scored"),
    "rating": Column("rating", "1-5 stars", "the user's rating of the clip", "not rated"),
    "prompt": Column("prompt", "text", "the prompt (a leading = + - @ tab or CR gets a ' so spreadsheets show it)"),
    "error": Column(
        "error",
        "text",
        "why the job failed, or the field and reason a submission was refused ('field: why')",
        "it succeeded or was cancelled",
    ),
    "suggestion": Column("suggestion", "text", "what to change to make it succeed", "no suggestion applies"),
    "video_path": Column("video_path", "path", "the clip on the generator's disk", "no clip (not succeeded)"),
}

_AGGREGATE = {
    "jobs": ("jobs", "jobs in the group"),
    "succeeded": ("jobs", "jobs that succeeded"),
    "failed": ("jobs", "jobs that failed"),
    "cancelled": ("jobs", "jobs the user (or a severe alert) cancelled"),
    "rejected": ("jobs", "submissions refused at input"),
    "success_rate": ("ratio", "succeeded / jobs"),
    "success_rate_without_cancels": ("ratio", "succeeded / (jobs - cancelled)"),
    "run_s_p50": ("s", "median run time of the succeeded jobs"),
    "run_s_p95": ("s", "95th percentile run time of the succeeded jobs"),
    "queued_s_p50": ("s", "median queue wait of the succeeded jobs"),
    "queued_s_p95": ("s", "95th percentile queue wait of the succeeded jobs"),
    "combined_mean": ("0-1", "mean combined quality of the scored jobs"),
    "clip_score_mean": ("0-100", "mean CLIP score of the scored jobs"),
    "gpu_seconds": ("s", "GPU time the group's jobs held (the sum of their gpu_seconds; CPU jobs hold none)"),
    "energy_j": ("J", "GPU energy the group's jobs used (the sum of those whose energy is known)"),
    "energy_cost": ("currency", "energy_j at the configured price per kWh"),
    "gpu_time_cost": ("currency", "gpu_seconds at the configured price per GPU-hour"),
    "cost": ("currency", "energy_cost + gpu_time_cost, over the parts known"),
}
_GROUPS = {
    "day": ("date", "the UTC day the jobs ended"),
    "host": ("text", "the host tag"),
    "gpu": ("text", "the GPU index"),
    "gpu_model": ("text", "the GPU model name"),
    "status": ("text", "how the jobs ended"),
}


def _job_column(name: str) -> Column:
    if name in _JOB_FIXED:
        return _JOB_FIXED[name]
    if name.startswith("requested_") and name.removeprefix("requested_") in _PARAMS:
        unit, meaning = _PARAMS[name.removeprefix("requested_")]
        return Column(name, unit, f"what the user asked for: {meaning}", "the request did not give it")
    if name in _PARAMS:
        unit, meaning = _PARAMS[name]
        return Column(name, unit, f"what the job ran with (after any degradation): {meaning}")
    stage = name.removesuffix("_s")
    if name.endswith("_s") and stage in _STAGES:
        return Column(name, "s", f"time spent {_STAGES[stage]}", "the job ended before that stage")
    raise KeyError(f"jobs.csv column {name!r} has no entry in the column dictionary (monitor/analysis/columns.py)")


def _gpu_column(name: str) -> Column:
    if name == "bucket_start":
        return Column(name, "RFC 3339 UTC", "the bucket's start (buckets start at multiples of `bucket`)")
    if name in ("host", "gpu", "gpu_model"):
        return _JOB_FIXED[name]
    if name == "samples":
        return Column(
            name,
            "count",
            "raw samples the bucket aggregates (of its most often reported field): 1 is one reading, "
            "bucket / the sampling interval a full bucket",
        )
    if name == "memory_total_bytes_max":
        return Column(name, "bytes", "the card's memory")
    field, _, aggregate = name.rpartition("_")
    if field in _GPU_FIELDS and aggregate in ("mean", "max"):
        unit, meaning = _GPU_FIELDS[field]
        return Column(name, unit, f"{meaning}: the bucket's {aggregate}", "NVML does not report it on this card")
    raise KeyError(f"gpu.csv column {name!r} has no entry in the column dictionary (monitor/analysis/columns.py)")


_HOST_FIELDS = {
    "cpu_ratio": ("ratio 0-1", "the host's CPU busy share"),
    "memory_used_bytes": ("bytes", "the host's memory in use"),
    "generator_rss_bytes": ("bytes", "the generator process's resident memory"),
    "outputs_disk_free_bytes": ("bytes", "free space on the disk holding the generator's outputs"),
}


def _host_column(name: str) -> Column:
    if name in ("bucket_start", "host", "samples"):
        return _gpu_column(name)
    if name == "memory_total_bytes_max":
        return Column(name, "bytes", "the host's memory")
    field, _, aggregate = name.rpartition("_")
    if field in _HOST_FIELDS and aggregate in ("mean", "max"):
        unit, meaning = _HOST_FIELDS[field]
        return Column(
            name, unit, f"{meaning}: the bucket's {aggregate}", "not readable on this host (no generator PID)"
        )
    raise KeyError(f"hosts.csv column {name!r} has no entry in the column dictionary")


def _aggregate_column(name: str) -> Column:
    if name in _AGGREGATE:
        unit, meaning = _AGGREGATE[name]
        blank = "no job in the group has it" if name not in ("jobs", *("succeeded", "failed", "cancelled")) else ""
        return Column(name, unit, meaning, blank)
    if name in _GROUPS:
        unit, meaning = _GROUPS[name]
        return Column(name, unit, f"group: {meaning}")
    if name in _PARAMS:
        unit, meaning = _PARAMS[name]
        return Column(name, unit, f"group: {meaning}")
    raise KeyError(f"aggregate.csv column {name!r} has no entry in the column dictionary")


def dictionary() -> Mapping[str, Sequence[Column]]:
    """Return every report's columns in header order (aggregate.csv: every groupable column, then the values)."""
    return {
        "jobs.csv": tuple(_job_column(name) for name in JOB_COLUMNS),
        "gpu.csv": tuple(_gpu_column(name) for name in GPU_COLUMNS),
        "hosts.csv": tuple(_host_column(name) for name in HOST_COLUMNS),
        "aggregate.csv": tuple(_aggregate_column(name) for name in (*GROUP_KEYS, *VALUE_COLUMNS)),
    }


def as_json() -> dict[str, list[dict[str, str]]]:
    """Return the dictionary as JSON-ready data."""
    return {report: [asdict(column) for column in columns] for report, columns in dictionary().items()}


def markdown() -> str:
    """Return the dictionary as the Markdown tables docs/reports.md holds."""
    lines: list[str] = []
    for report, columns in dictionary().items():
        lines += [f"### {report}", "", "| column | unit | meaning | blank when |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.unit} | {c.meaning} | {c.blank_when} |" for c in columns]
        lines.append("")
    return "\n".join(lines)
