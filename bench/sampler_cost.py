"""The sampler's CPU time per tick, and the whole monitor's CPU share at 0.5, 1 and 2 s sampling.

- Per tick: bench/nvml_probe.py drives the monitor's own `Sampler.tick()` (NVML reader, host reader, point
  conversion) every 50 ms and times each tick's thread CPU time; p50 and p99, since the first tick pays NVML's
  start-up. On a machine without a GPU the tick is the host part alone (the file says which).
- CPU share: a real `python -m monitor` (SQLite store, an idle `python -m generator --model tiny` beside it so
  the PID lookups and generator polls happen as deployed), its process CPU time (user + system, psutil) over a
  fixed wall time after start-up, at each interval; rounds rotate the order, medians per interval.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.harness import ROOT, Context, MonitorProcess, Result, at_most, free_port, info, run_script, wait_http

TARGET_SHARE_AT_2S = 0.01
INTERVALS = (0.5, 1.0, 2.0)


def _generator(ctx: Context) -> str:
    """Start an idle `python -m generator --model tiny`; return its URL (stopped when the benchmark ends)."""
    folder = ctx.scratch("generator")
    port = free_port()
    env = {**os.environ, "GENERATOR_STATE_DIR": str(folder / "state")}
    with (folder / "generator.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "generator", "--model", "tiny", "--port", str(port), "--outputs", str(folder)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()

    ctx.on_close(stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ready", 600, process)
    return url


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _share(ctx: Context, interval_s: float, seconds: float, settle_s: float, generator_url: str | None) -> dict:
    """Run one monitor at `interval_s`; return its CPU seconds per wall second over `seconds` after settling."""
    env = {"GENERATOR_URL": generator_url} if generator_url else {}
    with MonitorProcess(ctx.scratch("sampler-monitor"), interval_s=interval_s, **env) as monitor:
        assert monitor.process is not None
        time.sleep(settle_s)  # start-up (imports, NVML, first ticks) is not the steady state
        ticks_before = monitor.status()["sampler"]["ticks_total"]
        cpu_before, started = _cpu_s(monitor.process.pid), time.monotonic()
        time.sleep(seconds)
        cpu, wall = _cpu_s(monitor.process.pid) - cpu_before, time.monotonic() - started
        sampler = monitor.status()["sampler"]
    return {
        "interval_s": interval_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "share_of_one_core": cpu / wall,
        "ticks": sampler["ticks_total"] - ticks_before,
        "tick_cpu_mean_ms": 1000 * sampler["tick_cpu_sum_s"] / max(1, sampler["ticks_total"]),
        "nvml_available": sampler.get("nvml_available"),
    }


def run(ctx: Context) -> Result:
    """Measure tick CPU percentiles and the monitor's CPU share."""
    ticks = 20 if ctx.quick else 600
    probe_out = ctx.scratch("nvml-probe") / "probe.json"
    run_script(
        ["bench/nvml_probe.py", "--ticks", str(ticks), "--interval", "0.05", "--out", str(probe_out)],
        timeout_s=300, log_path=probe_out.with_suffix(".log"),
    )  # fmt: skip
    probe: dict[str, Any] = json.loads(probe_out.read_text())
    tick = probe["tick"]["thread_cpu"]
    what = "every GPU field + host" if probe.get("available") else "host only: no GPU here"
    how = f"{tick['count']} ticks at 50 ms, thread CPU time (bench/nvml_probe.py)"
    figures = [
        info(f"Sampler tick CPU time, p50 ({what})", tick["p50_us"] / 1000, "ms", how),
        info(f"Sampler tick CPU time, p99 ({what})", tick["p99_us"] / 1000, "ms", how),
    ]

    seconds, settle, rounds = (1.0, 0.5, 1) if ctx.quick else (30.0, 5.0, 2)
    intervals = (2.0,) if ctx.quick else INTERVALS
    generator_url = None if ctx.quick else _generator(ctx)
    runs: list[dict] = []
    for r in range(rounds):
        order = intervals[r % len(intervals) :] + intervals[: r % len(intervals)]
        for interval in order if r % 2 == 0 else tuple(reversed(order)):
            runs.append(_share(ctx, interval, seconds, settle, generator_url))
    shares = {i: statistics.median([x["share_of_one_core"] for x in runs if x["interval_s"] == i]) for i in intervals}
    how = (
        f"process CPU time of `python -m monitor` over {seconds:g} s after {settle:g} s of start-up, "
        f"median of {rounds} (interleaved); "
        + ("idle `python -m generator --model tiny` beside it" if generator_url else "quick: no generator")
    )
    for interval in intervals:
        name = f"Monitor CPU share sampling every {interval:g} s (% of one core)"
        if interval == 2.0:
            figures.append(at_most(name, 100 * shares[interval], 100 * TARGET_SHARE_AT_2S, "%", how))
        else:
            figures.append(info(name, 100 * shares[interval], "%", how))
    probe.pop("snapshot", None)
    return Result(figures, {"probe": probe, "cpu_share_runs": runs, "median_share": shares})
