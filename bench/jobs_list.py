"""The dashboard's jobs list at 300 jobs a day, beside one window of samples: latency per request.

Each store (SQLite, a real influxd) holds a day of jobs as `python -m monitor` stores them (each job's ~57 events
and its `job_summary` point) and an hour of 1 s samples (one GPU + the host); a real `python -m monitor` serves
it, and one job is running (its events posted over HTTP, so the monitor holds it open). One client sends the
dashboard's requests in turn, one at a time, so each figure is the route's own cost on a quiet server: `jobs`
(24 h, limit 20, what the dashboard asks), `series` (the last hour of GPU samples: one window of samples) and
`status` (what the dashboard polls every sampling period). Target: the jobs list's p50 at most 50 ms on 2 cores.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from bench import fixtures
from bench.api_load import GPU_QUERY, fill_jobs
from bench.harness import Context, MonitorProcess, Result, at_most, info, summary
from bench.store_speed import fill
from monitor.storage import Store, open_store

S = fixtures.S
JOBS_PER_DAY = 300
TARGET_P50_MS = 50.0
ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    "jobs": ("jobs", {"window": "24h", "host": fixtures.HOST, "limit": "20"}),
    "series 1h": ("series", {**GPU_QUERY, "window": "1h"}),
    "status": ("status", {}),
}


def _post_running_job(url: str) -> None:
    """Post a job that is running now (queued, running, its first steps): the monitor holds it open."""
    events = fixtures.job_events("job-running", time.time() - 10)[:12]
    response = requests.post(f"{url}/monitor/api/events", json=[e.to_dict() for e in events], timeout=30)
    response.raise_for_status()


def _time_requests(url: str, rounds: int) -> dict[str, list[float]]:
    """Send every endpoint in turn `rounds` times from one client; return each request's seconds."""
    session = requests.Session()
    seconds: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    for _ in range(rounds):
        for name, (path, params) in ENDPOINTS.items():
            started = time.perf_counter()
            response = session.get(f"{url}/monitor/api/{path}", params=params, timeout=30)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            seconds[name].append(elapsed)
    return seconds


def run(ctx: Context) -> Result:
    """Fill both stores, serve each with `python -m monitor`, time the dashboard's requests one at a time."""
    jobs, ticks, rounds = (10, 600, 5) if ctx.quick else (JOBS_PER_DAY, 3600, 100)
    urls = {"SQLite": f"sqlite:///{ctx.scratch('jobs-sqlite')}/monitor.db"}
    if not ctx.quick:  # the quick run proves the harness on SQLite alone: the smoke test has a minute for all
        urls["InfluxDB"] = ctx.influxd().store_url("jobs")
    stores: dict[str, Store] = {name: open_store(url) for name, url in urls.items()}  # as the monitor writes
    end_ns = time.time_ns()
    fill(stores, ticks, end_ns)
    events = {name: fill_jobs(store, jobs, end_ns / S) for name, store in stores.items()}
    for store in stores.values():
        store.close()
    if not ctx.quick:
        ctx.settle_influxd()
    figures = []
    data: dict[str, Any] = {"jobs": jobs, "events": events, "sample_ticks": ticks, "rounds": rounds, "per_store": {}}
    for name, url in urls.items():
        monitor = MonitorProcess(ctx.scratch(f"jobs-{name}"), store_url=url)
        monitor.start()
        ctx.on_close(monitor.stop)
        _post_running_job(monitor.url)
        listed = requests.get(f"{monitor.url}/monitor/api/jobs", params=ENDPOINTS["jobs"][1], timeout=30).json()
        _time_requests(monitor.url, 2)  # warm: the first requests load modules and fill caches
        timed = _time_requests(monitor.url, rounds)
        monitor.stop()
        how = (
            f"one client, one request at a time, {rounds} rounds of {', '.join(ENDPOINTS)}; {jobs} jobs "
            f"({events[name]} events and {jobs} summaries) over 24 h, {ticks} s of 1 s samples, one job running"
        )
        stats = {endpoint: summary(samples, 1000) for endpoint, samples in timed.items()}
        data["per_store"][name] = {
            "latency_ms": stats,
            "listed": [(job["id"], job["status"]) for job in listed["jobs"][:3]],
        }
        figures.append(at_most(f"jobs list (24 h, {jobs} jobs/day), {name}: p50", stats["jobs"]["p50"],
                               TARGET_P50_MS, "ms", how))  # fmt: skip
        figures.append(info(f"jobs list (24 h, {jobs} jobs/day), {name}: p99", stats["jobs"]["p99"], "ms", how))
        for endpoint in ("series 1h", "status"):
            figures.append(info(f"{endpoint} beside it, {name}: p50", stats[endpoint]["p50"], "ms", how))
    return Result(figures, data)
