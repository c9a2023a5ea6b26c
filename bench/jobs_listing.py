"""The generator's job listing with 100,000 jobs stored: `GET /api/jobs?limit=50` p50 and spread.

The job database is filled with 100,000 finished jobs (prompts of 60-300 characters, every stage's time, a
degradation note on some) and three queued ones, then the real generator app opens it as after a restart and
is served by waitress on a loopback port (no model loaded: listing never touches a worker). One client sends
the listing sequentially, after a warm-up: the newest 50 of all jobs, and the newest 50 succeeded. Also timed:
filling the database and the app's start on it (reading only the active jobs).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from waitress.server import create_server

from bench.harness import Context, Result, at_most, free_port, info, quantile, summary
from generator.app import Runtime, create_app
from generator.config import GeneratorConfig
from generator.jobs import Job, JobBook
from generator.validation import JobParams

TARGET_P50_MS = 20.0
STAGES = ("text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export")
PARAMS = JobParams(resolution=512, num_frames=16, steps=50, guidance_scale=9.0, fps=8, seed=None)
SMALLER = JobParams(resolution=512, num_frames=8, steps=50, guidance_scale=9.0, fps=8, seed=None)
WORDS = (
    "a", "red", "fox", "running", "through", "fresh", "snow", "at", "dawn", "under", "a", "pale", "sky", "with",
    "soft", "light", "and", "long", "shadows",
)  # fmt: skip


def finished_job(i: int, start_s: float) -> Job:
    """Return finished job `i` of a day's run starting at `start_s`, as the generator stores one."""
    created = start_s + i * 0.8
    state = ("succeeded", "succeeded", "succeeded", "failed", "cancelled")[i % 5]
    degraded = i % 7 == 0
    return Job(
        job_id=f"{i:032x}",
        prompt=" ".join(WORDS[(i + k) % len(WORDS)] for k in range(10 + i % 40)),
        requested=PARAMS,
        effective=SMALLER if degraded else PARAMS,
        state=state,
        created_at=created,
        started_at=created + 0.1,
        finished_at=created + 17.0,
        step=50,
        total_steps=50,
        stage_durations_s={**{s: 0.1 + (i % 13) / 100 for s in STAGES}, "denoising_step_mean": 0.24},
        notes=["degraded 512p/16 frames to 512p/8 frames: 9.1 GB estimated, 8.0 GB free"] if degraded else [],
        error=None if state == "succeeded" else "cancelled while running",
        video_path=f"/srv/outputs/{i:032x}/video.mp4" if state == "succeeded" else None,
        peak_memory_bytes=7_900_000_000,
        gpu="0",
    )


def fill(state_dir: Any, jobs: int) -> float:
    """Store `jobs` finished jobs and three queued ones; return the seconds it took."""
    started = time.perf_counter()
    book = JobBook(state_dir, queue_size=8)
    start_s = time.time() - jobs * 0.8 - 60
    for first in range(0, jobs, 10_000):
        book.store_finished(finished_job(i, start_s) for i in range(first, min(first + 10_000, jobs)))
    for k in range(3):
        book.submit(f"queued{k:026d}", "waiting for a worker", PARAMS, retry_after_s=1)
    book.close()
    return time.perf_counter() - started


def timed_gets(session: requests.Session, url: str, count: int) -> list[float]:
    """GET `url` `count` times; return each request's seconds (a non-200 answer stops the benchmark)."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.get(url, timeout=30)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return seconds


def _hang_up(session: requests.Session, server: Any) -> None:
    """Close the client's connection and let waitress finish with it, so that closing the server races nothing."""
    session.close()
    deadline = time.monotonic() + 5
    while server.active_channels and time.monotonic() < deadline:
        time.sleep(0.01)


def spread(samples_s: list[float]) -> dict[str, Any]:
    """Return p10, p50, p90, p99, max and the interquartile range, in milliseconds."""
    ms = [s * 1000 for s in samples_s]
    quartiles = (quantile(ms, 0.25), quantile(ms, 0.75))
    return {
        **summary(ms),
        "p10": quantile(ms, 0.10),
        "p90": quantile(ms, 0.90),
        "iqr": quartiles[1] - quartiles[0] if None not in quartiles else None,  # type: ignore[operator]
    }


def run(ctx: Context) -> Result:
    """Fill the job database, serve the app on it, time the listings."""
    jobs, requests_each, warmup = (2_000, 20, 5) if ctx.quick else (100_000, 400, 40)
    work = ctx.scratch("jobs-listing")
    fill_s = fill(work / "state", jobs)
    # No device: the listing needs no worker, and loading a model would only load the cores being measured.
    config = GeneratorConfig(port=free_port(), outputs=work / "outputs", state_dir=work / "state", retention_days=0)
    started = time.perf_counter()
    app = create_app(config, runtime_factory=lambda c: Runtime(c, devices=[]))
    start_s = time.perf_counter() - started
    runtime: Runtime = app.extensions["generator"]
    runtime.retention.sweep()  # the start's own sweep (it measures every job once) is over before timing
    server = create_server(app, host="127.0.0.1", port=config.port, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    session = requests.Session()
    ctx.on_close(runtime.close)
    ctx.on_close(server.close)
    ctx.on_close(lambda: _hang_up(session, server))
    base = f"http://127.0.0.1:{config.port}/api/jobs"
    listings = {"all": f"{base}?limit=50", "succeeded": f"{base}?state=succeeded&limit=50"}
    samples: dict[str, list[float]] = {name: [] for name in listings}
    cpu_s = dict.fromkeys(listings, 0.0)
    for url in listings.values():
        timed_gets(session, url, warmup)
    for _ in range(2):  # interleaved halves, so a burst from a neighbour lands on both
        for name, url in listings.items():
            started_cpu = time.process_time()
            samples[name] += timed_gets(session, url, requests_each // 2)
            cpu_s[name] += time.process_time() - started_cpu
    first = session.get(listings["all"], timeout=30).json()["jobs"]
    if len(first) != 50 or first[0]["state"] != "queued":
        raise RuntimeError(f"the listing is not the newest 50 jobs: {len(first)} jobs, first {first[:1]}")

    stats = {name: spread(values) for name, values in samples.items()}
    how = (
        f"{jobs:,} finished jobs + 3 queued in the generator's SQLite, the real app under waitress on loopback, "
        f"one client, {requests_each} sequential requests after {warmup} warm-up, two interleaved halves"
    )
    all_ms, succeeded_ms = stats["all"], stats["succeeded"]
    figures = [
        at_most(
            f"Generator GET /api/jobs?limit=50, {jobs:,} jobs stored: p50",
            all_ms["p50"],
            TARGET_P50_MS,
            "ms",
            f"{how}; p10-p90 {all_ms['p10']:.1f}-{all_ms['p90']:.1f} ms, IQR {all_ms['iqr']:.2f} ms",
        ),
        info(f"Generator GET /api/jobs?limit=50, {jobs:,} jobs stored: p99", all_ms["p99"], "ms", how),
        info(
            f"Generator GET /api/jobs?state=succeeded&limit=50, {jobs:,} jobs stored: p50",
            succeeded_ms["p50"],
            "ms",
            f"{how}; p10-p90 {succeeded_ms['p10']:.1f}-{succeeded_ms['p90']:.1f} ms",
        ),
        info(
            f"Generator GET /api/jobs?limit=50, {jobs:,} jobs stored: CPU per request",
            cpu_s["all"] / requests_each * 1000,
            "ms",
            "process CPU time (server threads and the client together, one process) / requests: a figure the "
            "neighbours on a shared machine move far less than wall time",
        ),
        info(f"Generator start on {jobs:,} stored jobs (app built, jobs reopened)", start_s * 1000, "ms", how),
    ]
    data = {
        "jobs": jobs,
        "fill_s": fill_s,
        "start_s": start_s,
        "latency_ms": stats,
        "cpu_ms_per_request": {name: seconds / requests_each * 1000 for name, seconds in cpu_s.items()},
        "samples_ms": {name: [round(s * 1000, 3) for s in values] for name, values in samples.items()},
    }
    return Result(figures, data)
