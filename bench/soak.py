"""Soak: both services under continuous tiny jobs; do their memory and open file descriptors stay flat?

    python bench/soak.py [--duration-s 600] [--sample-interval 0.5] [--out bench/results/soak_cpu.json]

Starts `python -m monitor` (SQLite store, sampling every `--sample-interval` s) and `python -m generator
--model tiny` sending it events, keeps one job queued behind the running one for the whole duration (256x256,
8 frames, 10 steps), and every 5 s records each process' RSS and open file descriptors. The first
`--warmup-s` (model load, first jobs, allocator growth) is left out of the verdict; after it, growth is the
last minute's median RSS minus the first minute's, and the slope a least-squares fit over the whole window.
The figures and every sample go to `--out` as JSON; a summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.procs import GeneratorProcess, MonitorProcess, ServiceProcess  # noqa: E402
from tests.servers import free_port  # noqa: E402

MiB = 1024 * 1024
PROBE_EVERY_S = 5.0


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Return the least-squares slope of (seconds, value) pairs, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def verdict(samples: list[dict[str, Any]], name: str, warmup_s: float) -> dict[str, Any]:
    """Summarise one process' RSS and fds after the warm-up."""
    after = [s for s in samples if s["t_s"] >= warmup_s and name in s]
    if len(after) < 4:
        return {"error": "too few samples after the warm-up"}
    end_s = after[-1]["t_s"]
    first = [s[name]["rss_bytes"] for s in after if s["t_s"] < warmup_s + 60]
    last = [s[name]["rss_bytes"] for s in after if s["t_s"] > end_s - 60]
    fds = [s[name]["open_fds"] for s in after]
    return {
        "rss_first_minute_mib": round(statistics.median(first) / MiB, 1),
        "rss_last_minute_mib": round(statistics.median(last) / MiB, 1),
        "rss_growth_mib": round((statistics.median(last) - statistics.median(first)) / MiB, 1),
        "rss_slope_mib_per_min": round(slope_per_min([(s["t_s"], s[name]["rss_bytes"] / MiB) for s in after]), 3),
        "rss_max_mib": round(max(s[name]["rss_bytes"] for s in after) / MiB, 1),
        "open_fds_min": min(fds),
        "open_fds_max": max(fds),
        "open_fds_first": fds[0],
        "open_fds_last": fds[-1],
    }


def probe(processes: dict[str, ServiceProcess], started: float) -> dict[str, Any]:
    """Return one sample: time since start and each process' RSS and fds."""
    sample: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1)}
    for name, process in processes.items():
        sample[name] = process.resources()
    return sample


def main(argv: list[str] | None = None) -> int:
    """Run the soak and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--sample-interval", type=float, default=0.5, help="the monitor's sampling period")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak_cpu.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="i2v-soak-") as tmp:
        root = Path(tmp)
        monitor_port = free_port()
        generator = GeneratorProcess(root / "generator", monitor_url=f"http://127.0.0.1:{monitor_port}")
        monitor = MonitorProcess(  # it reads the clips to score them: only under the generator's outputs folder
            root / "monitor",
            generator_url=generator.url,
            port=monitor_port,
            interval_s=args.sample_interval,
            outputs=root / "generator" / "outputs",
        )
        processes: dict[str, ServiceProcess] = {"generator": generator, "monitor": monitor}
        samples: list[dict[str, Any]] = []
        jobs: dict[str, str] = {}
        try:
            monitor.start()
            generator.start()
            started = time.monotonic()
            next_probe = started
            while time.monotonic() - started < args.duration_s:
                active = [j for j, state in jobs.items() if state in ("queued", "running")]
                for job_id in active:
                    jobs[job_id] = generator.job(job_id)["state"]
                if sum(state in ("queued", "running") for state in jobs.values()) < 2:
                    jobs[generator.submit()["job_id"]] = "queued"
                if time.monotonic() >= next_probe:
                    samples.append(probe(processes, started))
                    next_probe += PROBE_EVERY_S
                    done = sum(state == "succeeded" for state in jobs.values())
                    print(f"{samples[-1]['t_s']:7.1f} s  jobs done {done:4d}  {samples[-1]}", flush=True)
                time.sleep(0.5)
            status = monitor.status()
            health = generator.health()
            alerts = requests.get(f"{monitor.url}/monitor/api/alerts", timeout=10).json()
        finally:
            generator.stop()
            monitor.stop()

    counts: dict[str, int] = {}
    for state in jobs.values():
        counts[state] = counts.get(state, 0) + 1
    result = {
        "command": "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "duration_s": args.duration_s,
        "sample_interval_s": args.sample_interval,
        "warmup_s": args.warmup_s,
        "jobs": counts,
        "generator": verdict(samples, "generator", args.warmup_s),
        "monitor": verdict(samples, "monitor", args.warmup_s),
        "monitor_status_at_end": {
            k: status.get(k) for k in ("spool_pending", "dropped", "rejected", "store_errors", "ingest")
        },
        "monitor_sampler_at_end": {
            k: status["sampler"].get(k) for k in ("ticks_total", "overruns_total", "errors_total", "lag_s")
        },
        "generator_events_spooled_at_end": health.get("events_spooled"),
        "firing_alerts_at_end": sorted(
            a["alertname"] for a in alerts.get("active", []) if a["state"] == "firing" and a["alertname"] != "Watchdog"
        ),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
