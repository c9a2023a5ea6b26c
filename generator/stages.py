"""Time each of the pipeline's own stages by wrapping its methods in place; also where a job is cancelled."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


StageListener = Callable[[StageTiming], None]


def _no_listener(_: StageTiming) -> None:
    return None


class StageTimer:
    """Wrap a pipeline once; each run reports its stages to the listener given by `timing()`.

    `synchronize` waits for queued GPU work before a clock is read (torch.cuda.synchronize on CUDA), so that a
    stage's time is its own and not the previous stage's kernels finishing.
    """

    def __init__(self, pipe: Any, synchronize: Callable[[], None] = lambda: None) -> None:
        self._pipe = pipe
        self._synchronize = synchronize
        self._listener: StageListener = _no_listener
        self._cancelled: Callable[[], bool] = lambda: False
        self._loop_started = 0.0
        self._step_started = 0.0
        self._step = 0
        for method, stage in WRAPPED_METHODS.items():
            self._wrap_method(method, stage)
        self._wrap_prepare_latents()
        self._wrap_scheduler_step()

    def run(self, listener: StageListener, cancelled: Callable[[], bool], **call_kwargs: Any) -> Any:
        """Run the pipeline once, reporting every stage to `listener` and checking `cancelled` between steps."""
        self._listener, self._cancelled = listener, cancelled
        try:
            return self._pipe(**call_kwargs)
        finally:
            self._listener, self._cancelled = _no_listener, lambda: False

    def _now(self) -> float:
        self._synchronize()
        return time.time()

    def _report(self, stage: str, started: float, ended: float, **extra: Any) -> None:
        self._listener(StageTiming(stage, started, max(ended - started, 0.0), **extra))

    def _wrap_method(self, method: str, stage: str) -> None:
        original = getattr(self._pipe, method)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self._now()
            result = original(*args, **kwargs)
            self._report(stage, started, self._now())
            return result

        # object.__setattr__: DiffusionPipeline's own __setattr__ treats attributes as config entries.
        object.__setattr__(self._pipe, method, timed)

    def _wrap_prepare_latents(self) -> None:
        original = self._pipe.prepare_latents

        @functools.wraps(original)
        def mark_loop_start(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._loop_started = self._step_started = self._now()
            self._step = 0
            return result

        object.__setattr__(self._pipe, "prepare_latents", mark_loop_start)

    def _wrap_scheduler_step(self) -> None:
        scheduler = self._pipe.scheduler
        original = scheduler.step

        # functools.wraps keeps the signature visible: the pipeline inspects step() for `eta` and `generator`.
        @functools.wraps(original)
        def timed_step(*args: Any, **kwargs: Any) -> Any:
            if self._cancelled():
                raise JobCancelled("cancelled between denoising steps")
            result = original(*args, **kwargs)
            ended = self._now()
            self._step += 1
            total = len(scheduler.timesteps)
            self._report("denoising_step", self._step_started, ended, step=self._step, total_steps=total)
            self._step_started = ended
            if self._step == total:
                self._report("denoising", self._loop_started, ended, total_steps=total)
            return result

        scheduler.step = timed_step
