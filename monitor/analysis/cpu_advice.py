"""Recommend a job for a generator that runs on a CPU: the largest one predicted to finish within a time budget.

On a CPU, memory is not what limits a job (the host's RAM dwarfs the tiny model's activations); time is: the
smallest job takes seconds and 512p/16 frames/50 steps takes many minutes. So the recommendation there is
time-based, where on a GPU it is memory-based (monitor/analysis/recommend.py).

How long a job takes on this host's CPU is learned from what the CPU did, newest first:

- its succeeded jobs (`job_summary` points tagged gpu=cpu on the host, the last `MAX_JOBS` in `LOOKBACK_S`):
  each gives its mean denoising step and its time outside the loop (run_s less the steps), per unit of work;
- else the generator's warm-up (the `warmup` stage event it sends at start: one pipeline call of 256p, 8 frames,
  1 step), counted as 1 step plus `FIXED_STEP_EQUIVALENTS` steps' worth of work outside the loop (measured on
  the tiny model: encoders, latents, decode and export took about one step's time). The warm-up is the pipeline's
  first call, slower than later ones, so this errs long.

Work is pixels x frames, halved without guidance (the UNet then runs one batch instead of two), as the
generator's own ETA scales it (generator/eta.py). A job's time is the median over the measurements of
(outside + steps x step) scaled by work; its margin is `MARGIN_JOBS` (25%) of it with jobs measured and
`MARGIN_WARMUP` (50%) from the warm-up alone. A rung fits when time + margin is within the budget. With no
measurement at all, the smallest job is recommended and the reason says why.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.events import STARTUP_JOB_ID
from common.sizing import CPU_FIRST_CLIP
from common.units import NS_PER_S
from monitor.analysis.recommend import LADDER
from monitor.storage.base import Point, Store
from monitor.storage.schema import HOST_SAMPLE, JOB_EVENT, JOB_SUMMARY, iso_from_us

#: The time budget when the caller gives none: a first clip must finish within 30 s of pressing Generate, and
#: the upload, the queue and the page's reaction take some of that.
DEFAULT_BUDGET_S = 25.0
LOOKBACK_S = 30 * 86_400
MAX_JOBS = 20
FIXED_STEP_EQUIVALENTS = 1.0
MARGIN_JOBS = 0.25
MARGIN_WARMUP = 0.5
WARMUP_RESOLUTION, WARMUP_FRAMES, WARMUP_GUIDANCE = 256, 8, 9.0  # one step: generator/worker.py's WARMUP
#: The memory ladder's rungs, then fewer steps at the smallest size: on a CPU, steps cost as much as size.
TIME_LADDER = (*LADDER, (256, 8, 20), (CPU_FIRST_CLIP["resolution"], CPU_FIRST_CLIP["num_frames"], 10))


def work(resolution: int, num_frames: int, guidance_scale: float) -> float:
    """Return a job's work per denoising step: megapixel-frames, halved without guidance."""
    return resolution**2 * num_frames / 1e6 * (1.0 if guidance_scale > 1 else 0.5)


@dataclass(frozen=True)
class Measured:
    """One measurement of this CPU: seconds per unit of work per step, and outside the denoising loop."""

    step_s_per_work: float
    outside_s_per_work: float


@dataclass(frozen=True)
class CpuTimes:
    """What this host's CPU was measured to take, and how (jobs, the warm-up, or nothing)."""

    host: str
    measured: tuple[Measured, ...]
    source: str  # "jobs", "warmup" or "none"
    warmup_s: float | None = None

    def predict_s(self, resolution: int, num_frames: int, steps: int, guidance_scale: float) -> float | None:
        """Return the predicted run time of a job, or None with nothing measured."""
        if not self.measured:
            return None
        units = work(resolution, num_frames, guidance_scale)
        return statistics.median((m.outside_s_per_work + steps * m.step_s_per_work) * units for m in self.measured)

    @property
    def margin_ratio(self) -> float:
        """Return the margin as a share of the predicted time."""
        return MARGIN_JOBS if self.source == "jobs" else MARGIN_WARMUP

    def describe(self) -> str:
        """Return how the times were predicted, in words."""
        if self.source == "jobs":
            return f"learned from the last {len(self.measured)} job(s) this CPU ran on {self.host}"
        if self.source == "warmup":
            return f"from the generator's warm-up on {self.host} ({self.warmup_s:.1f} s for 256p, 8 frames, 1 step)"
        return f"nothing measured on {self.host}'s CPU yet"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def from_job(point: Point) -> Measured | None:
    """Read one succeeded CPU job's `job_summary` point as a measurement; None when it lacks what is needed."""
    f = point.fields
    resolution, frames = _number(f.get("resolution")), _number(f.get("num_frames"))
    run_s, step_s, steps = _number(f.get("run_s")), _number(f.get("mean_step_s")), _number(f.get("denoising_steps"))
    guidance = _number(f.get("guidance_scale")) or 9.0
    if not resolution or not frames or not run_s or not step_s or not steps:
        return None
    units = work(int(resolution), int(frames), guidance)
    outside = max(run_s - steps * step_s, 0.0)
    return Measured(step_s / units, outside / units)


def from_warmup(warmup_s: float) -> Measured:
    """Read the warm-up's duration as a measurement (1 step plus the work outside the loop)."""
    units = work(WARMUP_RESOLUTION, WARMUP_FRAMES, WARMUP_GUIDANCE)
    per_step = warmup_s / (1.0 + FIXED_STEP_EQUIVALENTS) / units
    return Measured(per_step, per_step * FIXED_STEP_EQUIVALENTS)


def cpu_times(store: Store, host: str, now_ns: int) -> CpuTimes:
    """Read what `host`'s CPU was measured to take: its recent jobs, else its generator's last warm-up."""
    start_ns, end_ns = now_ns - LOOKBACK_S * NS_PER_S, now_ns + 60 * NS_PER_S
    jobs = store.query_points(
        JOB_SUMMARY,
        start_ns,
        end_ns,
        tags={"host": host, "gpu": "cpu", "status": "succeeded"},
        limit=MAX_JOBS,
        descending=True,
    )
    measured = tuple(m for m in map(from_job, jobs) if m is not None)
    if measured:
        return CpuTimes(host, measured, "jobs")
    warmups = store.query_points(
        JOB_EVENT,
        start_ns,
        end_ns,
        tags={"host": host, "gpu": "cpu", "kind": "stage", "stage": "warmup"},
        fields={"job_id": STARTUP_JOB_ID},
        limit=1,
        descending=True,
    )
    duration = _number(warmups[0].fields.get("duration_s")) if warmups else None
    if duration:
        return CpuTimes(host, (from_warmup(duration),), "warmup", warmup_s=duration)
    return CpuTimes(host, (), "none")


def _host_state(store: Store, host: str, now_ns: int) -> dict[str, Any]:
    latest = store.query_points(
        HOST_SAMPLE, now_ns - 120 * NS_PER_S, now_ns + NS_PER_S, tags={"host": host}, limit=1, descending=True
    )
    f = latest[0].fields if latest else {}
    return {
        "host": host,
        "gpu": "cpu",
        "model": "cpu",
        "cpu_ratio": f.get("cpu_ratio"),
        "memory_used_bytes": f.get("memory_used_bytes"),
        "memory_total_bytes": f.get("memory_total_bytes"),
        "sampled_at": iso_from_us(latest[0].time_ns // 1000) if latest else None,
    }


def _shape(rung: Sequence[int], guidance_scale: float) -> dict[str, Any]:
    return {"resolution": rung[0], "num_frames": rung[1], "steps": rung[2], "guidance_scale": guidance_scale}


def recommend_for_cpu(
    store: Store, host: str, now_ns: int, *, budget_s: float | None = None, guidance_scale: float = 9.0
) -> dict[str, Any]:
    """Return the largest rung of `TIME_LADDER` predicted to finish within the budget on `host`'s CPU.

    The answer has the GPU recommendation's keys (`gpu` describes the CPU, `predicted` has no memory) plus
    `basis: "time"` and the budget it used.
    """
    budget = DEFAULT_BUDGET_S if budget_s is None else budget_s
    times = cpu_times(store, host, now_ns)
    candidates = []
    for rung in TIME_LADDER:
        seconds = times.predict_s(rung[0], rung[1], rung[2], guidance_scale)
        margin = None if seconds is None else seconds * times.margin_ratio
        fits = seconds is not None and margin is not None and seconds + margin <= budget
        candidates.append(
            {
                **_shape(rung, guidance_scale),
                "time_s": None if seconds is None else round(seconds, 3),
                "time_margin_s": None if margin is None else round(margin, 3),
                "fits_time": fits,
            }
        )
    chosen = next((c for c in candidates if c["fits_time"]), None)
    smallest = candidates[-1]
    label = "{resolution}p/{num_frames} frames/{steps} steps"
    if times.source == "none":
        reason = (
            f"{label.format(**smallest)}, the smallest job: {times.describe()} (the generator's warm-up or a "
            "finished job tells the monitor how fast it is)"
        )
    elif chosen is None:
        reason = (
            f"nothing is predicted to finish within {budget:g} s on this CPU ({times.describe()}): "
            f"{label.format(**smallest)}, the smallest job, takes about {smallest['time_s']:.0f} s"
        )
    else:
        reason = (
            f"{label.format(**chosen)} is predicted to take about {chosen['time_s']:.0f} s "
            f"(+{chosen['time_margin_s']:.0f} s margin) within the {budget:g} s budget on this CPU; {times.describe()}"
        )
    pick = chosen or smallest
    return {
        "basis": "time",
        "gpu": _host_state(store, host, now_ns),
        "recommended": _shape((pick["resolution"], pick["num_frames"], pick["steps"]), guidance_scale),
        "fits": chosen is not None,
        "budget_s": budget,
        "predicted": {
            "time_s": pick["time_s"],
            "time_margin_s": pick["time_margin_s"],
            "source": times.source,
            "how": times.describe(),
        },
        "floor": None,
        "reason": reason,
        "candidates": candidates,
    }
