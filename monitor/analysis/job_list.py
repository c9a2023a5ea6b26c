"""The jobs list: the newest jobs that ended, read from their `job_summary` points, and those still open.

Rebuilding the list from events meant reading and summarising every event in the window (at 300 jobs a day,
17,000 events and 2-3 s per request on 2 cores). A finished job's row is already stored, one point per job
(monitor/analysis/job_summary.py), so the list reads only the newest `limit` of them, plus the few jobs still
queued or running, which the job summarizer holds in memory as their events arrive (with the summaries it
wrote last, which may still be on their way to the store). A row has the shape `monitor.analysis.jobs.summarize`
gives, whichever way it was made.

The open jobs are the ones this monitor's generator reported (each host's monitor hears its own); in a store
shared by several hosts, another host's job appears here once it has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.units import NS_PER_S
from monitor.analysis.job_summary import summary_row
from monitor.storage.base import Store
from monitor.storage.schema import JOB_SUMMARY, iso_from_us

CLOCK_SKEW_S = 60  # events, and so summaries, carry the generator's clock


def recent_jobs(
    store: Store,
    live_rows: Callable[[str | None], list[dict[str, Any]]],
    now_ns: int,
    window_s: int,
    limit: int,
    host: str | None = None,
) -> list[dict[str, Any]]:
    """Return up to `limit` jobs, newest first: those that ended in the window and those still open.

    `live_rows(host)` gives the rows the summarizer holds (`JobSummarizer.live_rows`): open jobs, and those just
    ended, whose summaries the writer may not have delivered yet.

    Raises:
        StoreUnavailable, StoreRejected: as `Store.query_points`.
    """
    end_ns = now_ns + CLOCK_SKEW_S * NS_PER_S
    start_ns = end_ns - (window_s + CLOCK_SKEW_S) * NS_PER_S
    tags = {"host": host} if host else None
    points = store.query_points(JOB_SUMMARY, start_ns, end_ns, tags=tags, limit=limit, descending=True)
    rows: dict[str, dict[str, Any]] = {}
    for point in reversed(points):  # oldest first: a job summarised twice (unfinished, then ended) keeps its last
        row = summary_row(point)
        rows[row["job_id"]] = row
    since = iso_from_us(start_ns // 1000)
    for row in live_rows(host):
        if row["job_id"] not in rows and row["last_event_at"] >= since:
            rows[row["job_id"]] = row
    return sorted(rows.values(), key=lambda row: row["last_event_at"], reverse=True)[:limit]
