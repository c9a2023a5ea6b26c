"""An open dashboard tab as the monitor sees it: the requests monitor/web/static/dashboard.js makes, on its cadence.

Every sampling period (the interval `status` reports): `status`, the GPU and host `series` of the window, and
`alerts`. The slower set (`jobs` over 24 h, `queue`, `quality`, `recommendation`) when the ingest count moved
since the last time, or every 5 s; `targets` and a HEAD of `reports/jobs.csv` every 30 s. Follow the page when
it changes its cadence: this is what the GPU acceptance run charges the sidecar for an open dashboard. Each
route's latencies are kept.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from bench.harness import summary

SLOW_EVERY_S = 5.0
TARGETS_EVERY_S = 30.0
GPU_FIELDS = "utilization_ratio,memory_used_bytes,memory_total_bytes,temperature_c,power_w"
HOST_FIELDS = "cpu_ratio,memory_used_bytes,memory_total_bytes"


class DashboardPoller:
    """Poll a monitor like one open dashboard tab, in a thread, until stopped."""

    def __init__(self, monitor_url: str, *, host: str, window: str = "1h") -> None:
        """Poll `monitor_url` for `host`'s data over `window` (the page's default is 1 h)."""
        self.api = f"{monitor_url}/monitor/api"
        self.host, self.window = host, window
        self.session = requests.Session()
        self.latencies_s: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._polling = threading.Lock()  # held for each round of requests; pause() takes it between rounds
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def _get(self, route: str, method: str = "GET", **params: Any) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            answer = self.session.request(method, f"{self.api}/{route}", params=params, timeout=30)
        except requests.RequestException:
            self.errors[route] = self.errors.get(route, 0) + 1
            return None
        self.latencies_s.setdefault(route, []).append(time.perf_counter() - started)
        if answer.status_code >= 500:
            self.errors[route] = self.errors.get(route, 0) + 1
        if method == "HEAD":
            return None
        try:
            body = answer.json()
        except ValueError:
            return None
        return body if answer.ok and isinstance(body, dict) else None

    def _run(self) -> None:
        interval_s, ingest_seen, slow_at, targets_at = 2.0, None, 0.0, 0.0
        while not self._stop.is_set():
            with self._polling:
                started = time.monotonic()
                status = self._get("status")
                if status is not None:
                    interval_s = max(0.25, (status.get("sampler") or {}).get("interval_s") or interval_s)
                ingest = ((status or {}).get("ingest") or {}).get("events_accepted_total")
                if started - targets_at >= TARGETS_EVERY_S:
                    self._get("targets", window="24h")
                    self._get("reports/jobs.csv", "HEAD", since="5m")
                    targets_at = started
                self._get("series", measurement="gpu_sample", fields=GPU_FIELDS, window=self.window, host=self.host)
                self._get("series", measurement="host_sample", fields=HOST_FIELDS, window=self.window, host=self.host)
                self._get("alerts")
                if ingest != ingest_seen or started - slow_at >= SLOW_EVERY_S:
                    self._get("jobs", window="24h", host=self.host, limit=20)
                    self._get("queue", window=self.window, host=self.host)
                    self._get("quality", window=self.window, host=self.host)
                    self._get("recommendation", host=self.host)
                    slow_at, ingest_seen = started, ingest
            self._stop.wait(max(0.1, interval_s - (time.monotonic() - started)))

    def pause(self) -> None:
        """Stop polling after the round in flight (as a closed tab); return once no request is in flight."""
        self._polling.acquire()

    def resume(self) -> None:
        """Poll again after a pause()."""
        self._polling.release()

    def start(self) -> DashboardPoller:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop polling; return each route's request count, latency p50/p99/max (ms) and errors."""
        self._stop.set()
        self._thread.join(timeout=60)
        return {
            route: {**summary(values, 1000.0), "errors": self.errors.get(route, 0)}
            for route, values in sorted(self.latencies_s.items())
        }
