"""The generator's Prometheus metrics, named by Prometheus' conventions (base units, _total, _seconds)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.http_metrics import add_standard_metrics

if TYPE_CHECKING:
    from generator.retention import Retention

JOB_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
STATUSES = ("succeeded", "failed", "cancelled", "rejected")
# Why a submission was refused at once: by HTTP status of the refusal, or a full queue (429).
REJECTION_REASONS = {400: "invalid_input", 413: "too_large", 415: "unsupported_media", 429: "queue_full"}
STAGE_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class GeneratorMetrics:
    """The metric families one generator process exports; each its own registry so tests stay apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        add_standard_metrics(r, "generator")
        # A "request" is one generation job, counted when it ends (succeeded, failed, cancelled) or is refused
        # (rejected: invalid input, too large, full queue): the error rate is failed / jobs (all but rejected) in
        # PromQL. A job lost to a crash is counted failed by the restarted process.
        self.requests = Counter("i2v_requests", "Generation requests by outcome.", ["status"], registry=r)
        self.rejected = Counter(
            "i2v_requests_rejected", "Submissions refused at once, by reason.", ["reason"], registry=r
        )
        # Every series exists from the start at 0: a counter that first appears at 1 (a crash-lost job counted
        # by the restarted process) is an increase PromQL's rate() cannot see.
        for status in STATUSES:
            self.requests.labels(status)
        for reason in REJECTION_REASONS.values():
            self.rejected.labels(reason)
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
            "i2v_job_peak_memory_bytes",
            "Peak GPU memory torch's allocator reserved during the last job on each GPU.",
            ["gpu"],
            registry=r,
        )
        self.events_spooled = Gauge("i2v_events_spooled", "Events waiting in the spool for the monitor.", registry=r)
        self.events_spool_fill = Gauge(
            "i2v_events_spool_fill_ratio",
            "The event spool's share of its bound in use (0-1); at 1 its oldest events are dropped.",
            registry=r,
        )
        # One per stage in which a compiled module built graphs: phase "warmup" before /ready (expected), "job"
        # when a job waited (a size the warm-up did not cover, or a guard that keeps failing: the alert's input).
        self.compiles = Counter(
            "i2v_compiles",
            "torch.compile compiles of a model module, by module and phase (warmup before ready, or job).",
            ["module", "phase"],
            registry=r,
        )

        # A compiled package (the aoti backend's) that killed a process on its load or first call, or raised there:
        # the next process quarantines it and runs its size eager (generator/package_guard.py). Counted by the
        # process that found it; the gauge says, in every later process too, how many sizes run eager for it.
        self.package_crashes = Counter(
            "i2v_package_crashes",
            "Compiled packages found to have crashed a process on their load or first call (or to have raised "
            "there), quarantined by this process, by module.",
            ["module"],
            registry=r,
        )
        self.packages_quarantined = Gauge(
            "i2v_packages_quarantined",
            "Warm-up sizes this process runs eager because their compiled package is quarantined, by module.",
            ["module"],
            registry=r,
        )

    def reject(self, http_status: int) -> None:
        """Count a refused submission in i2v_requests_total{status="rejected"} and by its reason."""
        self.requests.labels("rejected").inc()
        self.rejected.labels(REJECTION_REASONS.get(http_status, "invalid_input")).inc()

    def expect_compiles(self, module: str) -> None:
        """Export `module`'s compile counters at 0 before the first compile, so increase() sees the first one."""
        for phase in ("warmup", "job"):
            self.compiles.labels(module, phase)

    def expect_packages(self, module: str) -> None:
        """Export `module`'s package crash counter and quarantine gauge at 0 before any crash (aoti backend)."""
        self.package_crashes.labels(module)
        self.packages_quarantined.labels(module)

    def watch_events(self, sender: EventFigures) -> None:
        """Export the event sender's losses, refusals and failed attempts, read at each scrape."""
        self.registry.register(_EventDelivery(sender))

    def watch_retention(self, retention: Retention) -> None:
        """Export what retention removed and the bytes the kept outputs take, read at each scrape."""
        self.registry.register(_RetentionFigures(retention))

    def watch_queue(self, read: Callable[[], dict[str, tuple[int, float | None]]]) -> None:
        """Export `read()` (per priority: jobs waiting, oldest one's age) as gauges at each scrape."""
        self.registry.register(_QueueDepths(read))


class _QueueDepths:
    """Per-priority queue depth and oldest job's age, read when scraped (what the HPA scales workers on)."""

    def __init__(self, read: Callable[[], dict[str, tuple[int, float | None]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """Yield both gauges (without samples when the queue cannot be read: queue mode with Redis away)."""
        depths = self._read()
        depth = GaugeMetricFamily("i2v_queue_depth", "Jobs waiting for a worker, by priority.", labels=["priority"])
        age = GaugeMetricFamily(
            "i2v_queue_oldest_age_seconds",
            "Age of the oldest job waiting at each priority (0 when none waits).",
            labels=["priority"],
        )
        for priority, (count, oldest_s) in depths.items():
            depth.add_metric([priority], count)
            age.add_metric([priority], oldest_s or 0.0)
        yield depth
        yield age


class _RetentionFigures:
    """Retention's counters, read when scraped."""

    def __init__(self, retention: Retention) -> None:
        self._retention = retention

    def collect(self) -> Iterator[Metric]:
        """Yield the removed jobs by reason and the outputs' size."""
        removed = CounterMetricFamily(
            "i2v_retention_removed_jobs",
            "Finished jobs removed with their outputs, by the limit that removed them (age, size).",
            labels=["reason"],
        )
        for reason, count in sorted(self._retention.removed_total.items()):
            removed.add_metric([reason], count)
        yield removed
        yield GaugeMetricFamily(
            "i2v_outputs_bytes",
            "Bytes the finished jobs' outputs (inputs and clips) take, as retention last measured them.",
            value=self._retention.outputs_bytes,
        )


class EventFigures(Protocol):
    """What the metrics read from the event sender (read-only)."""

    @property
    def dropped_total(self) -> int:
        """Return the events lost."""
        ...

    @property
    def refused_total(self) -> int:
        """Return the events the monitor refused as invalid."""
        ...

    @property
    def failures_total(self) -> int:
        """Return the delivery attempts that failed."""
        ...


class _EventDelivery:
    """Counters read from the event sender when scraped (it counts; the registry only reads)."""

    def __init__(self, sender: EventFigures) -> None:
        self._sender = sender

    def collect(self) -> Iterator[Metric]:
        """Yield the delivery figures."""
        sender = self._sender
        yield CounterMetricFamily(
            "i2v_events_dropped",
            "Events lost: the spool's oldest at its bound, or unspoolable.",
            value=sender.dropped_total,
        )
        yield CounterMetricFamily(
            "i2v_events_refused",
            "Events the monitor refused as invalid (its 400 named them), dropped one by one.",
            value=sender.refused_total,
        )
        yield CounterMetricFamily(
            "i2v_event_delivery_failures",
            "Delivery attempts the monitor did not take; the events stayed spooled for the next attempt.",
            value=sender.failures_total,
        )
