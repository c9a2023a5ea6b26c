"""A job's whole story, for the dashboard's job detail: its stage timeline, its device over its span, its cost.

From the job's stored events (`monitor.analysis.jobs.detail`):
- the timeline: each stage as a span [start, end] in seconds from the job's submission (the denoising loop as
  one span, its steps counted), and the moments it was queued, started and ended;
- what admission said (`notes`) and whether it was degraded (`requested` against the parameters it ran with).

From the samples over its span (a little before and after): on a GPU its utilisation and memory (`gpu_sample`
of its host and GPU), on a CPU the host's CPU and memory (`host_sample`), at most about `MAX_POINTS` points.
From its `job_summary` point (once it ended): GPU-seconds, energy, and their cost at the configured prices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from common.events import parse_iso
from common.units import NS_PER_S
from monitor.analysis.cost import Prices, energy_of, gpu_seconds_of, rounded
from monitor.storage.base import Store
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, JOB_EVENT, JOB_SUMMARY, point_to_event

MAX_POINTS = 200
PAD_S = 5  # samples this long before the job started and after it ended, to show the device at rest around it
GPU_FIELDS = ("utilization_ratio", "memory_used_bytes", "memory_total_bytes", "generator_memory_bytes")
CPU_FIELDS = ("cpu_ratio", "memory_used_bytes", "memory_total_bytes", "generator_rss_bytes")


MAX_EVENTS = 10_000  # a job of 100 steps has about 110


def job_events(store: Store, job_id: str, now_ns: int, window_s: int) -> list[dict[str, Any]]:
    """Return one job's stored events (as event dicts) from the last `window_s`."""
    end_ns = now_ns + 60 * NS_PER_S  # events carry the generator's clock: allow a little skew
    points = store.query_points(
        JOB_EVENT, end_ns - (window_s + 60) * NS_PER_S, end_ns, fields={"job_id": job_id}, limit=MAX_EVENTS
    )
    return [point_to_event(p) for p in points]


def _s(moment: str) -> float:
    return parse_iso(moment).timestamp()


def timeline(summary: dict[str, Any], events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the job's stages as spans in seconds from its start (submission, else the worker's start)."""
    origin_iso = summary.get("submitted_at") or summary.get("started_at") or min(e["started_at"] for e in events)
    origin = _s(origin_iso)
    spans: list[dict[str, Any]] = []
    steps = [e for e in events if e["kind"] == "stage" and e.get("stage") == "denoising_step"]
    has_loop = any(e["kind"] == "stage" and e.get("stage") == "denoising" for e in events)
    for event in events:
        stage = event.get("stage")
        if event["kind"] != "stage" or stage in (None, "denoising_step"):
            continue
        span = {"stage": stage, "start_s": _s(event["started_at"]) - origin, "end_s": _s(event["ended_at"]) - origin}
        if stage == "denoising":
            span["steps"] = len(steps)
        spans.append(span)
    if steps and not has_loop:  # stopped inside the loop (failed, cancelled): its steps so far make the span
        spans.append(
            {
                "stage": "denoising",
                "start_s": min(_s(e["started_at"]) for e in steps) - origin,
                "end_s": max(_s(e["ended_at"]) for e in steps) - origin,
                "steps": len(steps),
            }
        )
    spans.sort(key=lambda span: span["start_s"])
    marks = {
        name: None if summary.get(key) is None else round(_s(summary[key]) - origin, 6)
        for name, key in (("queued", "submitted_at"), ("running", "started_at"), ("ended", "finished_at"))
    }
    for span in spans:
        span["start_s"], span["end_s"] = round(span["start_s"], 6), round(span["end_s"], 6)
    return {"origin": origin_iso, "marks": marks, "stages": spans}


def device_samples(store: Store, summary: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """Return the job's device over its span: the GPU's utilisation and memory, or on a CPU the host's."""
    start = summary.get("started_at") or summary.get("submitted_at")
    if start is None:
        return {"device": None, "bucket_s": None, "points": [], "reason": "the job never started"}
    start_ns = int(_s(start) * NS_PER_S) - PAD_S * NS_PER_S
    end_ns = int(_s(summary["finished_at"]) * NS_PER_S) if summary.get("finished_at") else now_ns
    end_ns += PAD_S * NS_PER_S
    bucket_s = max(1, math.ceil((end_ns - start_ns) / NS_PER_S / MAX_POINTS))
    host, gpu = summary.get("host") or "", summary.get("gpu") or ""
    on_cpu = gpu == "cpu"
    measurement, fields = (HOST_SAMPLE, CPU_FIELDS) if on_cpu else (GPU_SAMPLE, GPU_FIELDS)
    tags = {"host": host} if on_cpu else {"host": host, "gpu": gpu}
    rows = store.query_window(measurement, list(fields), start_ns, end_ns, tags=tags, bucket_s=bucket_s)
    points = [
        {"t_ms": row.time_ns // 1_000_000, **{name: row.mean.get(name) for name in fields if name in row.mean}}
        for row in rows
    ]
    reason = None if points else f"no {measurement} of {host}/{gpu} in the job's span (was the monitor running?)"
    return {"device": "cpu" if on_cpu else "gpu", "bucket_s": bucket_s, "points": points, "reason": reason}


def cost(store: Store, summary: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """Return the job's GPU-seconds, energy and cost from its `job_summary` point (blank while it has none)."""
    point = None
    if summary.get("finished_at"):
        end_ns = int(_s(summary["finished_at"]) * NS_PER_S)
        found = store.query_points(
            JOB_SUMMARY, end_ns - NS_PER_S, end_ns + NS_PER_S, fields={"job_id": summary["job_id"]}, limit=1
        )
        point = found[0] if found else None
    fields = point.fields if point is not None else {}
    energy = energy_of(fields)
    gpu_seconds = gpu_seconds_of(fields, summary.get("gpu") or "") if point is not None else summary.get("gpu_seconds")
    energy_cost, gpu_time_cost, total = prices.cost(energy, gpu_seconds)
    return {
        "energy_j": energy,
        "gpu_seconds": gpu_seconds,
        "energy_cost": rounded(energy_cost),
        "gpu_time_cost": rounded(gpu_time_cost),
        "cost": rounded(total),
        "prices": prices.to_dict(),
    }
