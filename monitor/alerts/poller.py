"""Scrape the generator's /metrics and /health into the engine's generator values.

Windowed values follow PromQL: the error ratio is increase(failed) / increase(all) over the window and the
p95 is histogram_quantile(0.95, increase(buckets)) with linear interpolation inside the bucket; a counter
that goes down (the generator restarted) starts a new window.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

ERROR_STATUSES = ("failed", "error", "oom")


@dataclass
class _Scrape:
    at: float
    requests_by_status: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)


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
        self._failing = False

    def poll(self) -> dict[str, float | None]:
        """Return generator_up, consecutive_ooms, queue_pending, error_ratio_5m and request_p95_s."""
        values: dict[str, float | None] = dict.fromkeys(
            ("consecutive_ooms", "queue_pending", "error_ratio_5m", "request_p95_s")
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
        scrape = _Scrape(at=self._clock())
        for family in families:
            for sample in family.samples:
                if sample.name == "i2v_consecutive_oom_failures":
                    values["consecutive_ooms"] = max(values["consecutive_ooms"] or 0.0, sample.value)
                elif sample.name == "i2v_queue_pending":
                    values["queue_pending"] = (values["queue_pending"] or 0.0) + sample.value
                elif sample.name == "i2v_requests_total":
                    status = sample.labels.get("status", "")
                    scrape.requests_by_status[status] = scrape.requests_by_status.get(status, 0.0) + sample.value
                elif sample.name == "i2v_request_duration_seconds_bucket":
                    bound = float(sample.labels["le"])
                    scrape.buckets[bound] = scrape.buckets.get(bound, 0.0) + sample.value
        self._remember(scrape)
        values["error_ratio_5m"], values["request_p95_s"] = self._windowed(scrape)
        return values

    def _healthy(self) -> bool:
        try:
            response = self._session.get(f"{self.base_url}/health", timeout=self._timeout_s)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _remember(self, scrape: _Scrape) -> None:
        if self._scrapes:
            last = self._scrapes[-1]
            went_down = any(scrape.requests_by_status.get(k, 0.0) < v for k, v in last.requests_by_status.items())
            if went_down or sum(scrape.buckets.values()) < sum(last.buckets.values()):
                self._scrapes.clear()
        self._scrapes.append(scrape)
        # Keep one scrape at or before the window's start so the increase covers the whole window.
        while len(self._scrapes) > 2 and self._scrapes[1].at <= scrape.at - self._window_s:
            self._scrapes.popleft()

    def _windowed(self, scrape: _Scrape) -> tuple[float | None, float | None]:
        first = self._scrapes[0]
        if first is scrape:
            return None, None
        increase = {k: v - first.requests_by_status.get(k, 0.0) for k, v in scrape.requests_by_status.items()}
        total = sum(increase.values())
        errors = sum(v for k, v in increase.items() if k in self._error_statuses)
        ratio = errors / total if total > 0 else 0.0
        bucket_increase = {k: v - first.buckets.get(k, 0.0) for k, v in scrape.buckets.items()}
        return ratio, quantile_from_buckets(0.95, bucket_increase)
