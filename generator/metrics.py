"""The generator's Prometheus metrics, named by Prometheus' conventions (base units, _total, _seconds)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

JOB_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
STAGE_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class GeneratorMetrics:
    """The metric families one generator process exports; each its own registry so tests stay apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # A "request" is one generation job, counted when it ends (succeeded, failed, cancelled) or is refused
        # (rejected: invalid input, full queue, does not fit): the error rate is failed / all in PromQL.
        self.requests = Counter("i2v_requests", "Generation requests by outcome.", ["status"], registry=r)
        self.request_duration = Histogram(
            "i2v_request_duration_seconds",
            "Time from submission to a job's end.",
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "i2v_stage_duration_seconds",
            "Time each pipeline stage took.",
            ["stage"],
            buckets=STAGE_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_pending = Gauge("i2v_queue_pending", "Jobs waiting for a worker.", registry=r)
        self.jobs_running = Gauge("i2v_jobs_running", "Jobs being generated now.", registry=r)
        self.consecutive_ooms = Gauge(
            "i2v_consecutive_oom_failures", "Jobs failed by out-of-memory in a row; 0 after a success.", registry=r
        )
        self.ready = Gauge("i2v_model_ready", "1 when the model is loaded and warmed.", registry=r)
        self.peak_memory = Gauge(
            "i2v_job_peak_memory_bytes", "Peak GPU memory torch's allocator reserved during the last job.", registry=r
        )
        self.events_spooled = Gauge("i2v_events_spooled", "Events waiting in the spool for the monitor.", registry=r)

    def watch_events_dropped(self, read: Callable[[], int]) -> None:
        """Export `read()` (the event sender's lost events) as i2v_events_dropped_total at each scrape."""
        self.registry.register(_EventsDropped(read))


class _EventsDropped:
    """A counter read from the event sender when scraped: events lost at the spool's bound or to a full disk."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """Yield the counter."""
        yield CounterMetricFamily(
            "i2v_events_dropped", "Events lost: the spool's oldest at its bound, or unspoolable.", value=self._read()
        )
