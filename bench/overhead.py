"""Overhead of the monitor on generation, on the CPU with the `tiny` model, as a ratio to unmonitored.

Full: bench/monitor_gpu.py (the script that measured the H100) with `--model tiny`, 256x256, 8 frames, 10 steps:
one `python -m generator`, then interleaved phases without a monitor and with `python -m monitor` sampling every
2 s and every 0.5 s (order rotated each round, one job per phase), medians per mode, ratio to the unmonitored
median. On a shared machine the generator's CPU seconds per job, and the monitor's beside it, move less with the
neighbours than wall time does: they are reported too. Quality scoring runs in the monitor as deployed (flow and
the model-free scores: there are no CLIP weights here). Quick: the same A/B on a stand-in CPU loop instead of a
generator, which takes half a minute to load here.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from bench.harness import Context, MonitorProcess, Result, free_port, info, run_script

ROUNDS = 3


def _stand_in(seconds: float) -> float:
    """Spin a pure-Python loop for about `seconds` once, then time that many iterations again."""
    started = time.perf_counter()
    total = 0
    for i in range(int(seconds * 4_000_000)):
        total += i * i % 7
    return time.perf_counter() - started


def _quick(ctx: Context) -> Result:
    modes: dict[str, list[float]] = {"None": [], "2.0": [], "0.5": []}
    for interval in (None, 0.5, 2.0):
        if interval is None:
            modes["None"].append(_stand_in(0.5))
            continue
        with MonitorProcess(ctx.scratch("overhead-monitor"), interval_s=interval):
            modes[str(interval)].append(_stand_in(0.5))
    baseline = statistics.median(modes["None"])
    ratios = {m: statistics.median(v) / baseline for m, v in modes.items() if m != "None"}
    how = "quick: a stand-in CPU loop, one run per mode"
    return Result(
        [info(f"Stand-in loop time, monitor at {m} s / none", r, "x", how) for m, r in ratios.items()],
        {"seconds": modes, "ratio_vs_unmonitored": ratios},
    )


def run(ctx: Context) -> Result:
    """Measure (or, quick, exercise) the generation-time ratio with the monitor at 2 s and 0.5 s."""
    if ctx.quick:
        return _quick(ctx)
    out = ctx.scratch("overhead") / "monitor_gpu.json"
    args = [
        "bench/monitor_gpu.py", "--model", "tiny", "--resolution", "256", "--frames", "8", "--steps", "10",
        "--rounds", str(ROUNDS), "--out", str(out),
        "--generator-port", str(free_port()), "--monitor-port", str(free_port()),
    ]  # fmt: skip
    run_script(args, timeout_s=1800, log_path=out.with_suffix(".log"))
    data: dict[str, Any] = json.loads(out.read_text())
    phases = data["phases"]
    failed = [p for p in phases if p["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not succeed: {failed[:2]}")
    ratio = data["ratio_vs_unmonitored"]
    median = data["median_generation_s"]
    jobs = len(phases) // 3
    times = [p["generation_s"] for p in phases]
    how = (
        f"`tiny` 256x256x8x10 on the CPU, interleaved phases (order rotated), median of {jobs} jobs per mode; "
        f"unmonitored median {median['None']:.2f} s; every job took {min(times):.0f}-{max(times):.0f} s"
    )
    cpu = data["median_generator_cpu_s"]
    share = data["monitor_cpu_share_of_generator"]
    how_cpu = (
        f"the same jobs: the generator's user + system CPU seconds per job (unmonitored median {cpu['None']:.1f} s)"
    )
    how_share = "the monitor's CPU seconds during a job / the generator's, median per mode"
    figures = [
        info("Generation time, monitor sampling every 2 s / none (CPU, `tiny`)", ratio["2.0"], "x",
             how + "; the issue's target (1.005) is the GPU's"),
        info("Generation time, monitor sampling every 0.5 s / none (CPU, `tiny`)", ratio["0.5"], "x", how),
        info("Generator CPU time per job, monitor at 2 s / none", cpu["2.0"] / cpu["None"], "x", how_cpu),
        info("Generator CPU time per job, monitor at 0.5 s / none", cpu["0.5"] / cpu["None"], "x", how_cpu),
        info("Monitor CPU during a job / generator CPU, sampling every 2 s", 100 * share["2.0"], "%", how_share),
        info("Monitor CPU during a job / generator CPU, sampling every 0.5 s", 100 * share["0.5"], "%", how_share),
    ]  # fmt: skip
    for phase in phases:
        phase.pop("observed", None)  # the series read back: kept in monitor_gpu.py's own output, not here
    keep = ("median_generation_s", "ratio_vs_unmonitored", "median_generator_cpu_s", "monitor_cpu_share_of_generator")
    return Result(figures, {**{k: data[k] for k in keep}, "phases": phases})
