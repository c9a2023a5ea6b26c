"""Serve the monitor's Prometheus /metrics from the sampler's last snapshot; a scrape never calls NVML.

Register it in the app factory:

    from monitor.web.metrics import make_registry, metrics_view
    app.add_url_rule("/metrics", "metrics", metrics_view(make_registry(sampler, writer_health=writer.health)))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from flask import Response, request
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from monitor.collection.nvml import DURATION_BUCKETS_S, THROTTLE_REASONS, CallStats
from monitor.collection.sampler import Snapshot

log = logging.getLogger(__name__)


class SamplerView(Protocol):
    """What the collector reads from the sampler (monitor.collection.sampler.Sampler)."""

    @property
    def latest(self) -> Snapshot | None:
        """Return the last snapshot."""
        ...

    def health(self) -> dict[str, Any]:
        """Return the sampler's health."""
        ...

    def nvml_call_stats(self) -> Mapping[str, CallStats]:
        """Return NVML call costs by function."""
        ...

    def nvml_error_counts(self) -> Mapping[tuple[str, str], int]:
        """Return NVML errors by (function, error)."""
        ...


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class MonitorCollector:
    """Yield the GPU, host, NVML and sampler metrics from the sampler's last state, plus the store writer's.

    Args:
        sampler: the sampler whose last snapshot and health are served.
        writer_health: returns the store writer's health (`monitor.storage.writer.Writer.health`: a WriterHealth, or
            any mapping with its keys); a key that is missing or None leaves its metric out.
    """

    def __init__(self, sampler: SamplerView, writer_health: Callable[[], Any] | None = None):
        self._sampler = sampler
        self._writer_health = writer_health
        self._writer_failing = False

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by the registry on each scrape)."""
        snapshot = self._sampler.latest
        if snapshot is not None:
            yield from self._gpu_metrics(snapshot)
            yield from self._host_metrics(snapshot)
        yield from self._nvml_metrics(snapshot)
        yield from self._sampler_metrics()
        if self._writer_health is not None:
            yield from self._store_metrics()

    def _gpu_metrics(self, snapshot: Snapshot) -> Iterator[Metric]:
        labels = ("host", "gpu")
        gauges = {
            "memory_used_bytes": (_gauge("i2v_gpu_memory_used_bytes", "GPU memory in use.", labels), 1),
            "memory_total_bytes": (_gauge("i2v_gpu_memory_total_bytes", "GPU memory in all.", labels), 1),
            "utilization_ratio": (
                _gauge("i2v_gpu_utilization_ratio", "Share of the last sample period a kernel ran (0-1).", labels),
                1,
            ),
            "temperature_c": (_gauge("i2v_gpu_temperature_celsius", "GPU core temperature.", labels), 1),
            "power_w": (_gauge("i2v_gpu_power_watts", "GPU power draw (a 1 s average on H100).", labels), 1),
            "sm_clock_mhz": (_gauge("i2v_gpu_sm_clock_hertz", "SM clock.", labels), 1_000_000),
        }
        up = _gauge("i2v_gpu_up", "1 while the GPU answers NVML, 0 once it is lost.", labels)
        generator = _gauge("i2v_gpu_generator_memory_bytes", "GPU memory held by the generator process.", labels)
        energy = CounterMetricFamily(
            "i2v_gpu_energy_joules",
            "Energy used since the driver loaded (slow cadence).",
            labels=list(labels),
        )
        ecc = CounterMetricFamily(
            "i2v_gpu_ecc_errors", "ECC errors since the driver loaded (volatile).", labels=[*labels, "type"]
        )
        throttle = _gauge("i2v_gpu_throttle_reason", "1 while a clocks-throttle reason holds.", [*labels, "reason"])
        for gpu in snapshot.gpus:
            values = [snapshot.host_name, str(gpu.index)]
            up.add_metric(values, 1.0 if gpu.up else 0.0)
            for attribute, (family, scale) in gauges.items():
                value = getattr(gpu, attribute)
                if value is not None:
                    family.add_metric(values, float(value) * scale)
            if gpu.energy_j is not None:
                energy.add_metric(values, gpu.energy_j)
            for kind, count in (
                ("corrected", gpu.ecc_errors_corrected),
                ("uncorrected", gpu.ecc_errors_uncorrected),
            ):
                if count is not None:
                    ecc.add_metric([*values, kind], float(count))
            if gpu.throttle_reasons is not None:
                for bit, reason in THROTTLE_REASONS.items():
                    throttle.add_metric([*values, reason], 1.0 if gpu.throttle_reasons & bit else 0.0)
            if gpu.processes is not None and snapshot.generator_pid is not None:
                held = sum(p.used_memory_bytes or 0 for p in gpu.processes if p.pid == snapshot.generator_pid)
                generator.add_metric(values, float(held))
        yield up
        for family, _ in gauges.values():
            yield family
        yield from (generator, energy, ecc, throttle)

    def _host_metrics(self, snapshot: Snapshot) -> Iterator[Metric]:
        host = snapshot.host
        if host is None:
            return
        labels = ["host"]
        for name, doc, value in (
            ("i2v_host_cpu_ratio", "Host CPU busy share since the last sample (0-1).", host.cpu_ratio),
            ("i2v_host_memory_used_bytes", "Host memory in use (total - available).", host.memory_used_bytes),
            ("i2v_host_memory_total_bytes", "Host memory in all.", host.memory_total_bytes),
            (
                "i2v_generator_rss_bytes",
                "Resident memory of the generator process.",
                host.generator_rss_bytes,
            ),
            (
                "i2v_outputs_disk_free_bytes",
                "Free space on the outputs folder's disk.",
                host.outputs_disk_free_bytes,
            ),
        ):
            family = _gauge(name, doc, labels)
            if value is not None:
                family.add_metric([snapshot.host_name], float(value))
            yield family

    def _nvml_metrics(self, snapshot: Snapshot | None) -> Iterator[Metric]:
        available = _gauge("i2v_nvml_available", "1 when NVML started and found a GPU.", [])
        if snapshot is not None:
            available.add_metric([], 1.0 if snapshot.nvml_available else 0.0)
        yield available
        errors = CounterMetricFamily("i2v_nvml_errors", "NVML calls that returned an error.", labels=["call", "error"])
        for (call, error), count in sorted(self._sampler.nvml_error_counts().items()):
            errors.add_metric([call, error], float(count))
        yield errors
        durations = HistogramMetricFamily(
            "i2v_nvml_call_duration_seconds", "Time spent in each NVML function.", labels=["call"]
        )
        for call, stats in sorted(self._sampler.nvml_call_stats().items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS_S, float("inf")), stats.bucket_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            durations.add_metric([call], buckets, stats.total_s)
        yield durations

    def _sampler_metrics(self) -> Iterator[Metric]:
        health = self._sampler.health()
        yield SummaryMetricFamily(
            "i2v_sampler_tick_duration_seconds",
            "Wall time of each sampler tick.",
            count_value=health["ticks_total"],
            sum_value=health["tick_duration_sum_s"],
        )
        yield SummaryMetricFamily(
            "i2v_sampler_tick_cpu_seconds",
            "CPU time of each sampler tick (its thread).",
            count_value=health["ticks_total"],
            sum_value=health["tick_cpu_sum_s"],
        )
        yield CounterMetricFamily(
            "i2v_sampler_overruns",
            "Ticks skipped because the previous one overran.",
            value=health["overruns_total"],
        )
        yield CounterMetricFamily(
            "i2v_sampler_errors", "Tick stages that raised (the tick went on).", value=health["errors_total"]
        )
        last = _gauge("i2v_sampler_last_success_timestamp_seconds", "When the last complete sample was taken.", [])
        if health["last_sample_time_s"] is not None:
            last.add_metric([], health["last_sample_time_s"])
        yield last

    def _store_metrics(self) -> Iterator[Metric]:
        assert self._writer_health is not None
        try:
            raw = self._writer_health()
            health: Mapping[str, Any] = raw.to_dict() if hasattr(raw, "to_dict") else raw
        except Exception:  # a scrape boundary: the store's health must not break the GPU metrics
            if not self._writer_failing:
                log.exception("the store writer's health could not be read (logged once while it recurs)")
            self._writer_failing = True
            health = {"store_reachable": False}
        else:
            self._writer_failing = False
        for key, name, doc, kind in _STORE_METRICS:
            value = health.get(key)
            if value is not None:
                yield kind(name, doc, value=float(value))


# (writer health key, metric name, help, type): the store helper's monitor.storage.writer.WriterHealth fields.
_STORE_METRICS: tuple[tuple[str, str, str, type[GaugeMetricFamily] | type[CounterMetricFamily]], ...] = (
    ("store_reachable", "i2v_store_up", "1 while the store accepts writes.", GaugeMetricFamily),
    (
        "spool_pending_points",
        "i2v_store_spool_records",
        "Points waiting in the disk spool.",
        GaugeMetricFamily,
    ),
    ("spool_bytes", "i2v_store_spool_bytes", "Size of the disk spool.", GaugeMetricFamily),
    (
        "buffer_points",
        "i2v_store_buffer_points",
        "Points buffered in memory for the next batch.",
        GaugeMetricFamily,
    ),
    ("store_errors_total", "i2v_store_errors", "Store writes that failed (retried).", CounterMetricFamily),
    ("points_written_total", "i2v_store_points_written", "Points the store accepted.", CounterMetricFamily),
    (
        "points_rejected_total",
        "i2v_store_points_rejected",
        "Points the store refused as bad.",
        CounterMetricFamily,
    ),
    (
        "points_dropped_total",
        "i2v_store_points_dropped",
        "Points lost (spool full or unreadable).",
        CounterMetricFamily,
    ),
)


def make_registry(sampler: SamplerView, writer_health: Callable[[], Any] | None = None) -> CollectorRegistry:
    """Build the monitor's registry: one collector over the sampler and, if given, the store writer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(sampler, writer_health))
    return registry


def metrics_view(registry: CollectorRegistry) -> Callable[[], Any]:
    """Return a Flask view that serves `registry` in the format the scraper asks for (text or OpenMetrics)."""

    def metrics() -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), content_type=content_type)

    return metrics
