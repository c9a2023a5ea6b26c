"""CSV export of 100,000 jobs (`jobs.csv`): rows/s and peak memory, on SQLite and a real influxd.

Runs the reports engineer's bench/bench_reports.py when it is there (it also times predictions); otherwise
measures the same export here: `job_summary` points written through the Store API,
`monitor.analysis.reports.write_report` to a byte-counting sink, and the peak of Python allocations (tracemalloc)
for all the jobs and for a tenth of them, which shows whether memory grows with the report.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from typing import Any

from bench import fixtures
from bench.harness import ROOT, Context, Result, at_least, info, run_script
from monitor.analysis.reports import write_report
from monitor.storage import Store, open_store

S = fixtures.S
TARGET_ROWS_PER_S = 50_000  # the reports issue's target


class _Sink(io.TextIOBase):
    """A text stream that counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def _export(store: Store, start_ns: int, end_ns: int, traced: bool) -> dict[str, Any]:
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    rows = write_report("jobs", store, _Sink(), start_ns, end_ns)
    seconds = time.perf_counter() - started
    peak = None
    if traced:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_python_bytes": peak}


def _measure_here(ctx: Context, jobs: int) -> dict[str, Any]:
    """The export measured without bench_reports.py: both stores, timed pass then traced passes."""
    influxd = ctx.influxd()
    urls = {"sqlite": f"sqlite:///{ctx.scratch('reports-sqlite')}/monitor.db", "influxdb": influxd.store_url("reports")}
    out: dict[str, Any] = {}
    end_ns = time.time_ns()
    start_ns = end_ns - 86_400 * S
    for name, url in urls.items():
        store = open_store(url)
        points = list(fixtures.summary_points(jobs, start_ns))
        for i in range(0, len(points), 5000):
            store.write(points[i : i + 5000])
        timed = _export(store, start_ns, end_ns, traced=False)
        if timed["rows"] != jobs:
            raise RuntimeError(f"{name}: the report has {timed['rows']} rows, expected {jobs}")
        tenth_start = points[len(points) - jobs // 10].time_ns
        out[name] = {
            "export": {
                **timed,
                "peak_python_bytes": _export(store, start_ns, end_ns, traced=True)["peak_python_bytes"],
                "peak_python_bytes_tenth_of_the_jobs": _export(store, tenth_start, end_ns, traced=True)[
                    "peak_python_bytes"
                ],
            }
        }
        store.close()
    return out


def run(ctx: Context) -> Result:
    """Export `jobs.csv` of 100,000 jobs (quick: 1,000) from each store."""
    jobs = 1000 if ctx.quick else 100_000
    source = "bench/bench_reports.py"
    data: dict[str, Any]
    if (ROOT / source).exists():
        out = ctx.scratch("reports") / "bench_reports.json"
        args = ["-m", "bench.bench_reports", "--jobs", str(jobs), "--out", str(out)]
        args += ["--train-jobs", "200"] if ctx.quick else []
        run_script(args, timeout_s=1800, log_path=out.with_suffix(".log"))
        data = json.loads(out.read_text())
    else:
        source = "bench/reports_export.py"
        data = _measure_here(ctx, jobs)
    figures = []
    for key, name in (("sqlite", "SQLite"), ("influxdb", "InfluxDB")):
        export = data.get(key, {}).get("export")
        if not export:
            continue
        jobs_text = f"{export['rows']:,} jobs" + (" (each with a quality point)" if "bench_reports" in source else "")
        how = f"{jobs_text} to a counting sink, one run ({source})"
        figures.append(at_least(f"jobs.csv export from {name}", export["rows_per_s"], TARGET_ROWS_PER_S, "rows/s", how))
        full, tenth = export["peak_python_bytes"], export["peak_python_bytes_tenth_of_the_jobs"]
        figures.append(
            info(f"jobs.csv export from {name}: peak Python memory (a tenth of the jobs: {tenth / 2**20:.1f} MiB)",
                 full / 2**20, "MiB",
                 "tracemalloc peak during the export, against the same for a tenth of the jobs (equal: constant)")
        )  # fmt: skip
    return Result(figures, {"source": source, **data})
