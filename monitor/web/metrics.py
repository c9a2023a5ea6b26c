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

from common.http_metrics import add_standard_metrics
from monitor.collection import xid as xid_catalogue
from monitor.collection.nvml import DURATION_BUCKETS_S, THROTTLE_REASONS, CallStats
from monitor.collection.sampler import Snapshot, process_utilization

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
        info = _gauge(
            "i2v_gpu_info",
            "Always 1: a GPU's identity (join on host and gpu; uuid follows the card across slots).",
            [*labels, "uuid", "name", "pci_bus_id", "driver_version"],
        )
        for gpu in snapshot.gpus:
            values = [snapshot.host_name, str(gpu.index)]
            info.add_metric([*values, gpu.uuid, gpu.name, gpu.pci_bus_id or "", snapshot.driver_version or ""], 1.0)
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
        yield info
        yield up
        for family, _ in gauges.values():
            yield family
        yield from (generator, energy, ecc, throttle)
        yield from self._gpu_health_metrics(snapshot)

    def _gpu_health_metrics(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Yield the health metrics: each only for the GPUs whose card and driver report it (never a 0)."""
        labels = ["host", "gpu"]
        retired = _gauge("i2v_gpu_retired_pages", "Memory pages retired (before Ampere), by cause.", [*labels, "cause"])
        retired_pending = _gauge(
            "i2v_gpu_retired_pages_pending", "1 while a page waits for a reset to be retired.", labels
        )
        rows = _gauge(
            "i2v_gpu_remapped_rows", "Memory rows remapped (Ampere and later), by error type.", [*labels, "type"]
        )
        rows_pending = _gauge("i2v_gpu_remapped_rows_pending", "1 while a row remap waits for a GPU reset.", labels)
        rows_failed = _gauge("i2v_gpu_remapped_rows_failed", "1 once a row remap failed (replace the GPU).", labels)
        replays = CounterMetricFamily(
            "i2v_gpu_pcie_replays", "PCIe packets replayed since the driver loaded (link errors).", labels=labels
        )
        throttled = CounterMetricFamily(
            "i2v_gpu_throttled_seconds",
            "Time the clocks were held below the requested ones, by reason (power cap, thermal).",
            labels=[*labels, "reason"],
        )
        generator_sm = _gauge(
            "i2v_gpu_generator_utilization_ratio", "The generator process's share of the SMs (0-1).", labels
        )
        other_sm = _gauge(
            "i2v_gpu_other_processes_utilization_ratio",
            "Every other process's share of the SMs (0-1): a foreign process competing with the generator.",
            labels,
        )
        listening = _gauge("i2v_gpu_xid_listening", "1 while Xid errors of this GPU can be heard.", labels)
        # One series per tier for every GPU that can report Xids, from 0: PromQL's increase() then sees the first.
        xids = CounterMetricFamily(
            "i2v_gpu_xid_errors",
            "Xid errors heard since the monitor started, by tier (fatal: the GPU needs a reset or reboot).",
            labels=[*labels, "tier"],
        )
        by_code = CounterMetricFamily(
            "i2v_gpu_xid_errors_by_code",
            "Xid errors heard since the monitor started, by code and tier.",
            labels=[*labels, "xid", "tier"],
        )
        for gpu in snapshot.gpus:
            values = [snapshot.host_name, str(gpu.index)]
            for cause, count in (("single_bit_ecc", gpu.retired_pages_sbe), ("double_bit_ecc", gpu.retired_pages_dbe)):
                if count is not None:
                    retired.add_metric([*values, cause], float(count))
            for kind, count in (
                ("correctable", gpu.remapped_rows_correctable),
                ("uncorrectable", gpu.remapped_rows_uncorrectable),
            ):
                if count is not None:
                    rows.add_metric([*values, kind], float(count))
            for family, flag in (
                (retired_pending, gpu.retired_pages_pending),
                (rows_pending, gpu.remapped_rows_pending),
                (rows_failed, gpu.remapped_rows_failed),
            ):
                if flag is not None:
                    family.add_metric(values, 1.0 if flag else 0.0)
            if gpu.pcie_replay_total is not None:
                replays.add_metric(values, float(gpu.pcie_replay_total))
            for reason, seconds in (("power", gpu.power_throttle_s), ("thermal", gpu.thermal_throttle_s)):
                if seconds is not None:
                    throttled.add_metric([*values, reason], seconds)
            ours, theirs = process_utilization(gpu, snapshot.generator_pid)
            if ours is not None and theirs is not None:
                generator_sm.add_metric(values, ours)
                other_sm.add_metric(values, theirs)
            listening.add_metric(values, 0.0 if gpu.xid_total is None else 1.0)
            if gpu.xid_total is not None:
                by_tier = dict.fromkeys(xid_catalogue.TIERS, 0)
                for code, count in gpu.xid_counts:
                    by_tier[xid_catalogue.tier(code)] += count
                for tier, count in by_tier.items():
                    xids.add_metric([*values, tier], float(count))
                for code, count in gpu.xid_counts:
                    by_code.add_metric([*values, str(code), xid_catalogue.tier(code)], float(count))
        yield from (retired, retired_pending, rows, rows_pending, rows_failed, replays, throttled)
        yield from (generator_sm, other_sm, listening, xids, by_code)

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
            ("i2v_outputs_disk_size_bytes", "Size of the outputs folder's disk.", host.outputs_disk_total_bytes),
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
    """Build the monitor's registry: one collector over the sampler and, if given, the store writer; the process,
    platform and build-info metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(sampler, writer_health))
    add_standard_metrics(registry, "monitor")
    return registry


def metrics_view(registry: CollectorRegistry) -> Callable[[], Any]:
    """Return a Flask view that serves `registry` in the format the scraper asks for (text or OpenMetrics)."""

    def metrics() -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), content_type=content_type)

    return metrics
