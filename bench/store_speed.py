"""Store throughput and the dashboard's window query, for SQLite and a real influxd, through the Store API.

- Writes: 24 h of 1 s samples (one GPU + the host: 86,400 points per series, 172,800 in all; the sampler's own
  point conversion) in batches of 5,000, alternating stores batch by batch; points/s is the median over batches.
  For InfluxDB the share spent turning points into line protocol in this process is timed apart.
- Both stores are opened as the monitor opens them (`open_store`: with the 12 s and 288 s rollups of
  monitor/storage/rollup.py, written with the points, so their cost is in the write figures).
- Window query: what the live tab asks for a 24 h window (`GET /monitor/api/series` with the dashboard's fields:
  5 GPU fields for one host and GPU, 3 host fields for one host, 288 s buckets: about 300 per series), and the
  1 h window (12 s buckets), repeated and interleaved between stores; p50 and p99.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from bench import fixtures
from bench.harness import Context, Result, at_least, at_most, info, summary
from monitor.storage import Store, open_store
from monitor.storage.base import clean_point
from monitor.storage.influx import InfluxStore, to_line
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE
from monitor.web.api import MAX_BUCKETS

S = fixtures.S
BATCH = 5000
TARGET_INFLUX_POINTS_PER_S = 100_000
TARGET_QUERY_P99_MS = 50.0
# monitor/web/static/dashboard.js: GPU_FIELDS, and the host chart's fields
DASHBOARD_FIELDS = {
    GPU_SAMPLE: ["utilization_ratio", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w"],
    HOST_SAMPLE: ["cpu_ratio", "memory_used_bytes", "memory_total_bytes"],
}


def dashboard_query(store: Store, measurement: str, window_s: int, end_ns: int) -> list:
    """Run the store query `GET /monitor/api/series` runs for the live tab's chart of `measurement`."""
    tags = {"host": fixtures.HOST, "gpu": "0"} if measurement == GPU_SAMPLE else {"host": fixtures.HOST}
    bucket_s = max(1, math.ceil(window_s / MAX_BUCKETS))
    start_ns = end_ns - window_s * S
    return store.query_window(
        measurement, DASHBOARD_FIELDS[measurement], start_ns, end_ns, tags=tags, bucket_s=bucket_s
    )


def fill(stores: dict[str, Store], ticks: int, end_ns: int) -> dict[str, dict[str, list[float]]]:
    """Write `ticks` seconds of samples ending at `end_ns` into every store, batch by batch in turn."""
    points = list(fixtures.sample_points(end_ns - ticks * S, ticks))
    timings: dict[str, dict[str, list[float]]] = {name: {"write_s": [], "serialize_s": []} for name in stores}
    for i in range(0, len(points), BATCH):
        batch = points[i : i + BATCH]
        names = list(stores) if (i // BATCH) % 2 == 0 else list(stores)[::-1]
        for name in names:
            store = stores[name]
            started = time.perf_counter()
            store.write(batch)
            timings[name]["write_s"].append(time.perf_counter() - started)
            if isinstance(getattr(store, "inner", store), InfluxStore):  # the client's share, timed apart
                started = time.perf_counter()
                body = ("\n".join(to_line(p) for p in map(clean_point, batch) if p is not None) + "\n").encode()
                timings[name]["serialize_s"].append(time.perf_counter() - started)
                timings[name].setdefault("bytes", []).append(len(body))
    return timings


def run(ctx: Context) -> Result:
    """Measure write throughput and the window query on both stores."""
    ticks, repeats = (600, 3) if ctx.quick else (86_400, 60)
    influxd = ctx.influxd()
    stores: dict[str, Store] = {  # as the monitor opens them: with their rollups (monitor/storage/rollup.py)
        "SQLite": open_store(f"sqlite:///{ctx.scratch('store-sqlite')}/monitor.db"),
        "InfluxDB": open_store(influxd.store_url("bench")),
    }
    for store in stores.values():
        ctx.on_close(store.close)
    end_ns = time.time_ns()
    stores["InfluxDB"].write(list(fixtures.sample_points(end_ns - 86_500 * S, 1)))  # CREATE DATABASE, not timed
    timings = fill(stores, ticks, end_ns)
    if not ctx.quick:
        ctx.settle_influxd()  # a day of history lives in TSM files, not in the write cache

    figures = []
    data: dict[str, Any] = {"ticks": ticks, "points": 2 * ticks, "batch": BATCH, "repeats": repeats}
    how_write = f"{2 * ticks:,} points (1 s samples: 1 GPU + host) in batches of {BATCH:,}, median over batches"
    for name, t in timings.items():
        rates = [min(BATCH, 2 * ticks) / s for s in t["write_s"]]
        rate = statistics.median(rates)
        entry: dict[str, Any] = {"points_per_s_median": rate, "batch_write_s": t["write_s"]}
        if name == "InfluxDB":
            figures.append(at_least("InfluxDB write throughput", rate, TARGET_INFLUX_POINTS_PER_S, "points/s",
                                    how_write + " (serialising included)"))  # fmt: skip
            serialize = statistics.median(t["serialize_s"])
            server = statistics.median(w - s for w, s in zip(t["write_s"], t["serialize_s"], strict=True))
            entry |= {
                "serialize_points_per_s": BATCH / serialize,
                "http_and_server_points_per_s": BATCH / server,
                "bytes_per_point": statistics.median(t["bytes"]) / BATCH,
            }
            how = (
                "write time minus this process's line-protocol time (cleaning + serialising), same batches: "
                "the rollups, HTTP and influxd"
            )
            figures.append(info("InfluxDB write, line protocol excluded", BATCH / server, "points/s", how))
            figures.append(
                info("InfluxDB write: line protocol alone (clean + serialise, this process)", BATCH / serialize,
                     "points/s", "the same batches, timed apart")
            )  # fmt: skip
        else:
            figures.append(info("SQLite write throughput", rate, "points/s", how_write))
        data[name] = entry

    # The queries, interleaved: every repeat asks each store each question once.
    questions = [(m, w) for w in (86_400, 3600) for m in (GPU_SAMPLE, HOST_SAMPLE)]
    latencies: dict[tuple[str, str, int], list[float]] = {(n, m, w): [] for n in stores for m, w in questions}
    rows: dict[tuple[str, str, int], int] = {}
    for name in stores:  # the first call fills caches (field types): not a dashboard refresh's cost
        for m, w in questions:
            rows[(name, m, w)] = len(dashboard_query(stores[name], m, w, end_ns))
    for r in range(repeats):
        for name in list(stores) if r % 2 == 0 else list(stores)[::-1]:
            for m, w in questions:
                started = time.perf_counter()
                dashboard_query(stores[name], m, w, end_ns)
                latencies[(name, m, w)].append(time.perf_counter() - started)
    for (name, m, w), values in latencies.items():
        stats = summary(values, 1000)
        query = {"store": name, "measurement": m, "window_s": w, "rows": rows[(name, m, w)], "latency_ms": stats}
        data.setdefault("queries", []).append(query)
        label = f"{name} window query, {m} {'24 h' if w == 86_400 else '1 h'}"
        how = (
            f"{len(DASHBOARD_FIELDS[m])} fields, {math.ceil(w / MAX_BUCKETS)} s buckets ({rows[(name, m, w)]} rows), "
            f"over {ticks:,} 1 s samples per series; {repeats} runs interleaved between stores"
        )
        if w == 86_400:
            figures.append(info(f"{label}, p50", stats["p50"], "ms", how))
            figures.append(at_most(f"{label}, p99", stats["p99"], TARGET_QUERY_P99_MS, "ms", how))
        else:
            figures.append(info(f"{label}, p50 / p99 {stats['p99']:.3g} ms", stats["p50"], "ms", how))
    return Result(figures, data)
