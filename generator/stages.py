"""Time each of the pipeline's own stages by wrapping its methods in place; also where a job is cancelled.

Denoising steps are timed without waiting for the GPU. diffusers' DDIM step reads its timestep (a CUDA tensor)
as a Python number, which waits for the step's UNet pass, and a timer that synchronized after every step would
wait again: each wait leaves the GPU idle while Python books the step (the job's progress, its event, its log
line) and queues the next UNet pass, and any other thread of the process that takes the GIL then (the event
sender posting that very event) lengthens the idle gap. So the scheduler gets the timestep as a host number
(identical values, no wait), each step's end is a mark in the GPU's queue, and a step is booked one step later,
while the GPU runs the next one (`steps_in_flight=1`). A cancel or the loop's end books the steps still in flight.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from generator.device_clock import DeviceClock, HostClock
from generator.pipeline import host_timesteps

log = logging.getLogger("generator.stages")

# The pipeline method that each stage name times. prepare_latents is timed too: it runs right before the
# denoising loop, so its end marks the loop's start.
WRAPPED_METHODS = {
    "encode_prompt": "text_encoding",
    "_encode_image": "image_encoding",
    "prepare_image_latents": "image_latents",
    "decode_latents": "decode_video",
}


class JobCancelled(Exception):
    """Raised between denoising steps when the running job was cancelled; the pipeline stays usable."""


@dataclass(frozen=True)
class StageTiming:
    """One timed stage: when it started (epoch seconds), how long it took, and for a step its number."""

    stage: str
    started_at: float
    duration_s: float
    step: int | None = None
    total_steps: int | None = None
    # How much each of the timer's counters grew during the stage (only those that grew): what the stage set off,
    # such as the graphs a compiled module built.
    counted: Mapping[str, int] = field(default_factory=dict)


StageListener = Callable[[StageTiming], None]


def _no_listener(_: StageTiming) -> None:
    return None


class StageTimer:
    """Wrap a pipeline once; each run reports its stages to the listener given to `run()`.

    Args:
        pipe: the diffusers pipeline, wrapped in place.
        clock: the device's clock (a stage's time is its own, not the previous stage's kernels finishing).
        steps_in_flight: how many denoising steps may be queued on the device before the oldest is booked: 1 on a
            GPU (see the module's notes), 0 on a CPU, which finishes each step before booking it anyway.
        counters: counters to split by stage (name to running total), read at each stage's end.
    """

    def __init__(
        self,
        pipe: Any,
        clock: DeviceClock | None = None,
        *,
        steps_in_flight: int = 0,
        counters: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._pipe = pipe
        self._clock = clock or HostClock()
        self._steps_in_flight = steps_in_flight
        self._counters = counters
        self._counts: Mapping[str, int] = {}
        self._listener: StageListener = _no_listener
        self._cancelled: Callable[[], bool] = lambda: False
        self._loop_started = 0.0
        self._step_started = 0.0
        self._step = 0
        self._host_timesteps: list[Any] = []
        # Steps whose end is marked and not yet booked: (step, mark, counts at its end).
        self._in_flight: list[tuple[int, object, Mapping[str, int]]] = []
        for method, stage in WRAPPED_METHODS.items():
            self._wrap_method(method, stage)
        self._wrap_prepare_latents()
        self._wrap_scheduler_step()

    def run(self, listener: StageListener, cancelled: Callable[[], bool], **call_kwargs: Any) -> Any:
        """Run the pipeline once, reporting every stage to `listener` and checking `cancelled` between steps."""
        self._listener, self._cancelled = listener, cancelled
        self._in_flight = []
        self._counts = self._counters()
        try:
            return self._pipe(**call_kwargs)
        finally:
            try:
                if self._in_flight:  # the run failed between steps: book the steps the device finished
                    self._book_steps_in_flight()
            except RuntimeError:  # the device failed too (its error is the run's own): the steps stay unbooked
                log.warning("%d denoising step(s) of a failed run could not be timed", len(self._in_flight))
            finally:
                self._in_flight = []
                self._listener, self._cancelled = _no_listener, lambda: False

    def _report(self, stage: str, started: float, ended: float, counts: Mapping[str, int], **extra: Any) -> None:
        grew = {name: total - self._counts.get(name, 0) for name, total in counts.items()}
        self._counts = counts
        counted = {name: n for name, n in grew.items() if n > 0}
        self._listener(StageTiming(stage, started, max(ended - started, 0.0), counted=counted, **extra))

    def _wrap_method(self, method: str, stage: str) -> None:
        original = getattr(self._pipe, method)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self._clock.now()
            result = original(*args, **kwargs)
            self._report(stage, started, self._clock.now(), self._counters())
            return result

        # object.__setattr__: DiffusionPipeline's own __setattr__ treats attributes as config entries.
        object.__setattr__(self._pipe, method, timed)

    def _wrap_prepare_latents(self) -> None:
        original = self._pipe.prepare_latents
        scheduler = self._pipe.scheduler

        @functools.wraps(original)
        def mark_loop_start(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            # The pipeline sets the timesteps before it prepares the latents; reading them waits once per job.
            self._host_timesteps = host_timesteps(scheduler)
            self._loop_started = self._step_started = self._clock.now()
            self._step = 0
            return result

        object.__setattr__(self._pipe, "prepare_latents", mark_loop_start)

    def _wrap_scheduler_step(self) -> None:
        scheduler = self._pipe.scheduler
        original = scheduler.step

        # functools.wraps keeps the signature visible: the pipeline inspects step() for `eta` and `generator`.
        @functools.wraps(original)
        def timed_step(model_output: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
            if self._cancelled():
                self._book_steps_in_flight()
                raise JobCancelled("cancelled between denoising steps")
            if self._step < len(self._host_timesteps):
                timestep = self._host_timesteps[self._step]
            result = original(model_output, timestep, *args, **kwargs)
            self._step += 1
            self._in_flight.append((self._step, self._clock.mark(), self._counters()))
            total = len(scheduler.timesteps)
            if self._step == total:
                self._book_steps_in_flight()
                self._report("denoising", self._loop_started, self._step_started, self._counts, total_steps=total)
            else:
                while len(self._in_flight) > self._steps_in_flight:
                    self._book_oldest_step(total)
            return result

        scheduler.step = timed_step

    def _book_oldest_step(self, total: int) -> None:
        step, mark, counts = self._in_flight.pop(0)
        ended = self._clock.time_of(mark)
        self._report("denoising_step", self._step_started, ended, counts, step=step, total_steps=total)
        self._step_started = ended

    def _book_steps_in_flight(self) -> None:
        total = len(self._pipe.scheduler.timesteps)
        while self._in_flight:
            self._book_oldest_step(total)
