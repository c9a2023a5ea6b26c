"""The increase of a counter over a sliding window, as PromQL's increase(): a reading below the last is a reset."""

from __future__ import annotations

from collections import deque


class CounterWindow:
    """Feed a counter's readings; read how much it grew over the last `window_s` (resets counted as PromQL does).

    The window starts at `start` with the value 0: the counters it watches are the monitor's own, which start at 0
    with the process, so what they count before the first reading is an increase too.
    """

    def __init__(self, start: float, window_s: float = 300.0) -> None:
        """Begin at time `start` (Unix seconds) with the value 0."""
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque([(start, 0.0)])
        self._last_raw = 0.0
        self._offset = 0.0

    def add(self, at: float, raw: float) -> float:
        """Record a reading at `at` and return the increase over the window ending there."""
        if raw < self._last_raw:
            self._offset += self._last_raw
        self._last_raw = raw
        self._samples.append((at, raw + self._offset))
        # Keep one reading at or before the window's start, so the increase covers the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= at - self._window_s:
            self._samples.popleft()
        return self._samples[-1][1] - self._samples[0][1]
