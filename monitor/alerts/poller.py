"""Scrape the generator's /metrics and /health into the engine's generator values.

Windowed values follow PromQL: the error ratio is increase(failed) / increase(all) over the window and the
p95 is histogram_quantile(0.95, increase(buckets)) with linear interpolation inside the bucket. A counter that
goes down (the generator restarted) is a reset, as in PromQL's increase(): its new value counts as an increase
from zero, so the jobs a crash lost, which the restarted generator counts as failed, reach the error ratio.
Compiles inside jobs are increase(i2v_compiles_total{phase="job"}) over an hour, with resets treated alike.
Quarantined packages are the sum of the gauge i2v_packages_quarantined (sizes run eager because their package
crashed a process).
The windows survive a monitor restart through `to_state()` / `restore()`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

ERROR_STATUSES = ("failed", "error", "oom")
REJECTED_STATUS = "rejected"
MIN_SUBMISSIONS = 10  # below this many submissions in the window the rejection ratio reads 0: too few to judge
COMPILE_WINDOW_S = 3600.0


@dataclass
class _Scrape:
    """One scrape's counters, made monotonic across resets (each key: the sum of its values before resets)."""

    at: float
    requests_by_status: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)
    rejected_by_reason: dict[str, float] = field(default_factory=dict)
    events_dropped: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Serialise for the state file (bucket bounds as text: JSON keys are strings, +Inf included)."""
        return {
            "at": self.at,
            "requests_by_status": self.requests_by_status,
            "buckets": {repr(bound): count for bound, count in self.buckets.items()},
            "rejected_by_reason": self.rejected_by_reason,
            "events_dropped": self.events_dropped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Scrape:
        """Rebuild from `to_dict()`."""
        return cls(
            at=float(data["at"]),
            requests_by_status={str(k): float(v) for k, v in data["requests_by_status"].items()},
            buckets={float(k): float(v) for k, v in data["buckets"].items()},
            rejected_by_reason={str(k): float(v) for k, v in data.get("rejected_by_reason", {}).items()},
            events_dropped=None if data.get("events_dropped") is None else float(data["events_dropped"]),
        )


class _Monotonic:
    """Turn raw counter readings into monotonic ones: a reading below the last one is a reset (PromQL's rule)."""

    def __init__(self) -> None:
        self.last_raw: dict[str, float] = {}
        self.offset: dict[str, float] = {}

    def adjust(self, key: str, raw: float) -> float:
        last = self.last_raw.get(key)
        if last is not None and raw < last:
            self.offset[key] = self.offset.get(key, 0.0) + last
        self.last_raw[key] = raw
        return raw + self.offset.get(key, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"last_raw": self.last_raw, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Monotonic:
        counters = cls()
        counters.last_raw = {str(k): float(v) for k, v in data.get("last_raw", {}).items()}
        counters.offset = {str(k): float(v) for k, v in data.get("offset", {}).items()}
        return counters


def quantile_from_buckets(q: float, buckets: dict[float, float]) -> float | None:
    """Estimate the q-quantile from cumulative bucket counts as PromQL's histogram_quantile does."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # as Prometheus: the highest finite bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


class GeneratorPoller:
    """Poll one generator and return its values by name; a failed scrape gives None, never an exception."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 1.5,
        window_s: float = 300.0,
        error_statuses: Iterable[str] = ERROR_STATUSES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Point at the generator's base URL; `timeout_s` stays well below the sampling period."""
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._window_s = window_s
        self._error_statuses = set(error_statuses)
        self._clock = clock
        self._scrapes: deque[_Scrape] = deque()
        self._counters = _Monotonic()
        # (time, compiles inside jobs so far, made monotonic): an hour of them, apart from the 5-minute scrapes.
        self._job_compiles: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()
        self._failing = False
        self.rejections: dict[str, float] = {}  # rejected submissions by reason over the window

    def to_state(self) -> dict[str, Any]:
        """Return the scrape window and the reset offsets, JSON-ready."""
        with self._lock:
            return {
                "scrapes": [scrape.to_dict() for scrape in self._scrapes],
                "counters": self._counters.to_dict(),
                "job_compiles": [list(point) for point in self._job_compiles],
            }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a window saved by `to_state()` (a monitor restart then keeps its 5-minute ratios)."""
        try:
            scrapes = deque(_Scrape.from_dict(item) for item in state.get("scrapes", []))
            counters = _Monotonic.from_dict(state.get("counters", {}))
            job_compiles = deque((float(at), float(total)) for at, total in state.get("job_compiles", []))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("the saved scrape window is unreadable (%s): starting a new one", exc)
            return
        with self._lock:
            self._scrapes, self._counters, self._job_compiles = scrapes, counters, job_compiles

    def poll(self) -> dict[str, float | None]:
        """Return generator_up, its gauges (OOM streak, queue, spool, quarantined packages) and windowed values."""
        values: dict[str, float | None] = dict.fromkeys(
            (
                "consecutive_ooms",
                "queue_pending",
                "error_ratio_5m",
                "request_p95_s",
                "rejection_ratio_5m",
                "events_lost_5m",
                "event_spool_fill_ratio",
                "job_compiles_1h",
                "packages_quarantined",
            )
        )
        values["generator_up"] = 1.0 if self._healthy() else 0.0
        try:
            response = self._session.get(f"{self.base_url}/metrics", timeout=self._timeout_s)
            response.raise_for_status()
            families = list(text_string_to_metric_families(response.text))
        except (requests.RequestException, ValueError) as exc:
            if not self._failing:
                log.warning(
                    "cannot scrape %s/metrics (%s); generator values unknown until it answers",
                    self.base_url,
                    exc,
                )
            self._failing = True
            return values
        if self._failing:
            log.info("scraping %s/metrics works again", self.base_url)
        self._failing = False
        raw = _Scrape(at=self._clock())
        job_compiles: float | None = None
        for family in families:
            for sample in family.samples:
                if sample.name == "i2v_consecutive_oom_failures":
                    values["consecutive_ooms"] = max(values["consecutive_ooms"] or 0.0, sample.value)
                elif sample.name == "i2v_queue_pending":
                    values["queue_pending"] = (values["queue_pending"] or 0.0) + sample.value
                elif sample.name == "i2v_requests_total":
                    status = sample.labels.get("status", "")
                    raw.requests_by_status[status] = raw.requests_by_status.get(status, 0.0) + sample.value
                elif sample.name == "i2v_requests_rejected_total":
                    reason = sample.labels.get("reason", "")
                    raw.rejected_by_reason[reason] = raw.rejected_by_reason.get(reason, 0.0) + sample.value
                elif sample.name == "i2v_request_duration_seconds_bucket":
                    bound = float(sample.labels["le"])
                    raw.buckets[bound] = raw.buckets.get(bound, 0.0) + sample.value
                elif sample.name in ("i2v_events_dropped_total", "i2v_events_refused_total"):
                    # Lost either way: dropped at the spool's bound or to a full disk, or refused as invalid.
                    raw.events_dropped = (raw.events_dropped or 0.0) + sample.value
                elif sample.name == "i2v_events_spool_fill_ratio":
                    values["event_spool_fill_ratio"] = max(values["event_spool_fill_ratio"] or 0.0, sample.value)
                elif sample.name == "i2v_packages_quarantined":
                    values["packages_quarantined"] = (values["packages_quarantined"] or 0.0) + sample.value
                elif sample.name == "i2v_compiles_total" and sample.labels.get("phase") == "job":
                    job_compiles = (job_compiles or 0.0) + sample.value
        with self._lock:  # to_state() may read the window from another thread (the restart action saving it)
            scrape = self._monotonic(raw)
            self._remember(scrape)
            windowed = self._windowed(scrape)
            values["job_compiles_1h"] = self._compiles_in_window(scrape.at, job_compiles)
        values["error_ratio_5m"], values["request_p95_s"], values["rejection_ratio_5m"], values["events_lost_5m"] = (
            windowed
        )
        return values

    def _monotonic(self, raw: _Scrape) -> _Scrape:
        adjust = self._counters.adjust
        return _Scrape(
            at=raw.at,
            requests_by_status={k: adjust(f"status:{k}", v) for k, v in raw.requests_by_status.items()},
            buckets={k: adjust(f"le:{k!r}", v) for k, v in raw.buckets.items()},
            rejected_by_reason={k: adjust(f"reason:{k}", v) for k, v in raw.rejected_by_reason.items()},
            events_dropped=None if raw.events_dropped is None else adjust("events_dropped", raw.events_dropped),
        )

    def _compiles_in_window(self, at: float, raw: float | None) -> float | None:
        """Return the compiles inside jobs over the last hour; None until two scrapes, or without compiling."""
        if raw is None:  # the generator runs eagerly (or predates compiling): nothing to count
            self._job_compiles.clear()
            return None
        self._job_compiles.append((at, self._counters.adjust("job_compiles", raw)))
        while len(self._job_compiles) > 2 and self._job_compiles[1][0] <= at - COMPILE_WINDOW_S:
            self._job_compiles.popleft()
        if len(self._job_compiles) < 2:
            return None
        return self._job_compiles[-1][1] - self._job_compiles[0][1]

    def _healthy(self) -> bool:
        try:
            response = self._session.get(f"{self.base_url}/health", timeout=self._timeout_s)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _remember(self, scrape: _Scrape) -> None:
        self._scrapes.append(scrape)
        # Keep one scrape at or before the window's start so the increase covers the whole window.
        while len(self._scrapes) > 2 and self._scrapes[1].at <= scrape.at - self._window_s:
            self._scrapes.popleft()
        # After a long monitor outage the only older scrape can be far behind: a window twice as long says
        # more than none, a day-long one does not.
        while len(self._scrapes) > 1 and self._scrapes[0].at < scrape.at - 2 * self._window_s:
            self._scrapes.popleft()

    def _windowed(self, scrape: _Scrape) -> tuple[float | None, float | None, float | None, float | None]:
        first = self._scrapes[0]
        if first is scrape:
            self.rejections = {}
            return None, None, None, None
        increase = {k: v - first.requests_by_status.get(k, 0.0) for k, v in scrape.requests_by_status.items()}
        total = sum(increase.values())
        errors = sum(v for k, v in increase.items() if k in self._error_statuses)
        # A submission refused at once is no job: the error ratio is over the jobs that ran or were cancelled.
        jobs = total - increase.get(REJECTED_STATUS, 0.0)
        error_ratio = errors / jobs if jobs > 0 else 0.0
        rejected = increase.get(REJECTED_STATUS, 0.0)
        rejection_ratio = rejected / total if total >= MIN_SUBMISSIONS else 0.0
        self.rejections = {
            reason: count - first.rejected_by_reason.get(reason, 0.0)
            for reason, count in scrape.rejected_by_reason.items()
            if count - first.rejected_by_reason.get(reason, 0.0) > 0
        }
        bucket_increase = {k: v - first.buckets.get(k, 0.0) for k, v in scrape.buckets.items()}
        events_lost = (
            None
            if scrape.events_dropped is None or first.events_dropped is None
            else scrape.events_dropped - first.events_dropped
        )
        return error_ratio, quantile_from_buckets(0.95, bucket_increase), rejection_ratio, events_lost
