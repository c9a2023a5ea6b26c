"""Queue mode: throughput with 1, 2 and 3 GPU workers, and the latency the queue adds to a job.

Full run (`python -m bench.run --only queue`, about 4-5 minutes here; or `python -m bench.queue_scale [--model
tiny] [--jobs N] [--repeats R]`): a real redis-server (AOF on), `python -m generator --queue` and N `python -m
generator worker` processes, each on one torch thread, a worker added for each N (Redis and the API stay up). For
each N, `repeats` bursts of `jobs` jobs (10 and 3 by default) are submitted at once and each is timed from its
first submission to its last job's end: jobs per minute per burst, their median and range, and the ratio of the
medians to one worker's with a 95% bootstrap interval. Every burst must end with exactly `jobs` succeeded.

The latency the queue adds is measured on jobs run one at a time on an otherwise idle system (8 a mode), queue
mode (one worker) against `python -m generator` in-process: the pickup delay (submission to the job's start, from
the jobs' own records) and submission to end, each as a median with quartiles, and the difference of the medians
of submission-to-end with its bootstrap interval.

The model is the micro pipeline the queue's tests use (the real pipeline code, one 4-channel UNet block: about
a second a job here), so the queue's share shows; `--model tiny` measures the tiny model (10-20 s a job on
these cores: a long run). The 2 CPU cores of this machine cap it: one worker keeps a core busy, so a second can
at best double the rate, and a third only adds contention with the API, Redis and the other two; the ratios
measure these cores, not the queue. On GPU hosts each worker has its own GPU.

Quick (`--quick`, the suite's smoke run): no model and no processes: jobs go through the real `CeleryQueue`
into Redis and are taken by a consumer in this process that claims and ends each in the job store, against the
in-process `JobBook` doing the same; it proves the harness and prices the queue's machinery alone.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import torch
from PIL import Image

from bench.harness import Context, Result, info
from bench.spread import describe, difference_of_medians, ratio_of_medians
from common.events import epoch_s
from generator.fleet.api_queue import CeleryQueue
from generator.fleet.broker import QUEUE_NAME
from generator.jobs import JobBook
from generator.pipeline import MICRO, random_pipeline, save_pipeline
from generator.validation import JobParams
from tests.faults.procs import ServiceProcess
from tests.servers import RedisServer, free_port, wait_for

WORKER_COUNTS = (1, 2, 3)
SEQUENTIAL_JOBS = 8
BURST_JOBS = 10
REPEATS = 3
JOB = {"prompt": "a red fox", "resolution": "256", "num_frames": "8", "steps": "10", "guidance_scale": "1", "fps": "8"}
ENV = {"OMP_NUM_THREADS": "1", "LOG_LEVEL": "WARNING"}
FINAL = ("succeeded", "failed", "cancelled")


class Generator(ServiceProcess):
    """`python -m generator [worker] ...` on a free port."""

    def __init__(self, root: Path, args: list[str], env: dict[str, str], name: str) -> None:
        """Pick a port; log under `root`."""
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        super().__init__("generator", [*args, "--port", str(self.port)], {**ENV, **env}, root / f"{name}.log", "/ready")

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"http://127.0.0.1:{self.port}"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _submit(url: str, image: bytes) -> str:
    response = requests.post(f"{url}/api/jobs", data=JOB, files={"image": ("i.png", image, "image/png")}, timeout=30)
    response.raise_for_status()
    return response.json()["job_id"]


def _wait_all(url: str, job_ids: list[str], deadline_s: float) -> list[dict[str, Any]]:
    def jobs() -> list[dict[str, Any]]:
        return [requests.get(f"{url}/api/jobs/{j}", timeout=10).json() for j in job_ids]

    wait_for(lambda: all(job["state"] in FINAL for job in jobs()), deadline_s, "the jobs to end", interval_s=0.25)
    return jobs()


def _one_at_a_time(url: str, image: bytes, count: int) -> dict[str, list[float]]:
    """Run `count` jobs one after another; return each one's pickup delay and submission-to-end time."""
    pickup, total = [], []
    for _ in range(count):
        (job,) = _wait_all(url, [_submit(url, image)], deadline_s=300)
        pickup.append(epoch_s(job["started_at"]) - epoch_s(job["submitted_at"]))
        total.append(epoch_s(job["finished_at"]) - epoch_s(job["submitted_at"]))
    return {"pickup_s": pickup, "total_s": total}


def _worker(root: Path, index: int, redis_url: str, model: str, outputs: str) -> Generator:
    args = ["worker", "--queue", redis_url, "--model", model, "--outputs", outputs]
    args += ["--state-dir", str(root / f"w{index}")]
    return Generator(root / f"w{index}", args, {"I2V_HOST_NAME": f"worker-{index}"}, f"w{index}")


def _burst(api: str, image: bytes, jobs: int) -> dict[str, Any]:
    """Submit `jobs` at once and time them from the first submission to the last end."""
    started = time.time()
    job_ids = [_submit(api, image) for _ in range(jobs)]
    done = _wait_all(api, job_ids, deadline_s=60 + jobs * 60)
    span_s = max(epoch_s(job["finished_at"]) for job in done) - started
    states = {s: sum(job["state"] == s for job in done) for s in FINAL}
    return {
        "span_s": round(span_s, 3),
        "jobs_per_min": round(len(done) * 60 / span_s, 3),
        "states": states,
        "exact": states["succeeded"] == jobs,
        "per_host": {h: sum(job["host"] == h for job in done) for h in sorted({job["host"] for job in done})},
    }


def run_full(ctx: Context, model: str, jobs: int = BURST_JOBS, repeats: int = REPEATS) -> Result:
    """Time the one-at-a-time latency of both modes, then `repeats` bursts on 1, 2 and 3 workers (one added each)."""
    image = _png()
    data: dict[str, Any] = {
        "model": model,
        "jobs_per_burst": jobs,
        "repeats": repeats,
        "cpu_cores": os.cpu_count(),
        "cap": f"{os.cpu_count()} CPU cores shared by the API, Redis and every worker (one torch thread each)",
        "bursts": {},
        "latency": {},
    }
    args = ["--model", model, "--outputs", str(ctx.scratch("out")), "--state-dir", str(ctx.scratch("state"))]
    inprocess = Generator(ctx.scratch("inprocess"), args, {}, "in-process")
    inprocess.start(deadline_s=300)
    try:
        data["latency"]["in-process"] = _one_at_a_time(inprocess.url, image, SEQUENTIAL_JOBS)
    finally:
        inprocess.stop()
    root = ctx.scratch("fleet")
    outputs = str(root / "outputs")
    redis = RedisServer(root / "redis").start()
    api_args = ["--queue", redis.url, "--outputs", outputs, "--state-dir", str(root / "api")]
    processes = [Generator(root / "api", api_args, {"GENERATOR_QUEUE_SIZE": str(jobs + 10)}, "api").start()]
    api = processes[0].url
    try:
        for workers in WORKER_COUNTS:
            processes.append(_worker(root, workers - 1, redis.url, model, outputs).start(deadline_s=300))
            wait_for(
                lambda n=workers: len(requests.get(f"{api}/health", timeout=10).json()["workers"]) == n,
                60,
                f"{workers} worker(s) to announce themselves",
            )
            if workers == 1:
                data["latency"]["queue"] = _one_at_a_time(api, image, SEQUENTIAL_JOBS)
            data["bursts"][workers] = [_burst(api, image, jobs) for _ in range(repeats)]
            ctx.log(f"  {workers} worker(s): {[b['jobs_per_min'] for b in data['bursts'][workers]]} jobs/min")
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()
    return _figures(data, how_latency=f"{SEQUENTIAL_JOBS} jobs one at a time a mode, idle system, jobs' own timestamps")


def _figures(data: dict[str, Any], how_latency: str) -> Result:
    figures = []
    bursts: dict[int, list[dict[str, Any]]] = data["bursts"]
    rates = {n: [b["jobs_per_min"] for b in runs] for n, runs in bursts.items()}
    data["throughput"] = {n: describe(r) for n, r in rates.items()}
    base = min(rates) if rates else None
    cap = f"; capped by {data.get('cpu_cores')} shared CPU cores, not by the queue"
    for workers in sorted(rates):
        how = (
            f"median of {len(rates[workers])} bursts of {data['jobs_per_burst']} jobs (range "
            f"{min(rates[workers]):.1f}-{max(rates[workers]):.1f}), first submission to last end{cap}"
        )
        figures.append(
            info(f"Queue throughput, {workers} worker(s)", statistics.median(rates[workers]), "jobs/min", how)
        )
        if base is not None and workers != base:
            ratio = ratio_of_medians(rates[workers], rates[base])
            data.setdefault("ratios", {})[workers] = ratio
            interval = f"95% bootstrap interval {ratio['ci95'][0]:.2f}-{ratio['ci95'][1]:.2f}"
            figures.append(
                info(f"Queue throughput ratio, {workers} workers / 1", ratio["ratio"], "x", f"{interval}{cap}")
            )
    latency = data["latency"]
    for mode in ("in-process", "queue"):
        if mode in latency:
            spread = {name: describe(values) for name, values in latency[mode].items()}
            latency[mode + "_spread"] = spread
            pickup = spread["pickup_s"]
            quartiles = f"{pickup['q1'] * 1000:.0f}-{pickup['q3'] * 1000:.0f} ms"
            how = f"{how_latency}; median of {pickup['n']} (quartiles {quartiles})"
            figures.append(info(f"Pickup delay (submission to start), {mode}", pickup["median"] * 1000, "ms", how))
    if {"in-process", "queue"} <= set(latency) and "total_s" in latency["queue"]:
        added = difference_of_medians(latency["queue"]["total_s"], latency["in-process"]["total_s"])
        latency["added_total_s"] = added
        low, high = (bound * 1000 for bound in added["ci95"])
        how = f"{how_latency}; difference of the medians, 95% bootstrap interval {low:.0f} to {high:.0f} ms"
        added_ms = added["difference"] * 1000
        figures.append(info("Latency the queue adds per job (submission to end)", added_ms, "ms", how))
    return Result(figures, data)


def run_quick(ctx: Context, jobs: int = 20) -> Result:
    """Price the queue's machinery alone: submit, deliver, claim and end jobs with no model, both modes."""
    params = JobParams(resolution=256, num_frames=8, steps=10, guidance_scale=1.0, fps=8)
    data: dict[str, Any] = {"model": None, "jobs_per_burst": jobs, "cpu_cores": os.cpu_count(), "bursts": {},
                            "latency": {}}  # fmt: skip
    redis = RedisServer(ctx.scratch("redis")).start()
    queue = CeleryQueue(redis.url, max_queued=jobs, visibility_timeout_s=3600)
    try:
        store, pickup = queue.store, []
        with queue.celery.connection_for_read() as connection:
            consumer = connection.SimpleQueue(QUEUE_NAME)
            for _ in range(jobs):
                job = queue.submit(uuid.uuid4().hex, "a fox", params, retry_after_s=1)
                message = consumer.get(timeout=10)
                claim = store.claim(message.payload[0][0], "bench", lease_s=30)
                message.ack()
                assert claim.job is not None
                pickup.append(claim.job.started_at - job.created_at)
                claim.job.state, claim.job.finished_at = "succeeded", time.time()
                store.finish(claim.job, claim.token or "")
            consumer.close()
        data["latency"]["queue"] = {"pickup_s": pickup}
    finally:
        queue.close()
        redis.stop()
    book = JobBook(ctx.scratch("book"), queue_size=jobs)
    inprocess_pickup = []
    for _ in range(jobs):
        job = book.submit(uuid.uuid4().hex, "a fox", params, retry_after_s=1)
        taken = book.take(timeout_s=5)
        assert taken is not None
        inprocess_pickup.append((taken.started_at or 0.0) - job.created_at)
        book.update(job, state="succeeded", finished_at=time.time())
    book.close()
    data["latency"]["in-process"] = {"pickup_s": inprocess_pickup}
    return _figures(data, how_latency="no model: submit, deliver, claim, end; medians")


def run(ctx: Context) -> Result:
    """Run the benchmark: quick (no model) or full (processes, micro model, 3 bursts of 10 jobs per worker count)."""
    if ctx.quick:
        return run_quick(ctx)
    return run_full(ctx, str(_micro_model(ctx)))


def _micro_model(ctx: Context) -> Path:
    folder = ctx.scratch("micro") / "pipeline"
    save_pipeline(random_pipeline(MICRO, torch.device("cpu"), torch.float32, folder.parent / "cache"), folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run the full benchmark alone; the default sizes write bench/results/queue.json through the runner."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="micro", help="micro (default), tiny, or a folder of saved weights")
    parser.add_argument("--jobs", type=int, default=BURST_JOBS, help=f"jobs per burst (default {BURST_JOBS})")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"bursts per worker count (default {REPEATS})")
    args = parser.parse_args(argv)
    # A SIGTERM (a timeout) unwinds like an error, so Redis and the generator processes are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    from bench.run import main as run_main  # the runner writes the JSON and the table the same way

    if args.model == "micro" and (args.jobs, args.repeats) == (BURST_JOBS, REPEATS):
        return run_main(["--only", "queue"])
    import json
    import tempfile

    from bench.harness import RESULTS, load_average

    ctx = Context(quick=False, work=Path(tempfile.mkdtemp(prefix="bench-")), out=RESULTS)
    before = load_average()
    model = str(_micro_model(ctx)) if args.model == "micro" else args.model
    result = run_full(ctx, model, args.jobs, args.repeats)
    ctx.close()
    path = RESULTS / f"queue_scale_{Path(args.model).name}_{args.jobs}x{args.repeats}.json"
    doc = {"benchmark": "queue", "quick": False, "load_average_before": before, **result.to_dict()}
    doc["load_average_after"] = load_average()
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
