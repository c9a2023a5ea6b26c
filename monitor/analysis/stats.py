"""Run-time statistics of finished jobs: outcome counts and generation-time ranks per GPU model and configuration."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from monitor.analysis.devices import ModelNames
from monitor.storage.base import Point


def percentile(ordered: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of sorted values, interpolating linearly between ranks."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def configuration_stats(
    points: Iterable[Point], names: ModelNames, quality: Callable[[Point], Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Group finished jobs by GPU model and configuration (guidance included: guidance 1 is half the work of 9);
    count outcomes, rank generation times and queue waits of the succeeded ones, and average their quality."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for point in points:
        f = point.fields
        model = names.name(point.tags.get("host", ""), point.tags.get("gpu", ""))
        key = (model, f.get("resolution"), f.get("num_frames"), f.get("steps"), f.get("guidance_scale"))
        group = groups.setdefault(key, {"statuses": {}, "run_s": [], "queued_s": [], "combined": []})
        status = point.tags.get("status", "unknown")
        group["statuses"][status] = group["statuses"].get(status, 0) + 1
        if status != "succeeded":
            continue
        for name in ("run_s", "queued_s"):
            value = f.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                group[name].append(float(value))
        combined = (quality(point) if quality is not None else {}).get("combined")
        if isinstance(combined, int | float) and not isinstance(combined, bool):
            group["combined"].append(float(combined))
    out = []
    for (model, resolution, frames, steps, guidance), group in sorted(
        groups.items(), key=lambda kv: tuple(map(str, kv[0]))
    ):
        statuses, times, waits = group["statuses"], sorted(group["run_s"]), sorted(group["queued_s"])
        jobs = sum(statuses.values())
        succeeded, cancelled = statuses.get("succeeded", 0), statuses.get("cancelled", 0)
        out.append(
            {
                "gpu_model": model,
                "resolution": resolution,
                "num_frames": frames,
                "steps": steps,
                "guidance_scale": guidance,
                "jobs": jobs,
                "succeeded": succeeded,
                "failed": statuses.get("failed", 0),
                "cancelled": cancelled,
                "rejected": statuses.get("rejected", 0),
                "success_rate": round(succeeded / jobs, 4),
                "success_rate_without_cancels": round(succeeded / (jobs - cancelled), 4) if jobs > cancelled else None,
                "fastest_s": round(times[0], 3) if times else None,
                "median_s": round(percentile(times, 50), 3) if times else None,
                "p95_s": round(percentile(times, 95), 3) if times else None,
                "queued_s_p50": round(percentile(waits, 50), 3) if waits else None,
                "queued_s_p95": round(percentile(waits, 95), 3) if waits else None,
                "combined_mean": round(sum(group["combined"]) / len(group["combined"]), 4)
                if group["combined"]
                else None,
            }
        )
    return out
