"""One aggregation report over finished jobs: group by any parameter column and by day, over a span.

Each group's row counts outcomes (rejected submissions included, so failure rates have the right denominator),
gives success rates with and without the user's own cancels, the p50/p95 of run time and queue wait of the
jobs that succeeded, the mean quality, the GPU time and energy spent, and what they cost at the configured
prices (monitor/analysis/cost.py). Jobs are read once, in pages; what is held is one row of running totals per
group. `group_by=day,resolution` is the daily report: per day and resolution, jobs, failures, p50/p95 time,
mean quality, energy and cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.events import PARAM_NAMES
from common.units import NS_PER_S
from monitor.analysis.cost import NO_PRICES, Prices, energy_of, gpu_seconds_of, rounded
from monitor.analysis.devices import ModelNames
from monitor.analysis.reports import QUALITY_LAG_S, QualityJoin, csv_chunks, number_cell, text_cell
from monitor.analysis.stats import percentile
from monitor.storage.base import Store
from monitor.storage.pages import PAGE_SIZE, iter_points
from monitor.storage.schema import JOB_SUMMARY, QUALITY

#: What a report may group by: the day a job ended (UTC), where it ran, how it ended, and its parameters.
GROUP_KEYS = ("day", "host", "gpu", "gpu_model", "status", *(name for name in PARAM_NAMES if name != "seed"))
OUTCOMES = ("succeeded", "failed", "cancelled", "rejected")
VALUE_COLUMNS = (
    "jobs",
    *OUTCOMES,
    "success_rate",
    "success_rate_without_cancels",
    "run_s_p50",
    "run_s_p95",
    "queued_s_p50",
    "queued_s_p95",
    "combined_mean",
    "clip_score_mean",
    "gpu_seconds",
    "energy_j",
    "energy_cost",
    "gpu_time_cost",
    "cost",
)


class GroupingError(ValueError):
    """A grouping the report cannot make; the message lists what it can."""


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """Return the grouping columns named in `text` (comma-separated; default day,resolution)."""
    names = tuple(n.strip() for n in (text or "day,resolution").split(",") if n.strip())
    unknown = [n for n in names if n not in GROUP_KEYS]
    if unknown or not names or len(set(names)) != len(names):
        raise GroupingError(
            f"group_by must be distinct names among {', '.join(GROUP_KEYS)} (comma-separated), got {text!r}"
        )
    return names


@dataclass
class _Group:
    outcomes: dict[str, int] = field(default_factory=dict)
    run_s: list[float] = field(default_factory=list)
    queued_s: list[float] = field(default_factory=list)
    combined: list[float] = field(default_factory=list)
    clip: list[float] = field(default_factory=list)
    gpu_seconds: float = 0.0
    energy_j: float = 0.0
    energy_known: bool = False


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _rank(values: list[float], q: float) -> float | None:
    return round(percentile(sorted(values), q), 3) if values else None


def aggregate_rows(
    store: Store,
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str],
    host: str | None = None,
    *,
    page_size: int = PAGE_SIZE,
    prices: Prices = NO_PRICES,
) -> Iterator[list[Any]]:
    """Yield one CSV row per group of the jobs that ended in [start_ns, end_ns), sorted by the group's values."""
    for key, values in aggregate_groups(store, start_ns, end_ns, group_by, host, page_size=page_size, prices=prices):
        yield [*(text_cell(v) if isinstance(v, str) else number_cell(v) for v in key), *values]


def aggregate_groups(
    store: Store,
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str],
    host: str | None = None,
    *,
    page_size: int = PAGE_SIZE,
    prices: Prices = NO_PRICES,
) -> Iterator[tuple[tuple[Any, ...], list[Any]]]:
    """Yield each group's values (as stored) and its `VALUE_COLUMNS`, sorted by the group's values."""
    names = ModelNames(store, end_ns)
    lag_ns = QUALITY_LAG_S * NS_PER_S
    quality = QualityJoin(iter_points(store, QUALITY, start_ns, end_ns + lag_ns, page_size=page_size), lag_ns)
    groups: dict[tuple[Any, ...], _Group] = {}
    tags = {"host": host} if host else None
    for point in iter_points(store, JOB_SUMMARY, start_ns, end_ns, tags=tags, page_size=page_size):
        f = point.fields
        job_id = f.get("job_id")
        scores = quality.take(job_id, point.time_ns) if isinstance(job_id, str) else {}
        status = point.tags.get("status", "unknown")
        values = {
            "day": _day(point.time_ns),
            "host": point.tags.get("host", ""),
            "gpu": point.tags.get("gpu", ""),
            "gpu_model": names.name(point.tags.get("host", ""), point.tags.get("gpu", "")),
            "status": status,
            **{name: f.get(name) for name in PARAM_NAMES},
        }
        group = groups.setdefault(tuple(values[name] for name in group_by), _Group())
        group.outcomes[status] = group.outcomes.get(status, 0) + 1
        run_s, queued_s = _number(f.get("run_s")), _number(f.get("queued_s"))
        if status == "succeeded":
            if run_s is not None:
                group.run_s.append(run_s)
            if queued_s is not None:
                group.queued_s.append(queued_s)
        held = gpu_seconds_of(f, point.tags.get("gpu", ""))
        if held is not None:  # every job that held a GPU cost its time, whatever its end
            group.gpu_seconds += held
        energy = energy_of(f)
        if energy is not None:
            group.energy_j += energy
            group.energy_known = True
        for name, into in (("combined", group.combined), ("clip_score", group.clip)):
            score = _number(scores.get(name))
            if score is not None:
                into.append(score)
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v).zfill(12) for v in k)):
        yield key, _values(groups[key], prices)


def _values(group: _Group, prices: Prices) -> list[Any]:
    jobs = sum(group.outcomes.values())
    succeeded = group.outcomes.get("succeeded", 0)
    without_cancels = jobs - group.outcomes.get("cancelled", 0)
    return [
        jobs,
        *(group.outcomes.get(outcome, 0) for outcome in OUTCOMES),
        round(succeeded / jobs, 4) if jobs else None,
        round(succeeded / without_cancels, 4) if without_cancels else None,
        _rank(group.run_s, 50),
        _rank(group.run_s, 95),
        _rank(group.queued_s, 50),
        _rank(group.queued_s, 95),
        _mean(group.combined),
        _mean(group.clip),
        round(group.gpu_seconds, 3),
        round(group.energy_j, 1) if group.energy_known else None,
        *(rounded(c, 4) for c in prices.cost(group.energy_j if group.energy_known else None, group.gpu_seconds)),
    ]


def _day(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time_ns // NS_PER_S))


def write_aggregate(
    store: Store,
    out: Any,
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str],
    host: str | None = None,
    prices: Prices = NO_PRICES,
) -> int:
    """Write the aggregation report as CSV to `out`; return the number of rows."""
    rows = list(aggregate_rows(store, start_ns, end_ns, group_by, host, prices=prices))
    for chunk in csv_chunks((*group_by, *VALUE_COLUMNS), iter(rows)):
        out.write(chunk)
    return len(rows)
