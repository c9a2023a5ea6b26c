"""Prove the monitor beside the generator on a GPU: samples, attribution, sampler cost, and overhead as a ratio.

Run on a machine with an NVIDIA GPU (the lent H100):
    python bench/monitor_gpu.py --out results.json [--rounds 2]
It starts `python -m generator --model full` once, then runs 512x512, 16-frame, 50-step jobs in interleaved
phases: without a monitor, with `python -m monitor` sampling every 2 s, and every 0.5 s (order rotated each round).
Each monitored phase reads back what the monitor stored and serves: GPU and host series, the generator's per-process
memory (attributed by the PID the generator's /health reports), the job's stage breakdown, and the sampler's cost.
Each phase also records the CPU seconds the generator and the monitor spent during the job.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GENERATOR_PORT, MONITOR_PORT = 7970, 7971
GEN = f"http://127.0.0.1:{GENERATOR_PORT}"
MON = f"http://127.0.0.1:{MONITOR_PORT}"


def _epoch_s(when: str) -> float:
    """Return seconds since the epoch of a job view's RFC 3339 time (this script runs without the project's path)."""
    return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def wait_until(url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(url)


def run_job(steps: int, resolution: int = 512, frames: int = 16) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="PNG")
    data = {
        "prompt": "a lighthouse in a storm",
        "resolution": resolution,
        "num_frames": frames,
        "steps": steps,
        "fps": 8,
    }
    job_id = requests.post(f"{GEN}/api/jobs", data=data, files={"image": ("in.png", buffer.getvalue())}, timeout=30)
    job_id.raise_for_status()
    job_id = job_id.json()["job_id"]
    while True:
        job = requests.get(f"{GEN}/api/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)


def _cpu_s(pid: int) -> float:
    """Return a process's user + system CPU seconds so far."""
    import psutil  # the monitor's own dependency

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def start_monitor(interval_s: float, data_dir: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "monitor",
        "--port",
        str(MONITOR_PORT),
        "--generator-url",
        GEN,
        "--sample-interval",
        str(interval_s),
        "--data-dir",
        str(data_dir),
    ]
    with open(data_dir / "log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    wait_until(f"{MON}/monitor/api/status", 60)
    return process


def observe(job: dict[str, Any], interval_s: float) -> dict[str, Any]:
    """Read back what the monitor stored and serves while it watched `job`."""
    status = requests.get(f"{MON}/monitor/api/status", timeout=10).json()
    series = requests.get(
        f"{MON}/monitor/api/series", params={"measurement": "gpu_sample", "window": "5m"}, timeout=10
    ).json()
    host = requests.get(
        f"{MON}/monitor/api/series", params={"measurement": "host_sample", "window": "5m"}, timeout=10
    ).json()
    detail = requests.get(f"{MON}/monitor/api/jobs/{job['job_id']}", timeout=10)
    metrics = requests.get(f"{MON}/metrics", timeout=10).text
    sampler = status.get("sampler") or {}
    ticks = sampler.get("ticks_total") or 0
    return {
        "interval_s": interval_s,
        "sampler_ticks": ticks,
        "sampler_overruns": sampler.get("overruns_total"),
        "tick_cpu_mean_ms": 1000 * sampler.get("tick_cpu_sum_s", 0) / ticks if ticks else None,
        "tick_wall_mean_ms": 1000 * sampler.get("tick_duration_sum_s", 0) / ticks if ticks else None,
        "gpu_series": series,
        "host_series_points": sum(len(s.get("points", [])) for s in host.get("series", [])),
        "job_detail_status": detail.status_code,
        "job_detail": detail.json() if detail.ok else detail.text[:500],
        "metrics_gpu_lines": [
            line
            for line in metrics.splitlines()
            if line.startswith(("i2v_gpu_", "i2v_generator_rss", "i2v_sampler_tick"))
        ][:40],
    }


def main() -> None:
    global GEN, MON, MONITOR_PORT  # the helpers above read these; --generator-port and --monitor-port set them
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default="full")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--generator-port", type=int, default=GENERATOR_PORT)
    parser.add_argument("--monitor-port", type=int, default=MONITOR_PORT)
    args = parser.parse_args()
    GEN, MON = f"http://127.0.0.1:{args.generator_port}", f"http://127.0.0.1:{args.monitor_port}"
    MONITOR_PORT = args.monitor_port
    tmp = Path(tempfile.mkdtemp(prefix="monitor-gpu-"))
    print(f"logs in {tmp}", flush=True)
    env = {**os.environ, "GENERATOR_STATE_DIR": str(tmp / "gstate")}
    with open(tmp / "generator.log", "wb") as log:
        generator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "generator",
                "--model",
                args.model,
                "--port",
                str(args.generator_port),
                "--monitor-url",
                MON,
                "--outputs",
                str(tmp / "outputs"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    results: dict[str, Any] = {"phases": []}
    try:
        wait_until(f"{GEN}/ready", 600)
        results["generator_pid"] = requests.get(f"{GEN}/health", timeout=5).json()["pid"]
        run_job(
            args.steps, args.resolution, args.frames
        )  # the first job pays one-off CUDA and cuDNN set-up: not part of any phase
        orders = [(None, 2.0, 0.5), (0.5, None, 2.0), (2.0, 0.5, None)]
        for round_index in range(args.rounds):
            for interval in orders[round_index % len(orders)]:
                monitor = start_monitor(interval, tmp / f"mon-{round_index}-{interval}") if interval else None
                try:
                    cpu_before = (_cpu_s(results["generator_pid"]), _cpu_s(monitor.pid) if monitor else 0.0)
                    job = run_job(args.steps, args.resolution, args.frames)
                    cpu_after = (_cpu_s(results["generator_pid"]), _cpu_s(monitor.pid) if monitor else 0.0)
                    phase = {
                        "round": round_index,
                        "interval_s": interval,
                        "state": job["state"],
                        "generation_s": _epoch_s(job["finished_at"]) - _epoch_s(job["started_at"]),
                        "denoising_s": job["stage_durations_s"].get("denoising"),
                        # CPU seconds over the job (submission to end, polling included): on a shared machine
                        # the generator's CPU time moves less with the neighbours than its wall time does
                        "generator_cpu_s": cpu_after[0] - cpu_before[0],
                        "monitor_cpu_s": cpu_after[1] - cpu_before[1] if monitor else None,
                    }
                    if monitor and round_index == args.rounds - 1:
                        time.sleep(2 * interval + 1)  # one more sample and the events flushed
                        phase["observed"] = observe(job, interval)
                    results["phases"].append(phase)
                    print(json.dumps({k: v for k, v in phase.items() if k != "observed"}), flush=True)
                finally:
                    if monitor:
                        monitor.send_signal(signal.SIGTERM)
                        monitor.wait(timeout=30)
        by_mode: dict[str, list[float]] = {}
        for phase in results["phases"]:
            by_mode.setdefault(str(phase["interval_s"]), []).append(phase["generation_s"])
        baseline = statistics.median(by_mode["None"])
        results["median_generation_s"] = {mode: statistics.median(times) for mode, times in by_mode.items()}
        cpu_by_mode: dict[str, list[float]] = {}
        for phase in results["phases"]:
            cpu_by_mode.setdefault(str(phase["interval_s"]), []).append(phase["generator_cpu_s"])
        results["median_generator_cpu_s"] = {mode: statistics.median(v) for mode, v in cpu_by_mode.items()}
        results["monitor_cpu_share_of_generator"] = {
            mode: statistics.median(p["monitor_cpu_s"] / p["generator_cpu_s"] for p in results["phases"]
                                    if str(p["interval_s"]) == mode)
            for mode in cpu_by_mode if mode != "None"
        }  # fmt: skip
        results["ratio_vs_unmonitored"] = {
            mode: statistics.median(times) / baseline for mode, times in by_mode.items() if mode != "None"
        }
    finally:
        generator.send_signal(signal.SIGTERM)
        generator.wait(timeout=60)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
