"""Event ingest through the real endpoint: events/s and latency into SQLite and a real influxd.

One real `python -m monitor` per store, both running throughout. A loopback client sends a generator's job
events (queued, running, every stage and denoising step, succeeded) in batches of 200, one request at a time as
the generator's sender does, to each monitor in turn (rounds alternate the order). Per burst:

- acknowledged: events / time until the last 200 (the monitor answers once the events are fsync'd to its spool);
- stored: events / time until the monitor's writer has delivered them all to the store (spool and buffer empty);
- request latency p50/p99 (one batch of 200);
- events per CPU second of the monitor process (what a shared machine's neighbours do not change).

Medians over the rounds; the store's own count is checked at the end.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from typing import Any

import psutil
import requests

from bench import fixtures
from bench.harness import Context, MonitorProcess, Result, at_least, info, summary

TARGET_EVENTS_PER_S = 5000
BATCH = 200  # generator/events.py's BATCH_SIZE


def _cpu_s(monitor: MonitorProcess) -> float:
    assert monitor.process is not None
    times = psutil.Process(monitor.process.pid).cpu_times()
    return times.user + times.system


def _burst(monitor: MonitorProcess, events: list[dict[str, Any]]) -> dict[str, Any]:
    session = requests.Session()
    latencies = []
    before = monitor.status()["writer"]["points_written_total"]
    cpu_before = _cpu_s(monitor)
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        sent = time.perf_counter()
        response = session.post(f"{monitor.url}/monitor/api/events", json={"events": events[i : i + BATCH]}, timeout=60)
        latencies.append(time.perf_counter() - sent)
        if response.status_code != 200 or response.json()["accepted"] != len(events[i : i + BATCH]):
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:300]}")
    acked = time.perf_counter() - started
    deadline = time.monotonic() + 300
    while True:
        writer = monitor.status()["writer"]
        drained = writer["spool_pending_points"] == 0 and writer["buffer_points"] == 0
        if drained and writer["points_written_total"] - before >= len(events):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the writer did not deliver the events within 300 s: {writer}")
        time.sleep(0.02)
    stored = time.perf_counter() - started
    cpu = _cpu_s(monitor) - cpu_before
    return {
        "monitor_cpu_s": cpu,
        "stored_per_monitor_cpu_s": len(events) / cpu,
        "events": len(events),
        "acked_s": acked,
        "stored_s": stored,
        "acked_per_s": len(events) / acked,
        "stored_per_s": len(events) / stored,
        "latency_s": latencies,
    }


def _count_sqlite(path: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM points WHERE measurement = 'job_event'").fetchone()[0]


def run(ctx: Context) -> Result:
    """Measure ingest into each store."""
    per_burst, rounds = (400, 1) if ctx.quick else (10_000, 4)
    influxd = ctx.influxd()
    sqlite_dir = ctx.scratch("ingest-sqlite")
    monitors = {
        "SQLite": MonitorProcess(sqlite_dir, store_url=f"sqlite:///{sqlite_dir}/monitor.db"),
        "InfluxDB": MonitorProcess(ctx.scratch("ingest-influx"), store_url=influxd.store_url("ingest")),
    }
    for monitor in monitors.values():
        monitor.start()
        ctx.on_close(monitor.stop)
    bursts: dict[str, list[dict[str, Any]]] = {name: [] for name in monitors}
    start_s = time.time() - 3600
    names = list(monitors)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            events = fixtures.event_stream(per_burst, start_s)
            start_s += per_burst
            bursts[name].append(_burst(monitors[name], events))
    counts = {
        "SQLite": _count_sqlite(f"{sqlite_dir}/monitor.db"),
        "InfluxDB": influxd.query('SELECT count("event_id") FROM "job_event"', "ingest")["results"][0]["series"][0][
            "values"
        ][0][1],
    }
    expected = per_burst * rounds
    for name, count in counts.items():
        if count != expected:
            raise RuntimeError(f"{name} holds {count} job_event points, expected {expected}")

    figures = []
    data: dict[str, Any] = {"per_burst": per_burst, "rounds": rounds, "batch": BATCH, "stored_counts": counts}
    for name, runs in bursts.items():
        latencies = [x for run in runs for x in run.pop("latency_s")]
        stored = statistics.median(run["stored_per_s"] for run in runs)
        acked = statistics.median(run["acked_per_s"] for run in runs)
        per_cpu = statistics.median(run["stored_per_monitor_cpu_s"] for run in runs)
        lat = summary(latencies, 1000)
        how = f"{per_burst:,} events per burst in batches of {BATCH}, one client, median of {rounds} interleaved bursts"
        figures += [
            at_least(f"Ingest into {name}: events/s stored (POST to delivered)", stored, TARGET_EVENTS_PER_S,
                     "events/s", how),
            info(f"Ingest into {name}: events/s acknowledged (on disk in the spool)", acked, "events/s", how),
            info(f"Ingest into {name}: events per CPU second of the monitor process (stored)", per_cpu, "events/s",
                 "the same bursts: events / the monitor's user + system CPU time (psutil), a figure the neighbours "
                 "on a shared machine do not move"),
            info(f"Ingest into {name}: request latency p50, batch of {BATCH}", lat["p50"], "ms", how),
            info(f"Ingest into {name}: request latency p99, batch of {BATCH}", lat["p99"], "ms", how),
        ]  # fmt: skip
        data[name] = {"bursts": runs, "latency_ms": lat}
    return Result(figures, data)
