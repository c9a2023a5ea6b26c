"""Standard metrics for a Flask service: process and platform collectors, build info, per-route HTTP metrics.

    registry = CollectorRegistry()
    add_standard_metrics(registry, service="generator")   # process_*, python_info, i2v_generator_build_info
    instrument(app, registry)                              # i2v_http_requests_total, i2v_http_request_duration_seconds

Routes are labelled by their template (`/api/jobs/<job_id>`), never by the raw path, so a scanner's random
paths cannot grow the series without bound: a request no route matched is labelled "unmatched".
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, PlatformCollector, ProcessCollector

from common.version import VERSION

#: Upper bounds (seconds): an API read in milliseconds up to a CSV export or a slow store's seconds.
HTTP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
UNMATCHED = "unmatched"


def add_standard_metrics(registry: CollectorRegistry, service: str) -> None:
    """Register the process and platform collectors and `i2v_<service>_build_info{version}` on `registry`."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info(f"i2v_{service}_build", f"The {service}'s version.", registry=registry).info({"version": VERSION})


def instrument(app: Flask, registry: CollectorRegistry) -> None:
    """Count and time every request `app` serves, by method, route template and status."""
    requests_total = Counter(
        "i2v_http_requests",
        "HTTP requests served, by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    duration = Histogram(
        "i2v_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route template.",
        ["method", "route"],
        buckets=HTTP_SECONDS_BUCKETS,
        registry=registry,
    )

    @app.before_request
    def _started() -> None:
        g.i2v_request_started = time.perf_counter()

    @app.after_request
    def _observed(response: Response) -> Response:
        started: Any = g.pop("i2v_request_started", None)
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        requests_total.labels(request.method, route, str(response.status_code)).inc()
        if started is not None:
            duration.labels(request.method, route).observe(time.perf_counter() - started)
        return response
