"""Each GPU job's energy, from NVML's total-energy counter over the job's span, added to its job summary.

The sampler stores the counter (`energy_j` in `gpu_sample` points: joules since the driver loaded) only on the
ticks that read it, on its own cadence (every 10 s by default: one read costs about 3 ms). A job's energy on its
GPU is E(end) - E(start), each read off the counter by linear interpolation between the two readings around it:
exact while the power is steady between two readings, and never off by more than what the GPU drew in the two
edge intervals. It is the whole GPU's energy over the span, idle draw and any other process included: what the
card cost while the job held it.

A job's end arrives before the next reading exists, so `EnergyMeter` keeps each ended GPU job (its summary
point) and on every sampler tick computes the energy of those whose end a stored reading has passed, then writes
the summary point again with `energy_j` (both stores merge a rewritten point's fields into the stored ones).
A job gets no energy (left blank) when no reading precedes its start (the monitor started mid-job, or the card
has no counter), when the counter went backwards in its span (a driver reload or GPU reset), when a gap
between two readings around it exceeds `max_gap_s`, or when no reading follows its end within `give_up_s`.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.units import NS_PER_S
from monitor.storage.base import Point, Store, StoreRejected, StoreUnavailable
from monitor.storage.schema import GPU_SAMPLE, JOB_SUMMARY

log = logging.getLogger(__name__)

MAX_GAP_S = 120.0  # a gap longer than this between two counter readings is not interpolated across
GIVE_UP_S = 180.0  # a job whose end no reading follows this long after gets no energy
MAX_PENDING = 1000


def energy_between(readings: Sequence[tuple[int, float]], start_ns: int, end_ns: int, max_gap_s: float) -> float | None:
    """Return the counter's increase over [start_ns, end_ns] from (time_ns, joules) readings sorted by time.

    None when a reading does not exist on both sides of each end, the readings around an end are further apart
    than `max_gap_s`, or the counter decreased in between.
    """
    times = [t for t, _ in readings]

    def at(moment_ns: int) -> float | None:
        after = bisect.bisect_left(times, moment_ns)
        if after < len(times) and times[after] == moment_ns:
            return readings[after][1]
        if after == 0 or after == len(times):
            return None
        (t0, e0), (t1, e1) = readings[after - 1], readings[after]
        if (t1 - t0) > max_gap_s * NS_PER_S or e1 < e0:
            return None
        return e0 + (e1 - e0) * (moment_ns - t0) / (t1 - t0)

    first, last = at(start_ns), at(end_ns)
    if first is None or last is None:
        return None
    inside = [e for t, e in readings if start_ns <= t <= end_ns]
    if any(b < a for a, b in zip([first, *inside], [*inside, last], strict=False)):
        return None  # the counter went back: the driver reloaded or the GPU was reset in the job's span
    return last - first


@dataclass(frozen=True)
class _Pending:
    point: Point
    start_ns: int
    end_ns: int
    give_up_ns: int


class EnergyMeter:
    """Add `energy_j` to GPU jobs' summaries once the energy counter has been read past their end.

    Args:
        store: where the counter readings (`gpu_sample`) are read.
        write: where the rewritten summary points go (the writer's durable write).
        clock_ns: wall-clock nanoseconds.
        max_gap_s: the longest gap between readings interpolated across.
        give_up_s: how long after a job's end a reading is waited for.
    """

    def __init__(
        self,
        store: Store,
        write: Callable[[Sequence[Point]], None],
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        max_gap_s: float = MAX_GAP_S,
        give_up_s: float = GIVE_UP_S,
    ) -> None:
        self._store, self._write, self._clock_ns = store, write, clock_ns
        self.max_gap_s, self.give_up_s = max_gap_s, give_up_s
        self._pending: OrderedDict[tuple[str, str, int], _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self.measured_total = 0
        self.unmeasured_total = 0

    def pending(self) -> int:
        """Return how many jobs wait for a reading after their end."""
        with self._lock:
            return len(self._pending)

    def on_summary(self, point: Point) -> None:
        """Keep a GPU job's summary (the job summarizer's hook) until its energy can be computed."""
        gpu = point.tags.get("gpu", "")
        started_us = point.fields.get("started_at_us")
        if point.measurement != JOB_SUMMARY or not gpu or gpu == "cpu" or not isinstance(started_us, int):
            return
        key = (point.tags.get("host", ""), gpu, point.time_ns)
        pending = _Pending(point, started_us * 1000, point.time_ns, point.time_ns + int(self.give_up_s * NS_PER_S))
        with self._lock:
            self._pending[key] = pending
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
                self.unmeasured_total += 1

    def tick(self, _snapshot: object = None) -> None:
        """Compute and write the energy of the jobs whose end a stored reading has passed (on each sampler tick)."""
        with self._lock:
            waiting = list(self._pending.items())
        if not waiting:
            return
        now_ns = self._clock_ns()
        written: list[Point] = []
        done: list[tuple[str, str, int]] = []
        for key, job in waiting:
            try:
                readings = self._readings(job)
            except (StoreUnavailable, StoreRejected) as e:
                log.warning("energy: cannot read the counter (%s); trying again on the next tick", e)
                return
            if readings and readings[-1][0] >= job.end_ns:
                joules = energy_between(readings, job.start_ns, job.end_ns, self.max_gap_s)
                done.append(key)
                if joules is None:
                    self.unmeasured_total += 1
                    continue
                fields = {"job_id": job.point.fields.get("job_id"), "energy_j": round(joules, 3)}
                written.append(Point(JOB_SUMMARY, job.point.tags, fields, job.point.time_ns))
                self.measured_total += 1
            elif now_ns >= job.give_up_ns:
                done.append(key)
                self.unmeasured_total += 1
        if written:
            self._write(written)
        with self._lock:
            for key in done:
                self._pending.pop(key, None)

    def _readings(self, job: _Pending) -> list[tuple[int, float]]:
        margin_ns = int(self.max_gap_s * NS_PER_S)
        tags = {"host": job.point.tags.get("host", ""), "gpu": job.point.tags.get("gpu", "")}
        points = self._store.query_points(GPU_SAMPLE, job.start_ns - margin_ns, job.end_ns + margin_ns, tags=tags)
        readings = []
        for point in points:
            value = point.fields.get("energy_j")
            if isinstance(value, int | float) and not isinstance(value, bool):
                readings.append((point.time_ns, float(value)))
        return readings
