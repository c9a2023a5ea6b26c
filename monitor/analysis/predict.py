"""Predict a job's peak GPU memory and generation time from the last fit, never fitting on the request path.

Per GPU model (the sampler's NVML name, e.g. "NVIDIA H200"), `Laws` (monitor/analysis/laws.py) are fitted to the
succeeded jobs of the last `window_s` (at most `max_jobs`, the newest). A prediction reads the last fit: a dict
lookup and a few multiplications. Fits happen in a background thread:

- at start (`start()`, before the monitor serves): every job in the window is read from the store;
- when a job ends (`mark_dirty(point)`, the job summarizer's hook, with its `job_summary` point): the point joins
  the jobs held in memory and the laws are refitted from them, without reading the store (at most every
  `min_refit_interval_s`; points that arrive meanwhile wait for the next fit, none is lost);
- every `refit_after_s` (noticed by a prediction, so an idle monitor does nothing): the store is read again, for
  jobs that other monitors sharing it wrote and for the window's end.

A fit that is slow or fails (the store is down) delays nothing: predictions keep answering from the last fit,
which says when it was made. Before the first fit lands, the prior answers (the design's table).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.sizing import RESOLUTIONS
from common.units import NS_PER_S
from monitor.analysis.devices import ModelNames
from monitor.analysis.laws import PRIOR_LAWS, Laws, Observation
from monitor.analysis.scaling import Estimate, JobShape
from monitor.storage.base import Point, Store, StoreRejected, StoreUnavailable
from monitor.storage.schema import JOB_SUMMARY, iso_from_us

log = logging.getLogger(__name__)

LAW = (
    "peak memory = weights + a·c·P·F + b·c·P²·F; time = outside + steps x (t0 + t1·c·P·F + t2·c·P²·F), "
    "outside = f0 + f1·P·F + f2·P²·F; the first job of a size in a generator process adds its warm-up "
    "w0 + w1·c·P·F (P: megapixels per frame, F: frames, c: 1 with guidance, 0.5 without)"
)
TIME_BASIS = (
    "seconds: a job of a size its generator process has run before; fresh_size_seconds: the first job of this "
    "size in a process, which pays warmup_s once (its first denoising step, at a shape new to cuDNN and the allocator)"
)

__all__ = ["JobShape", "Laws", "Observation", "Prediction", "Predictor", "observation"]


@dataclass(frozen=True)
class Prediction:
    """What a job on one GPU model is expected to take."""

    gpu_model: str | None
    shape: JobShape
    memory: Estimate
    time: Estimate  # a warm repeat: a size the generator's process has run
    warmup: Estimate  # what the first job of this size in a process adds
    fitted_at_ns: int | None = None

    @property
    def fresh_size_s(self) -> float:
        """Return the seconds of the first job of this size in a generator process: warm time plus warm-up."""
        return self.time.value + self.warmup.value

    @property
    def fresh_size_margin_s(self) -> float:
        """Return the margin of the fresh-size seconds: the two margins added in quadrature."""
        return math.hypot(self.time.margin, self.warmup.margin)

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
                "warmup_s": round(self.warmup.value, 3),
                "warmup_margin_s": round(self.warmup.margin, 3),
                "warmup_source": self.warmup.source,
                "warmup_jobs": self.warmup.jobs,
                "fresh_size_seconds": round(self.fresh_size_s, 3),
                "fresh_size_margin_s": round(self.fresh_size_margin_s, 3),
                "basis": TIME_BASIS,
            },
            "fitted_at": None if self.fitted_at_ns is None else iso_from_us(self.fitted_at_ns // 1000),
            "how": self.describe(),
        }


def observation(point: Point, gpu_model: str = "") -> Observation | None:
    """Read one succeeded job's `job_summary` point as an observation; None when its parameters are incomplete."""
    f = point.fields
    resolution, frames, steps = f.get("resolution"), f.get("num_frames"), f.get("steps")
    if not isinstance(resolution, int) or resolution not in RESOLUTIONS:
        return None
    if not isinstance(frames, int) or not isinstance(steps, int) or steps < 1:
        return None
    guidance = f.get("guidance_scale")
    shape = JobShape(resolution, frames, steps, float(guidance) if isinstance(guidance, int | float) else 9.0)
    # the median step (a first step's warm-up left out) where the summary has it; older summaries have the mean
    step_s = f.get("median_step_s") or f.get("mean_step_s")
    peak, run_s, warmup_s, first = f.get("peak_memory_bytes"), f.get("run_s"), f.get("warmup_s"), f.get("first_at_size")
    every_step = f.get("denoising_steps") == steps  # a cut-short run's steps do not describe the job
    return Observation(
        gpu_model=gpu_model,
        shape=shape,
        peak_memory_bytes=peak if isinstance(peak, int) and peak > 0 else None,
        run_s=float(run_s) if isinstance(run_s, int | float) and run_s > 0 else None,
        step_s=float(step_s) if isinstance(step_s, int | float) and step_s > 0 and every_step else None,
        warmup_s=float(warmup_s) if isinstance(warmup_s, int | float) and warmup_s >= 0 else None,
        first_at_size=first if isinstance(first, bool) else None,
    )


@dataclass(frozen=True)
class Fit:
    """One fit's laws per GPU model, replaced whole by the next one (predictions read it without a lock)."""

    laws: dict[str, Laws] = field(default_factory=dict)
    held_out: dict[str, dict[str, Any]] = field(default_factory=dict)
    fitted_at_ns: int | None = None
    fitted_at_s: float | None = None  # monotonic
    read_at_s: float | None = None  # monotonic: when the store was last read whole
    duration_s: float | None = None


JobKey = tuple[str, str, int]  # host, gpu, end time: a replayed end event rewrites the same summary point


class Predictor:
    """The last fit's laws per GPU model, refitted in the background (see the module docstring).

    Args:
        store: where `job_summary` and `gpu_sample` points are read.
        clock_ns: wall-clock nanoseconds (the end of the training window).
        monotonic: seconds for the refit cadence.
        window_s: how far back jobs are learned from.
        max_jobs: at most this many of the newest succeeded jobs are learned from.
        refit_after_s: read the store again at least this often (while predictions are asked for).
        min_refit_interval_s: fit at most this often when jobs end.
        retry_after_s: after a fit failed (the store is down), wait this long before the next try.
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
        min_refit_interval_s: float = 1.0,
        retry_after_s: float = 10.0,
    ) -> None:
        self._store, self._clock_ns, self._monotonic = store, clock_ns, monotonic
        self.window_s, self.max_jobs = window_s, max_jobs
        self.refit_after_s, self.min_refit_interval_s = refit_after_s, min_refit_interval_s
        self.retry_after_s = retry_after_s
        self._fit = Fit()
        # The jobs learned from, by arrival: oldest first after a read of the store; a late replay joins at the end
        # and leaves a little late, until the next read puts it in its place.
        self._jobs: OrderedDict[JobKey, tuple[int, Observation]] = OrderedDict()
        self._pending: list[Point] = []
        self._reload = True
        self._names: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()  # the queue of news and the thread's handle
        self._fit_lock = threading.Lock()  # one fit at a time (start() and the thread)
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_fit_started: float | None = None
        self.fits_total = 0
        self.fit_errors_total = 0

    # What the rest of the monitor calls.

    def start(self) -> None:
        """Read the store and fit once, now (call before serving, so the first answers are learned).

        When the store cannot be read, the prior answers and the background thread tries again.
        """
        if not self._fit_once():
            with self._lock:
                self._wake_locked()

    def mark_dirty(self, point: Point | None = None) -> None:
        """Note that a job ended (its `job_summary` point; None: read the store again) and fit in the background."""
        with self._lock:
            if point is None:
                self._reload = True
            elif point.measurement == JOB_SUMMARY and point.tags.get("status") == "succeeded":
                self._pending.append(point)
            else:
                return
            self._wake_locked()

    def predict(self, shape: JobShape, gpu_model: str | None) -> Prediction:
        """Predict peak memory and generation time of a job on a GPU model (None: unknown, the prior answers)."""
        fit = self._current()
        laws = fit.laws.get(gpu_model or "", PRIOR_LAWS)
        time_law = laws.time
        return Prediction(
            gpu_model,
            shape,
            laws.memory.estimate(shape),
            time_law.estimate(shape),
            time_law.warmup_estimate(shape),
            fit.fitted_at_ns,
        )

    def laws(self, gpu_model: str | None) -> Laws:
        """Return the last fit's laws of a GPU model (the prior's when nothing was measured on it)."""
        return self._current().laws.get(gpu_model or "", PRIOR_LAWS)

    def status(self) -> dict[str, Any]:
        """Return what the last fit learned per GPU model, its held-out error, and when it was made."""
        fit = self._current()
        return {
            "law": LAW,
            "fitted_at": None if fit.fitted_at_ns is None else iso_from_us(fit.fitted_at_ns // 1000),
            "fit_duration_s": None if fit.duration_s is None else round(fit.duration_s, 3),
            "fitting": self._thread is not None,
            "fits_total": self.fits_total,
            "fit_errors_total": self.fit_errors_total,
            "models": {
                model: {"jobs": laws.jobs, **laws.describe(), "held_out": fit.held_out[model]}
                for model, laws in sorted(fit.laws.items())
            },
        }

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop fitting: a fit in progress is waited for (up to `timeout_s`), no new one starts."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    # The background fit.

    def _current(self) -> Fit:
        fit = self._fit
        if fit.read_at_s is None or self._monotonic() - fit.read_at_s > self.refit_after_s:
            with self._lock:
                self._reload = True
                self._wake_locked()
        return fit

    def _wake_locked(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="predictor-fit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Fit while there is news, at most every `min_refit_interval_s`; then end (the next news starts one)."""
        while True:
            with self._lock:
                if self._stop.is_set() or not (self._pending or self._reload):
                    self._thread = None
                    return
                last = self._last_fit_started
                wait = 0.0 if last is None else last + self.min_refit_interval_s - self._monotonic()
            if wait > 0:
                self._stop.wait(wait)
            elif not self._fit_once():
                self._stop.wait(self.retry_after_s)

    def _fit_once(self) -> bool:
        """Take in what is new (reading the store when due), fit, and replace the last fit; keep it on failure."""
        with self._fit_lock:
            started = self._monotonic()
            with self._lock:
                self._last_fit_started = started
                reload, self._reload = self._reload, False
                pending, self._pending = self._pending, []
            try:
                if reload:
                    self._read_store()
                self._take(pending)
                laws = self._fit_laws()
                held_out = {model: model_laws.held_out() for model, model_laws in laws.items()}
            except (StoreUnavailable, StoreRejected) as e:
                self.fit_errors_total += 1
                if not self._failing:
                    log.warning("predictor: cannot read measured jobs (%s); answering from the last fit", e)
                self._failing = True
                with self._lock:  # tried again after the interval, while the thread runs
                    self._reload = self._reload or reload
                    self._pending = pending + self._pending
                return False
            except Exception:  # the fitting thread's boundary: the last fit keeps answering, the next news retries
                self.fit_errors_total += 1
                log.exception("predictor: the fit failed; answering from the last fit")
                return False
            if self._failing:
                log.warning("predictor: measured jobs can be read again")
            self._failing = False
            read_at = started if reload else self._fit.read_at_s
            duration = self._monotonic() - started
            self._fit = Fit(laws, held_out, self._clock_ns(), started, read_at, duration)
            self.fits_total += 1
            log.debug("predictor: fitted %d job(s) in %.3f s", len(self._jobs), duration)
            return True

    def _read_store(self) -> None:
        """Replace the jobs held with the newest `max_jobs` succeeded ones of the window, from the store."""
        end_ns = self._clock_ns() + 60 * NS_PER_S
        points = self._store.query_points(
            JOB_SUMMARY,
            end_ns - self.window_s * NS_PER_S,
            end_ns,
            tags={"status": "succeeded"},
            limit=self.max_jobs,
            descending=True,
        )
        self._names = {}
        self._jobs = OrderedDict()
        self._take(sorted(points, key=lambda p: p.time_ns))

    def _take(self, points: list[Point]) -> None:
        """Add job summaries to the jobs held; drop those past the window or beyond `max_jobs`."""
        for point in points:
            seen = observation(point)
            if seen is not None:
                key = (point.tags.get("host", ""), point.tags.get("gpu", ""), point.time_ns)
                self._jobs.pop(key, None)
                self._jobs[key] = (point.time_ns, seen)
        oldest_ns = self._clock_ns() - self.window_s * NS_PER_S
        while self._jobs and (len(self._jobs) > self.max_jobs or next(iter(self._jobs.values()))[0] < oldest_ns):
            self._jobs.popitem(last=False)

    def _fit_laws(self) -> dict[str, Laws]:
        """Fit each GPU model's laws to its jobs held (the model named by the sampler where the job ran)."""
        names = ModelNames(self._store, self._clock_ns() + 60 * NS_PER_S)
        by_model: dict[str, list[Observation]] = {}
        for (host, gpu, _), (_, seen) in self._jobs.items():
            model = self._names.get((host, gpu))
            if model is None:
                model = names.name(host, gpu)
                if names.known(host, gpu):  # a GPU not sampled yet is looked up again at the next fit
                    self._names[(host, gpu)] = model
            by_model.setdefault(model, []).append(seen)
        return {model: Laws(seen) for model, seen in by_model.items()}
