"""The dashboard's API under load from a loopback client: p50/p99 latency and errors per endpoint.

Each store (SQLite, a real influxd) is filled with 24 h of 1 s samples (one GPU + the host) and 24 h of jobs
(a job's ~57 events every few minutes, and its `job_summary` point), then served by a real `python -m monitor`
(waitress, its sampler and writer running). A few client threads send the live tab's requests round-robin:
`series` for the GPU chart at 1 h and 24 h, `jobs`, `status`; bounded in count and time. Stores alternate in two
halves each. (bench/jobs_list.py times the jobs list alone, one request at a time.)
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import requests

from bench import fixtures
from bench.harness import Context, MonitorProcess, Result, info, summary
from bench.store_speed import DASHBOARD_FIELDS, fill
from monitor.analysis.job_summary import summary_point
from monitor.storage import Point, Store, open_store
from monitor.storage.schema import GPU_SAMPLE, event_time_ns, event_to_point, point_to_event

S = fixtures.S
THREADS = 4
GPU_QUERY = {
    "measurement": GPU_SAMPLE,
    "fields": ",".join(DASHBOARD_FIELDS[GPU_SAMPLE]),
    "host": fixtures.HOST,
    "gpu": "0",
}
ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    "series 1h": ("series", {**GPU_QUERY, "window": "1h"}),
    "series 24h": ("series", {**GPU_QUERY, "window": "24h"}),
    "jobs": ("jobs", {"window": "24h", "host": fixtures.HOST, "limit": "20"}),
    "status": ("status", {}),
}


def fill_jobs(store: Store, jobs: int, end_s: float) -> int:
    """Write `jobs` finished jobs spread over the 24 h before `end_s`, as the monitor stores them: each job's
    events and its `job_summary` point (what the jobs list reads). Return the events written."""
    points: list[Point] = []
    events_written = 0
    for i in range(jobs):
        created = end_s - 86_400 + (i + 0.5) * 86_400 / jobs - 30
        events = fixtures.job_events(f"job-{i:05d}", created)
        points += [event_to_point(e) for e in events]
        events_written += len(events)
        end = events[-1]
        dicts = [point_to_event(p) for p in points[-len(events) :]]
        points.append(summary_point(end.job_id, dicts, point_to_event(event_to_point(end)), event_time_ns(end)))
    for i in range(0, len(points), 5000):
        store.write(points[i : i + 5000])
    return events_written


def _load(url: str, requests_total: int, max_s: float) -> dict[str, list[Any]]:
    """Send `requests_total` requests round-robin from THREADS threads, stopping early after `max_s`."""
    results: dict[str, list[Any]] = {name: [] for name in ENDPOINTS}
    names = itertools.cycle(ENDPOINTS)
    lock = threading.Lock()
    deadline = time.monotonic() + max_s
    sent = 0

    def client() -> None:
        nonlocal sent
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if sent >= requests_total:
                    return
                sent += 1
                name = next(names)
            path, params = ENDPOINTS[name]
            started = time.perf_counter()
            try:
                ok = session.get(f"{url}/monitor/api/{path}", params=params, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                results[name].append((elapsed, ok))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_s + 60)
    return results


def run(ctx: Context) -> Result:
    """Fill both stores, serve each with `python -m monitor`, load each; report per endpoint."""
    ticks, jobs, total, max_s = (600, 5, 40, 5.0) if ctx.quick else (86_400, 300, 2000, 30.0)
    influxd = ctx.influxd()
    sqlite_dir = ctx.scratch("api-sqlite")
    urls = {"SQLite": f"sqlite:///{sqlite_dir}/monitor.db", "InfluxDB": influxd.store_url("api")}
    stores: dict[str, Store] = {name: open_store(url) for name, url in urls.items()}  # as the monitor writes
    end_ns = time.time_ns()
    fill(stores, ticks, end_ns)
    events = {name: fill_jobs(store, jobs, end_ns / S) for name, store in stores.items()}
    for store in stores.values():
        store.close()
    if not ctx.quick:
        ctx.settle_influxd()  # a day of history lives in TSM files, not in the write cache
    monitors = {name: MonitorProcess(ctx.scratch(f"api-{name}"), store_url=url) for name, url in urls.items()}
    for monitor in monitors.values():
        monitor.start()
        ctx.on_close(monitor.stop)
    merged: dict[str, dict[str, list[Any]]] = {name: {e: [] for e in ENDPOINTS} for name in monitors}
    for half in range(2):
        for name in list(monitors) if half == 0 else list(monitors)[::-1]:
            for endpoint, samples in _load(monitors[name].url, total // 2, max_s / 2).items():
                merged[name][endpoint] += samples

    figures = []
    data: dict[str, Any] = {"ticks": ticks, "jobs": jobs, "events": events, "threads": THREADS, "per_store": {}}
    for name, by_endpoint in merged.items():
        count = sum(len(v) for v in by_endpoint.values())
        how = f"{THREADS} threads round-robin, {count} requests (at most {total} / {max_s:g} s), 24 h of 1 s samples"
        for endpoint, samples in by_endpoint.items():
            stats = summary([s for s, _ in samples], 1000)
            errors = sum(1 for _, ok in samples if not ok)
            data["per_store"].setdefault(name, {})[endpoint] = {"latency_ms": stats, "errors": errors}
            figures.append(info(f"API under load, {name}, {endpoint}: p50", stats["p50"], "ms", how))
            figures.append(
                info(f"API under load, {name}, {endpoint}: p99 ({errors} errors in {len(samples)})", stats["p99"], "ms",
                     how)
            )  # fmt: skip
    return Result(figures, data)
