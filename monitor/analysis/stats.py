"""Run-time statistics of finished jobs: outcome counts and generation-time ranks per GPU model and configuration."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from monitor.analysis.devices import ModelNames
from monitor.storage.base import Point


def percentile(ordered: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of sorted values, interpolating linearly between ranks."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def configuration_stats(points: Iterable[Point], names: ModelNames) -> list[dict[str, Any]]:
    """Group finished jobs by GPU model and configuration; count outcomes and rank generation times."""
    groups: dict[tuple, dict[str, Any]] = {}
    for point in points:
        f = point.fields
        model = names.name(point.tags.get("host", ""), point.tags.get("gpu", ""))
        key = (model, f.get("resolution"), f.get("num_frames"), f.get("steps"))
        group = groups.setdefault(key, {"statuses": {}, "run_s": []})
        status = point.tags.get("status", "unknown")
        group["statuses"][status] = group["statuses"].get(status, 0) + 1
        run_s = f.get("run_s")
        if status == "succeeded" and isinstance(run_s, int | float):
            group["run_s"].append(float(run_s))
    out = []
    for (model, resolution, frames, steps), group in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        statuses, times = group["statuses"], sorted(group["run_s"])
        jobs = sum(statuses.values())
        out.append(
            {
                "gpu_model": model,
                "resolution": resolution,
                "num_frames": frames,
                "steps": steps,
                "jobs": jobs,
                "succeeded": statuses.get("succeeded", 0),
                "failed": statuses.get("failed", 0),
                "cancelled": statuses.get("cancelled", 0),
                "success_rate": round(statuses.get("succeeded", 0) / jobs, 4),
                "fastest_s": round(times[0], 3) if times else None,
                "median_s": round(percentile(times, 50), 3) if times else None,
                "p95_s": round(percentile(times, 95), 3) if times else None,
            }
        )
    return out
