"""One GPU model's laws: peak memory and generation time fitted to its succeeded jobs, and their held-out error.

A job teaches memory when it reports its peak (`peak_memory_bytes`: torch's reserved peak for that job alone,
what the card had to give it), and time when it reports its denoising steps: the median step time teaches the
per-step law, and the rest of its run (running to end, less the steps and less its first step's warm-up) the law
of what happens outside the loop (see monitor/analysis/scaling.py).

The first denoising step at a size new to the generator's process carries a one-off warm-up (0.4-0.8 s on an
H200: cuDNN and the allocator at a new shape) that later jobs of that size in the same process do not pay. Left in
the outside part, it mixed jobs that paid it with repeats that did not: the outside law was neither, and the
held-out error of time reached 37.5%. So the warm-up (`warmup_s`: the first step beyond the median step) is taken
out of every job's outside part, and a law of its own learns it from the jobs the generator says were the first
at their size (`first_at_size`). A warm repeat takes outside + steps x per step; the first job of a size in a
process takes that plus the warm-up.

Held-out error: what the laws would have predicted for the jobs of each size had they not seen that size (leave
one size out: every job of one (resolution, frames) taken out of the fit at once, for each size in turn), against
what those jobs measured (the measurements the laws kept: outliers are counted apart). Each job is predicted the
way it ran: a first-at-size job with the warm-up, a warm repeat without. It answers "how wrong is a prediction for
a size never run here", the case admission cares about; leaving out one job at a time would let its twins of the
same size answer for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.analysis.scaling import MEMORY, OUTSIDE, STEP, WARMUP, Estimate, JobShape, Law, Size, Z

HELD_OUT_METHOD = (
    "leave one size out: the jobs of each (resolution, frames) predicted by a fit without that size, "
    "each the way it ran (a first-at-size job with the warm-up, a warm repeat without)"
)


@dataclass(frozen=True)
class Observation:
    """One succeeded job as the predictor learns from it."""

    gpu_model: str
    shape: JobShape
    peak_memory_bytes: int | None
    run_s: float | None
    step_s: float | None = None  # seconds per denoising step (the median step), when every step ran
    warmup_s: float | None = None  # the first step's seconds beyond the median step
    first_at_size: bool | None = None  # the generator's word: its process had not run this size (None: not said)

    @property
    def outside_s(self) -> float | None:
        """Return the run's seconds outside the denoising loop, its warm-up left out (None when a part is unknown)."""
        if self.run_s is None or self.step_s is None:
            return None
        outside = self.run_s - self.shape.steps * self.step_s - (self.warmup_s or 0.0)
        return outside if outside > 0 else None

    @property
    def learns_warmup(self) -> bool:
        """Return whether the job teaches the warm-up law: the first at its size, with a measured warm-up."""
        return self.first_at_size is True and self.warmup_s is not None and self.warmup_s > 0


class TimeLaw:
    """Generation time: the outside law plus steps times the per-step law, and a new size's one-off warm-up."""

    def __init__(self, outside: Law, step: Law, warmup: Law) -> None:
        """Combine the fitted laws."""
        self.outside, self.step, self.warmup = outside, step, warmup

    @property
    def n(self) -> int:
        """Return how many jobs taught it."""
        return self.step.n

    def value(
        self, shape: JobShape, outside: Sequence[float] | None = None, step: Sequence[float] | None = None
    ) -> float:
        """Return the predicted seconds of a warm repeat (optionally with other coefficients, for held-out errors)."""
        return self.outside.value(shape, outside) + shape.steps * self.step.value(shape, step)

    def estimate(self, shape: JobShape) -> Estimate:
        """Return the predicted seconds of a warm repeat and their margin: the parts' margins added in quadrature."""
        outside, step = self.outside.estimate(shape), self.step.estimate(shape)
        looped = shape.steps * step.value
        value = outside.value + looped
        if step.jobs == 0:
            return Estimate(value, value * Z * STEP.unmeasured_spread, 0, "prior", 1.0)
        margin = math.hypot(outside.margin, shape.steps * step.margin)
        prior_weight = (outside.value * outside.prior_weight + looped * step.prior_weight) / value
        return Estimate(value, margin, step.jobs, "learned", prior_weight)

    def warmup_estimate(self, shape: JobShape) -> Estimate:
        """Return the one-off warm-up the first job of this size in a generator process pays on top."""
        return self.warmup.estimate(shape)


def _errors(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Return the count, mean and max relative error of (predicted, measured) pairs."""
    errors = [abs(predicted - measured) / measured for predicted, measured in pairs]
    if not errors:
        return {"jobs": 0, "mean_relative_error": None, "max_relative_error": None}
    return {
        "jobs": len(errors),
        "mean_relative_error": round(sum(errors) / len(errors), 4),
        "max_relative_error": round(max(errors), 4),
    }


def _by_size_and_unit(items: list[tuple[JobShape, Any]]) -> dict[Size, dict[JobShape, list[tuple[JobShape, Any]]]]:
    """Group (shape, item) pairs by size, then by the one-step shape the laws' values depend on (steps multiply)."""
    grouped: dict[Size, dict[JobShape, list[tuple[JobShape, Any]]]] = {}
    units: dict[tuple[int, int, bool], JobShape] = {}
    for shape, item in items:
        key = (shape.resolution, shape.num_frames, shape.guidance_scale > 1)
        unit = units.get(key)
        if unit is None:
            unit = units[key] = JobShape(shape.resolution, shape.num_frames, 1, 9.0 if key[2] else 1.0)
        grouped.setdefault((key[0], key[1]), {}).setdefault(unit, []).append((shape, item))
    return grouped


class Laws:
    """The memory and time laws of one GPU model."""

    def __init__(self, observations: Sequence[Observation] = ()) -> None:
        """Fit every law to the observations that measured its quantity."""
        self.jobs = len(observations)
        self._peaks = [(o.shape, float(o.peak_memory_bytes)) for o in observations if o.peak_memory_bytes]
        # the jobs that measured every part of their time (the outside part, its warm-up left out, and the step)
        self._timed = [
            (o, outside, o.step_s)
            for o in observations
            if (outside := o.outside_s) is not None and o.step_s is not None and o.run_s is not None
        ]
        self._warmups = [(o.shape, float(o.warmup_s or 0.0)) for o in observations if o.learns_warmup]
        self.memory = Law(MEMORY, self._peaks)
        outside_law = Law(OUTSIDE, [(o.shape, outside) for o, outside, _ in self._timed])
        step_law = Law(STEP, [(o.shape, step) for o, _, step in self._timed])
        self.time = TimeLaw(outside_law, step_law, Law(WARMUP, self._warmups))

    def held_out(self) -> dict[str, Any]:
        """Return the leave-one-size-out error of peak memory and of generation time (see the module docstring).

        `time` covers every timed job, each predicted the way it ran; `time_warm` the repeats (a size their
        process had run), `time_first_at_size` the jobs that paid the warm-up. A job whose generator did not say
        (from before it did) is compared on its run without its warm-up, and counted in `time` alone.
        """
        memory: list[tuple[float, float]] = []
        peaks = [(shape, peak) for shape, peak in self._peaks if self.memory.kept(shape, peak)]
        timed = [
            (o.shape, o)
            for o, outside, step in self._timed
            if self.time.outside.kept(o.shape, outside) and self.time.step.kept(o.shape, step)
        ]
        for size, by_unit in _by_size_and_unit(peaks).items():
            theta = self.memory.without(size)
            for unit, measured in by_unit.items():
                predicted = self.memory.value(unit, theta)
                memory += [(predicted, peak) for _, peak in measured]
        time: dict[bool | None, list[tuple[float, float]]] = {True: [], False: [], None: []}
        for size, by_unit in _by_size_and_unit(timed).items():
            outside, step = self.time.outside.without(size), self.time.step.without(size)
            warmup = self.time.warmup.without(size)
            for unit, jobs in by_unit.items():
                fixed, per_step = self.time.outside.value(unit, outside), self.time.step.value(unit, step)
                warmup_s = self.time.warmup.value(unit, warmup)
                for shape, o in jobs:
                    warm_s = fixed + shape.steps * per_step
                    assert o.run_s is not None  # a timed job measured its run
                    if o.first_at_size is True:
                        time[True].append((warm_s + warmup_s, o.run_s))
                    elif o.first_at_size is False:
                        time[False].append((warm_s, o.run_s))
                    else:
                        time[None].append((warm_s, o.run_s - (o.warmup_s or 0.0)))
        every = [pair for pairs in time.values() for pair in pairs]
        sizes = {flag: len({o.shape.size for _, o in timed if o.first_at_size is flag}) for flag in (True, False)}
        return {
            "method": HELD_OUT_METHOD,
            "memory": {"sizes": len({shape.size for shape, _ in peaks}), **_errors(memory)},
            "time": {"sizes": len({shape.size for shape, _ in timed}), **_errors(every)},
            "time_warm": {"sizes": sizes[False], **_errors(time[False])},
            "time_first_at_size": {"sizes": sizes[True], **_errors(time[True])},
        }

    def describe(self) -> dict[str, Any]:
        """Return the fitted coefficients, spreads and job counts (the laws route's view of one GPU model)."""
        return {
            "memory_jobs": self.memory.n,
            "outliers_dropped": {
                "memory": self.memory.outliers,
                "time_per_step": self.time.step.outliers,
                "time_outside_steps": self.time.outside.outliers,
                "time_warmup": self.time.warmup.outliers,
            },
            "time_jobs": self.time.n,
            "warmup_jobs": self.time.warmup.n,
            "memory_bytes": self.memory.coefficients(),
            "time_per_step_s": self.time.step.coefficients(),
            "time_outside_steps_s": self.time.outside.coefficients(),
            "time_warmup_s": self.time.warmup.coefficients(),
            "memory_spread": round(self.memory.spread, 4),
            "time_per_step_spread": round(self.time.step.spread, 4),
            "time_outside_steps_spread": round(self.time.outside.spread, 4),
            "time_warmup_spread": round(self.time.warmup.spread, 4),
        }


PRIOR_LAWS = Laws()
