"""Predict a job's peak GPU memory and generation time from the jobs measured on the same GPU model.

The model, per GPU model (the sampler's NVML name, e.g. "NVIDIA H100 80GB HBM3"):

- x = resolution^2 * frames / 1e6 ("megapixel-frames"), halved without classifier-free guidance
  (guidance_scale <= 1 runs the UNet on one batch instead of two): the activations grow with it.
- Peak memory (torch's peak allocation, which includes the weights) = m0 + m1 * x. On the H100, 7.8 GB at
  512^2 * 16 and 25.3 GB at 1024^2 * 32 give m0 = 5.3 GB (the weights: 5.0 GB resident after load) and
  m1 = 0.6 GB per megapixel-frame.
- Generation time (running to end) = a0 + a1 * x + steps * (b0 + b1 * x): a fixed part (encoders, decode,
  export) and a per-step part, both linear in x.

The prior: with no measured job the answer is the design's table (common/sizing.py, the generator's
own fallback: 256p 6 GB ... 1024p 20 GB at 16 frames, +0.15 GB per extra frame) for memory, and the H100's
measured law (0.57 s + 0.054 s * x, plus 0.0148 s + 0.0553 s * x per step) for time. With n jobs, weighted
least squares fits the linear law to the jobs (weight 1 each) together with the prior at a grid of standard
parameter sets (`PRIOR_JOBS` in all, spread evenly): the prior counts as that many jobs, so it shapes the law
while data are few (jobs all of one size still set its level; the prior lends the slope) and its share fades
as PRIOR_JOBS / (n + PRIOR_JOBS).

The margin: the relative residual spread, blended by count with the prior's assumed spread rho0
(s^2 = (sum r_i^2 + PRIOR_JOBS * rho0^2) / (n + PRIOR_JOBS), r_i = (y_i - fit_i) / fit_i), widened by the
leverage h = phi' G^-1 phi of the asked-for point (G: the weighted Gram matrix; far from every measured job
means a wider margin): margin = fit * clip(Z * s * sqrt(1 + h), MIN_MARGIN_RATIO, MAX_MARGIN_RATIO). It
shrinks as jobs accumulate, down to the law's real misfit.

Fitting is cheap but reads the store, so `Predictor` refits on a cadence: when a job ended since the last fit
(at most every `min_refit_interval_s`), and every `refit_after_s` regardless (another monitor may share the
store); a prediction never waits for a fit already running.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.sizing import RESOLUTIONS, table_peak_bytes
from monitor.analysis.devices import ModelNames
from monitor.storage.base import Point, Store, StoreRejected, StoreUnavailable
from monitor.storage.schema import JOB_SUMMARY, iso_from_us

log = logging.getLogger(__name__)

PRIOR_TIME_FIXED_S = (0.57, 0.054)  # a0, a1: measured on the H100 (bench/results/h100_generator.json)
PRIOR_TIME_PER_STEP_S = (0.0148, 0.0553)  # b0, b1
PRIOR_JOBS = 1.0
PRIOR_MEMORY_SPREAD = 0.15  # rho0: the table is a guess per card (on the H100 it is 50% high)
PRIOR_TIME_SPREAD = 0.5  # rho0: cards differ in speed several-fold
Z = 2.0  # about 98% one-sided under a normal spread
MIN_MARGIN_RATIO = 0.03
MAX_MARGIN_RATIO = 1.0  # one job far from the asked-for size says little: at most double the value
S = 1_000_000_000


@dataclass(frozen=True)
class JobShape:
    """The parameters that drive memory and time."""

    resolution: int
    num_frames: int
    steps: int
    guidance_scale: float = 9.0

    @property
    def x(self) -> float:
        """Return megapixel-frames through the UNet: resolution^2 * frames / 1e6, halved without guidance."""
        return self.resolution**2 * self.num_frames / 1e6 * (1.0 if self.guidance_scale > 1 else 0.5)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        return {
            "resolution": self.resolution,
            "num_frames": self.num_frames,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }


def prior_memory_bytes(shape: JobShape) -> float:
    """Return the design table's peak memory for a job (common/sizing.py), as the generator's fallback."""
    return table_peak_bytes(shape.resolution, shape.num_frames)


def prior_time_s(shape: JobShape) -> float:
    """Return the H100's measured generation time for a job."""
    (a0, a1), (b0, b1) = PRIOR_TIME_FIXED_S, PRIOR_TIME_PER_STEP_S
    return a0 + a1 * shape.x + shape.steps * (b0 + b1 * shape.x)


def memory_features(shape: JobShape) -> list[float]:
    """Return the memory law's features: 1, x."""
    return [1.0, shape.x]


def time_features(shape: JobShape) -> list[float]:
    """Return the time law's features: 1, x, steps, steps·x."""
    return [1.0, shape.x, float(shape.steps), shape.steps * shape.x]


def invert(matrix: list[list[float]]) -> list[list[float]]:
    """Return the inverse of a small symmetric positive-definite matrix (Gauss-Jordan, partial pivoting)."""
    size = len(matrix)
    rows = [[*row, *(1.0 if i == j else 0.0 for j in range(size))] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            raise ValueError("singular matrix")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        scale = rows[col][col]
        rows[col] = [v / scale for v in rows[col]]
        for r in range(size):
            if r != col and rows[r][col] != 0.0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [row[size:] for row in rows]


PRIOR_GRID = tuple(JobShape(r, f, s) for r in RESOLUTIONS for f in (8, 16, 24, 32) for s in (10, 50, 100))


@dataclass(frozen=True)
class Estimate:
    """One predicted quantity: the value, its margin, and how it was made."""

    value: float
    margin: float
    jobs: int
    source: str  # "prior" (no measured job) or "learned"
    prior_weight: float  # the prior's share of the fit: PRIOR_JOBS / (jobs + PRIOR_JOBS)


class Law:
    """A linear law fitted to measured jobs and a prior (see the module docstring)."""

    def __init__(
        self,
        features: Callable[[JobShape], list[float]],
        prior: Callable[[JobShape], float],
        spread: float,
        observations: Sequence[tuple[JobShape, float]] = (),
    ) -> None:
        """Fit to `observations` (shape, measured value); with none, the prior answers alone."""
        self.features, self.prior, self.n = features, prior, len(observations)
        anchor_weight = PRIOR_JOBS / len(PRIOR_GRID)
        weighted = [(features(s), prior(s), anchor_weight) for s in PRIOR_GRID]
        weighted += [(features(s), y, 1.0) for s, y in observations]
        size = len(weighted[0][0])
        gram = [[sum(w * phi[i] * phi[j] for phi, _, w in weighted) for j in range(size)] for i in range(size)]
        moment = [sum(w * phi[i] * y for phi, y, w in weighted) for i in range(size)]
        self.gram_inverse = invert(gram)
        self.theta = [sum(self.gram_inverse[i][j] * moment[j] for j in range(size)) for i in range(size)]
        squared = 0.0
        for shape, measured in observations:
            fitted = self._raw(shape)
            squared += ((measured - fitted) / max(abs(fitted), 1e-9)) ** 2
        self.spread = math.sqrt((squared + PRIOR_JOBS * spread**2) / (self.n + PRIOR_JOBS))
        self.prior_spread = spread

    def _raw(self, shape: JobShape) -> float:
        return sum(c * f for c, f in zip(self.theta, self.features(shape), strict=True))

    def estimate(self, shape: JobShape) -> Estimate:
        """Return the law's value and margin for one job."""
        prior_weight = PRIOR_JOBS / (self.n + PRIOR_JOBS)
        if self.n == 0:
            value = self.prior(shape)
            return Estimate(value, value * Z * self.prior_spread, 0, "prior", 1.0)
        value = max(self._raw(shape), 0.1 * self.prior(shape))  # a wild extrapolation never goes near zero
        phi = self.features(shape)
        size = len(phi)
        leverage = max(sum(phi[i] * self.gram_inverse[i][j] * phi[j] for i in range(size) for j in range(size)), 0.0)
        ratio = min(max(Z * self.spread * math.sqrt(1.0 + leverage), MIN_MARGIN_RATIO), MAX_MARGIN_RATIO)
        return Estimate(value, value * ratio, self.n, "learned", prior_weight)

    def coefficients(self) -> list[float]:
        """Return the fitted coefficients, in the order of the features."""
        return list(self.theta)


@dataclass(frozen=True)
class Observation:
    """One succeeded job as the predictor learns from it."""

    gpu_model: str
    shape: JobShape
    peak_memory_bytes: int | None
    run_s: float | None


@dataclass(frozen=True)
class Prediction:
    """What a job on one GPU model is expected to take."""

    gpu_model: str | None
    shape: JobShape
    memory: Estimate
    time: Estimate

    @property
    def peak_bytes(self) -> int:
        """Return the predicted peak memory in whole bytes."""
        return round(self.memory.value)

    @property
    def margin_bytes(self) -> int:
        """Return the memory margin in whole bytes (rounded up)."""
        return math.ceil(self.memory.margin)

    @property
    def estimate_bytes(self) -> int:
        """Return the peak memory plus its margin: what to budget for."""
        return self.peak_bytes + self.margin_bytes

    def describe(self) -> str:
        """Return how the prediction was made, in words."""
        on = f"on {self.gpu_model}" if self.gpu_model else "on this GPU model"
        if self.memory.source == "prior":
            return f"prior: the design's table (no job measured {on} yet)"
        return f"learned from {self.memory.jobs} job(s) measured {on} (the prior weighs {self.memory.prior_weight:.0%})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        return {
            "params": self.shape.to_dict(),
            "gpu_model": self.gpu_model,
            "memory": {
                "peak_bytes": self.peak_bytes,
                "margin_bytes": self.margin_bytes,
                "estimate_bytes": self.estimate_bytes,
                "source": self.memory.source,
                "jobs": self.memory.jobs,
                "prior_weight": round(self.memory.prior_weight, 4),
            },
            "time": {
                "seconds": round(self.time.value, 3),
                "margin_s": round(self.time.margin, 3),
                "source": self.time.source,
                "jobs": self.time.jobs,
                "prior_weight": round(self.time.prior_weight, 4),
            },
            "how": self.describe(),
        }


class Laws:
    """The memory and time laws of one GPU model."""

    def __init__(self, observations: Sequence[Observation] = ()) -> None:
        """Fit both laws to the observations (each uses those that measured its quantity)."""
        memory = [(o.shape, float(o.peak_memory_bytes)) for o in observations if o.peak_memory_bytes]
        times = [(o.shape, o.run_s) for o in observations if o.run_s is not None and o.run_s > 0]
        self.memory = Law(memory_features, prior_memory_bytes, PRIOR_MEMORY_SPREAD, memory)
        self.time = Law(time_features, prior_time_s, PRIOR_TIME_SPREAD, times)


PRIOR_LAWS = Laws()


def observation(point: Point, names: ModelNames) -> Observation | None:
    """Read one `job_summary` point as an observation; None when its parameters are incomplete."""
    f = point.fields
    resolution, frames, steps = f.get("resolution"), f.get("num_frames"), f.get("steps")
    if not isinstance(resolution, int) or resolution not in RESOLUTIONS:
        return None
    if not isinstance(frames, int) or not isinstance(steps, int):
        return None
    guidance = f.get("guidance_scale")
    shape = JobShape(resolution, frames, steps, float(guidance) if isinstance(guidance, int | float) else 9.0)
    peak = f.get("peak_memory_bytes")
    run_s = f.get("run_s")
    return Observation(
        gpu_model=names.name(point.tags.get("host", ""), point.tags.get("gpu", "")),
        shape=shape,
        peak_memory_bytes=peak if isinstance(peak, int) and peak > 0 else None,
        run_s=float(run_s) if isinstance(run_s, int | float) else None,
    )


class Predictor:
    """Fitted laws per GPU model, learned from the succeeded jobs in the store and refitted on a cadence.

    Args:
        store: where `job_summary` and `gpu_sample` points are read.
        clock_ns: wall-clock nanoseconds (the end of the training window).
        monotonic: seconds for the refit cadence.
        window_s: how far back jobs are learned from.
        max_jobs: at most this many of the newest succeeded jobs are learned from.
        refit_after_s: refit at least this often, even with no job heard of.
        min_refit_interval_s: refit at most this often when jobs end.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        window_s: int = 30 * 86_400,
        max_jobs: int = 5000,
        refit_after_s: float = 300.0,
        min_refit_interval_s: float = 5.0,
    ) -> None:
        self._store, self._clock_ns, self._monotonic = store, clock_ns, monotonic
        self.window_s, self.max_jobs = window_s, max_jobs
        self.refit_after_s, self.min_refit_interval_s = refit_after_s, min_refit_interval_s
        self._laws: dict[str, Laws] = {}
        self._counts: dict[str, int] = {}
        self._fitted_at: float | None = None
        self._fitted_at_ns: int | None = None
        self._dirty = True
        self._fit_lock = threading.Lock()
        self.fit_errors_total = 0

    def mark_dirty(self, _point: object = None) -> None:
        """Note that a job ended (the job summarizer's callback): the next prediction may refit."""
        self._dirty = True

    def laws(self, gpu_model: str | None) -> Laws:
        """Return the fitted laws of a GPU model (the prior's when nothing was measured on it)."""
        self.maybe_refit()
        return self._laws.get(gpu_model or "", PRIOR_LAWS)

    def predict(self, shape: JobShape, gpu_model: str | None) -> Prediction:
        """Predict peak memory and generation time of a job on a GPU model (None: unknown, the prior answers)."""
        laws = self.laws(gpu_model)
        return Prediction(gpu_model, shape, laws.memory.estimate(shape), laws.time.estimate(shape))

    def maybe_refit(self) -> None:
        """Refit when due (see the class docstring); a refit already running is not waited for."""
        now = self._monotonic()
        if self._fitted_at is not None:
            since = now - self._fitted_at
            if since < self.min_refit_interval_s or (not self._dirty and since < self.refit_after_s):
                return
        if not self._fit_lock.acquire(blocking=self._fitted_at is None):
            return
        try:
            self.refit()
        except (StoreUnavailable, StoreRejected) as e:
            self.fit_errors_total += 1
            self._fitted_at = now  # try again after the interval, answering from the last fit meanwhile
            log.warning("predictor: cannot read measured jobs (%s); keeping the last fit", e)
        finally:
            self._fit_lock.release()

    def refit(self) -> None:
        """Read the newest succeeded jobs and fit each GPU model's laws."""
        self._dirty = False
        started = self._monotonic()
        end_ns = self._clock_ns() + 60 * S
        points = self._store.query_points(
            JOB_SUMMARY,
            end_ns - self.window_s * S,
            end_ns,
            tags={"status": "succeeded"},
            limit=self.max_jobs,
            descending=True,
        )
        names = ModelNames(self._store, end_ns)
        by_model: dict[str, list[Observation]] = {}
        for point in points:
            seen = observation(point, names)
            if seen is not None:
                by_model.setdefault(seen.gpu_model, []).append(seen)
        self._laws = {model: Laws(seen) for model, seen in by_model.items()}
        self._counts = {model: len(seen) for model, seen in by_model.items()}
        self._fitted_at, self._fitted_at_ns = started, self._clock_ns()
        log.debug("predictor refitted on %d jobs in %.3f s", len(points), self._monotonic() - started)

    def status(self) -> dict[str, Any]:
        """Return what the predictor has learned: jobs and coefficients per GPU model, and when."""
        self.maybe_refit()
        return {
            "fitted_at": None if self._fitted_at_ns is None else iso_from_us(self._fitted_at_ns // 1000),
            "fit_errors_total": self.fit_errors_total,
            "models": {
                model: {
                    "jobs": self._counts.get(model, 0),
                    "memory_bytes": dict(zip(("m0", "m1"), laws.memory.coefficients(), strict=True)),
                    "time_s": dict(zip(("a0", "a1", "b0", "b1"), laws.time.coefficients(), strict=True)),
                    "memory_spread": round(laws.memory.spread, 4),
                    "time_spread": round(laws.time.spread, 4),
                }
                for model, laws in sorted(self._laws.items())
            },
        }
