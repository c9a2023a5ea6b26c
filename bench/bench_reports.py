"""Time predictions and CSV exports on SQLite and a real influxd (started here, as tests/servers.py does).

    .venv/bin/python -m bench.bench_reports                 # 100,000 jobs on each store
    .venv/bin/python -m bench.bench_reports --jobs 20000 --stores sqlite

Measures, per store:
- predict: a refit over `--train-jobs` succeeded jobs (reading the store), `Predictor.predict` in process, and
  `GET /monitor/api/predict` through the app (which also reads the GPU's latest sample from the store);
- export: `jobs.csv` of `--jobs` jobs (each with one quality point) to a byte-counting sink: rows per second
  (target >= 50,000; also per CPU second of this process and the store's server together, since a shared
  machine's wall clock says as much about the neighbours as about the code) and, in a second pass under
  tracemalloc, the peak of Python allocations; the same at a tenth of the jobs shows that the memory does not
  grow with the report.

Prints one JSON object (and writes it with `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from monitor.analysis.job_summary import JOB_SUMMARY
from monitor.analysis.predict import JobShape, Predictor
from monitor.analysis.reports import JOB_COLUMNS, csv_chunks, job_rows
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Point, Store, open_store
from monitor.storage.schema import GPU_SAMPLE, conform
from monitor.web.context import get_context
from tests.servers import InfluxServer

S = 1_000_000_000
TARGET_ROWS_PER_S = 50_000
PROMPTS = [
    "a red fox running through fresh snow at sunrise, cinematic",
    '=HYPERLINK("http://example.com") a "quoted" prompt, with a comma',
    "ünïcödé 🎬 a paper boat drifting down a rainy street",
    "-a drone shot over a foggy forest\nsecond line",
]
SHAPES = [(r, f, s) for r in (256, 512, 768, 1024) for f in (8, 16, 24, 32) for s in (10, 25, 50, 80)]


def summary_points(n: int, end_ns: int, seed: int = 1) -> tuple[list[Point], list[Point]]:
    """Return `n` job_summary points (one job every 0.5 s up to `end_ns`) and one quality point per job."""
    rng = random.Random(seed)
    jobs, quality = [], []
    start_ns = end_ns - n * S // 2 - 60 * S
    for i in range(n):
        resolution, frames, steps = rng.choice(SHAPES)
        x = resolution**2 * frames / 1e6
        run_s = 0.6 + 0.05 * x + steps * (0.015 + 0.055 * x)
        end = start_ns + i * S // 2
        status = "succeeded" if i % 20 else "failed"
        fields: dict[str, Any] = {
            "job_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "submitted_at_us": (end - int((run_s + 1) * S)) // 1000,
            "started_at_us": (end - int(run_s * S)) // 1000,
            "queued_s": 1.0,
            "run_s": round(run_s, 6),
            "total_s": round(run_s + 1, 6),
            "resolution": resolution,
            "num_frames": frames,
            "steps": steps,
            "guidance_scale": 9.0,
            "fps": 8,
            "requested_resolution": resolution,
            "requested_num_frames": frames,
            "requested_steps": steps,
            "requested_guidance_scale": 9.0,
            "requested_fps": 8,
            "text_encoding_s": 0.03,
            "image_encoding_s": 0.02,
            "image_latents_s": 0.06,
            "denoising_s": round(steps * (0.015 + 0.055 * x), 6),
            "decode_video_s": 0.37,
            "export_s": 0.2,
            "denoising_steps": steps,
            "mean_step_s": round(0.015 + 0.055 * x, 6),
            "peak_memory_bytes": int(5.04e9 + 0.6e9 * x),
            "prompt": PROMPTS[i % len(PROMPTS)],
            "error": None if status == "succeeded" else "=CUDA out of memory. Tried to allocate 2.00 GiB",
            "video_path": f"/outputs/{i}/video.mp4" if status == "succeeded" else None,
            "complete": True,
        }
        tags = {"host": "node-a", "gpu": str(i % 2), "status": status}
        jobs.append(conform(Point(JOB_SUMMARY, tags, fields, end)))
        scores = {"job_id": fields["job_id"], "clip_score": 30.0 + i % 7, "combined": 0.7, "low_quality": False}
        quality.append(Point("quality", {"host": "node-a", "gpu": str(i % 2)}, scores, end + 5 * S))
    return jobs, quality


def write_all(store: Store, points: list[Point], batch: int = 5000) -> float:
    """Write in batches; return the seconds taken."""
    started = time.perf_counter()
    for i in range(0, len(points), batch):
        store.write(points[i : i + batch])
    return time.perf_counter() - started


def export(store: Store, start_ns: int, end_ns: int) -> tuple[int, int, float, float]:
    """Export jobs.csv to a counting sink; return (rows, bytes, wall seconds, this process's CPU seconds)."""
    rows = 0

    def counted() -> Any:
        nonlocal rows
        for row in job_rows(store, start_ns, end_ns):
            rows += 1
            yield row

    size = 0
    started, cpu = time.perf_counter(), time.process_time()
    for chunk in csv_chunks(JOB_COLUMNS, counted()):
        size += len(chunk.encode("utf-8"))
    return rows, size, time.perf_counter() - started, time.process_time() - cpu


def export_peak_bytes(store: Store, start_ns: int, end_ns: int) -> int:
    """Return the peak of Python allocations during one export (tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    export(store, start_ns, end_ns)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def percentiles_us(samples: list[float]) -> dict[str, float]:
    """Return the median and p99 in microseconds."""
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
    }


def bench_store(
    kind: str, url: str, jobs: int, train_jobs: int, tmp: Path, server_pid: int | None = None
) -> dict[str, Any]:
    """Run every measurement on one store (`server_pid`: the store's server, whose CPU time is counted too)."""
    store = open_store(url)
    end_ns = time.time_ns()
    points, quality = summary_points(jobs, end_ns)
    result: dict[str, Any] = {"jobs": jobs}
    result["write_s"] = round(write_all(store, points) + write_all(store, quality), 2)
    store.write(
        [
            Point(
                GPU_SAMPLE,
                {"host": "node-a", "gpu": g},
                {
                    "memory_used_bytes": 2 * 10**10,
                    "memory_total_bytes": 8 * 10**10,
                    "name": "NVIDIA H100 80GB HBM3",
                    "up": True,
                },
                end_ns - S,
            )
            for g in ("0", "1")
        ]
    )

    predictor = Predictor(store, max_jobs=train_jobs)
    started = time.perf_counter()
    predictor.start()  # reads the store and fits, in this thread
    result["refit_s"] = round(time.perf_counter() - started, 3)
    result["refit_jobs"] = sum(m["jobs"] for m in predictor.status()["models"].values())
    shape = JobShape(512, 16, 50)
    calls = []
    for _ in range(5000):
        t = time.perf_counter()
        predictor.predict(shape, "NVIDIA H100 80GB HBM3")
        calls.append(time.perf_counter() - t)
    result["predict_in_process"] = percentiles_us(calls)

    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp / f"spool-{kind}", data_dir=tmp)
    app = create_app(config, store=store)
    client = app.test_client()
    query = "/monitor/api/predict?resolution=512&frames=16&steps=50&gpu=0&host=node-a"
    assert client.get(query).status_code == 200  # the app fitted before serving
    calls = []
    for _ in range(300):
        t = time.perf_counter()
        response = client.get(query)
        calls.append(time.perf_counter() - t)
        assert response.status_code == 200
    result["predict_http"] = percentiles_us(calls)
    get_context(app).writer.close()

    start_ns = end_ns - jobs * S
    server = psutil.Process(server_pid) if server_pid else None
    server_cpu = sum(server.cpu_times()[:2]) if server else 0.0
    rows, size, seconds, cpu = export(store, start_ns, end_ns + S)
    server_cpu = sum(server.cpu_times()[:2]) - server_cpu if server else 0.0
    assert rows == jobs, (rows, jobs)
    result["export"] = {
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "cpu_s": round(cpu, 2),
        "server_cpu_s": round(server_cpu, 2),
        "rows_per_cpu_s": round(rows / (cpu + server_cpu)),
        "meets_target": rows / seconds >= TARGET_ROWS_PER_S,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    tenth_start = end_ns - 60 * S - (jobs // 10) * S // 2
    result["export"]["peak_python_bytes"] = export_peak_bytes(store, start_ns, end_ns + S)
    result["export"]["peak_python_bytes_tenth_of_the_jobs"] = export_peak_bytes(store, tenth_start, end_ns + S)
    store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print (and optionally write) the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--train-jobs", type=int, default=5000)
    parser.add_argument("--stores", default="sqlite,influxdb")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"target_rows_per_s": TARGET_ROWS_PER_S}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for kind in args.stores.split(","):
            if kind == "sqlite":
                results["sqlite"] = bench_store(kind, f"sqlite:///{tmp}/bench.db", args.jobs, args.train_jobs, tmp)
            else:
                server = InfluxServer(tmp / "influxd")
                server.start()
                try:
                    url = server.store_url("bench")
                    pid = server.process.pid if server.process else None
                    results["influxdb"] = bench_store(kind, url, args.jobs, args.train_jobs, tmp, pid)
                finally:
                    server.stop()
            print(json.dumps({kind: results[kind]}), file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
