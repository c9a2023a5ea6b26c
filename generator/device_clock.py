"""Read when the device running the pipeline reached a point in its work, with or without waiting for it there.

A CUDA device runs queued work after the Python call that queued it returned. `now()` waits for that work (a
device-wide synchronize) and reads the wall clock: right for a stage that runs once per job. `mark()` waits for
nothing: it records a CUDA event in the stream, and `time_of(mark)` later says when the GPU reached it, on the
wall clock through the anchor that the last `now()` took. Between two denoising steps a wait leaves the GPU idle
while Python books the step and queues the next one; with marks the GPU keeps a step queued through that
bookkeeping (see generator/stages.py).

A CPU runs each call before it returns, so there a mark is simply the time it was made.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch


class DeviceClock(Protocol):
    """What the stage timer needs of a device's clock."""

    def now(self) -> float:
        """Wait for the work queued so far and return the wall time (epoch seconds)."""

    def mark(self) -> object:
        """Note this point in the queued work without waiting for it."""

    def time_of(self, mark: object) -> float:
        """Return when the device reached `mark` (epoch seconds), waiting for it if it has not yet."""


class HostClock:
    """The clock of a device that finishes each call before it returns: the CPU."""

    def now(self) -> float:
        """Return the wall time: nothing is queued."""
        return time.time()

    def mark(self) -> float:
        """Return the wall time: the work before the mark is done."""
        return time.time()

    def time_of(self, mark: object) -> float:
        """Return the mark itself."""
        assert isinstance(mark, float)
        return mark


class CudaClock:
    """Marks in a CUDA device's current stream, read on the wall clock through an anchor taken by `now()`."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._anchor_event: torch.cuda.Event | None = None
        self._anchor_s = 0.0

    def now(self) -> float:
        """Synchronize the device, then anchor later marks to this instant."""
        torch.cuda.synchronize(self._device)
        anchor = torch.cuda.Event(enable_timing=True)
        anchor.record(torch.cuda.current_stream(self._device))
        anchor.synchronize()  # the stream is empty: this returns at once, with the event's time taken
        self._anchor_event, self._anchor_s = anchor, time.time()
        return self._anchor_s

    def mark(self) -> torch.cuda.Event:
        """Record an event after the work queued so far; the GPU stamps it when it gets there."""
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    def time_of(self, mark: object) -> float:
        """Wait for the event (the GIL is released meanwhile) and place it on the wall clock."""
        assert isinstance(mark, torch.cuda.Event)
        mark.synchronize()
        if self._anchor_event is None:  # a mark before any anchor: read it as now
            return time.time()
        return self._anchor_s + self._anchor_event.elapsed_time(mark) / 1000.0


def clock_for(device: torch.device) -> DeviceClock:
    """Return the clock for the pipeline's device."""
    return CudaClock(device) if device.type == "cuda" else HostClock()
