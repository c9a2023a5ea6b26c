"""Run the benchmarks: `make bench` (or `python -m bench.run [--quick] [--only NAME ...] [--out DIR]`).

Each benchmark measures on this machine, writes `<out>/<name>.json` (figures, targets, raw samples, the machine
and its load average before and after), and the runner rebuilds `<out>/README.md`: one table of every figure
found in the folder's benchmark files, plus the H100 figures from `bench/results/h100_*.json`.

`--quick` runs every benchmark at a tiny size (seconds each) to prove the harness works; its figures mean
nothing and its files say so. Benchmarks, in the issue's order:

- overhead: generation time with and without `python -m monitor` (2 s and 0.5 s), interleaved, as a ratio
- sampler:  a sampler tick's CPU time (p50/p99), and the monitor's CPU share at 0.5, 1 and 2 s
- ingest:   events/s and latency through POST /monitor/api/events into SQLite and a real influxd
- store:    points/s written in batches; the dashboard's 24 h window query, p50/p99, both stores
- quality:  scoring one 16-frame 512x512 clip on the CPU
- reports:  jobs.csv of 100,000 jobs: rows/s and peak memory
- api:      the dashboard's API under load from a loopback client: p50/p99 and errors per endpoint
- predict:  /monitor/api/predict p50/p99 with 5,000 jobs stored: idle, while jobs end, while the store is re-read
- jobs:     the dashboard's jobs list at 300 jobs a day, one request at a time, beside a window of samples
- queue:    queue mode's throughput with 1, 2 and 3 worker processes, and the latency the queue adds per job
- listing:  the generator's GET /api/jobs?limit=50 with 100,000 jobs stored: p50 and spread
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, Context, Result, load_average, machine
from bench.table import write_readme

BENCHMARKS: dict[str, str] = {
    "overhead": "bench.overhead",
    "sampler": "bench.sampler_cost",
    "ingest": "bench.ingest_rate",
    "store": "bench.store_speed",
    "quality": "bench.quality_cost",
    "reports": "bench.reports_export",
    "api": "bench.api_load",
    "predict": "bench.predict_latency",
    "jobs": "bench.jobs_list",
    "queue": "bench.queue_scale",
    "listing": "bench.jobs_listing",
}


def run_one(name: str, ctx: Context) -> dict[str, Any]:
    """Run one benchmark and return its JSON document (an `error` entry instead of figures when it failed)."""
    module = importlib.import_module(BENCHMARKS[name])
    doc: dict[str, Any] = {
        "benchmark": name,
        "quick": ctx.quick,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_average_before": load_average(),
    }
    started = time.monotonic()
    try:
        result: Result = module.run(ctx)
        doc.update(result.to_dict())
    except Exception as e:  # noqa: BLE001  (one benchmark's failure is reported in its file; the others still run)
        doc.update(figures=[], error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    doc["duration_s"] = round(time.monotonic() - started, 1)
    doc["load_average_after"] = load_average()
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, write their JSON files and the Markdown table; 1 if any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: prove the harness, measure nothing")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run this one (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    args = parser.parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    failed = []
    try:
        for name in names:
            ctx = Context(quick=args.quick, work=work, out=args.out)
            ctx.log(f"bench: {name} ({'quick' if args.quick else 'full'}), load average {load_average()}")
            doc = run_one(name, ctx)
            ctx.close()
            (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
            if "error" in doc:
                failed.append(name)
                ctx.log(f"bench: {name} FAILED: {doc['error']}\n{doc['traceback']}")
            else:
                for figure in doc["figures"]:
                    verdict = {True: "met", False: "MISSED", None: ""}[figure["met"]]
                    ctx.log(f"  {figure['figure']}: {figure['value']} {figure['unit']} {verdict}")
        write_readme(args.out, list(BENCHMARKS))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench: wrote {len(names)} result file(s) and README.md to {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
