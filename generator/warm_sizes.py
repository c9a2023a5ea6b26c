"""The job sizes a worker's process has run a denoising step at since its model loaded.

The first denoising step at a shape new to the process pays a one-off warm-up: cuDNN picks its kernels for the new
shapes and the caching allocator grows its pool (0.4-0.8 s on an H200); later jobs of that size do not pay it. Only
the process knows what it has run (its start-up warm-up, the compile warm-ups, jobs that failed or were cancelled
after a step, a degraded job's real size), so the worker keeps this set, says on each job's first step whether the
size was new (the monitor learns the warm-up from those jobs), and adds the predicted warm-up to a new size's time.

A size is the UNet's input shape: resolution, frames and whether guidance doubles the batch (without it the UNet
runs a batch of one, another shape).
"""

from __future__ import annotations

import threading

from generator.validation import JobParams

SizeKey = tuple[int, int, bool]  # resolution, frames, guided


def size_key(params: JobParams) -> SizeKey:
    """Return the shape the UNet sees for a job of `params`."""
    return (params.resolution, params.num_frames, params.guidance_scale > 1)


class WarmSizes:
    """The sizes this process has denoised at; safe to read from the HTTP threads while the worker adds to it."""

    def __init__(self) -> None:
        self._sizes: set[SizeKey] = set()
        self._lock = threading.Lock()

    def is_new(self, params: JobParams) -> bool:
        """Say whether a job of `params` would be the first of its size in this process (and pay the warm-up)."""
        with self._lock:
            return size_key(params) not in self._sizes

    def ran(self, params: JobParams) -> bool:
        """Note that a denoising step of `params`' size ran; return whether it was the first at that size."""
        key = size_key(params)
        with self._lock:
            new = key not in self._sizes
            self._sizes.add(key)
            return new
