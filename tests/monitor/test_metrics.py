"""The monitor's /metrics: served from the sampler's last snapshot, never by calling NVML in the scrape."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.collection.host import HostSnapshot
from monitor.collection.nvml import CallStats, GpuProcess, GpuProcessUtilization, GpuSnapshot
from monitor.collection.sampler import Sampler
from monitor.web.metrics import make_registry, metrics_view

GPU = GpuSnapshot(
    index=0,
    uuid="GPU-0",
    name="NVIDIA H100 80GB HBM3",
    up=True,
    utilization_ratio=0.97,
    memory_used_bytes=14_000_000_000,
    memory_total_bytes=85_520_809_984,
    temperature_c=52.0,
    power_w=412.5,
    sm_clock_mhz=1980,
    throttle_reasons=0x44,
    ecc_errors_corrected=3,
    ecc_errors_uncorrected=0,
    energy_j=1234.5,
    energy_age_s=4.0,
    processes=(GpuProcess(4242, 13_000_000_000), GpuProcess(777, 500)),
    processes_age_s=0.0,
    pci_bus_id="00000000:19:00.0",
    process_utilization=(GpuProcessUtilization(4242, 0.9, 0.4), GpuProcessUtilization(777, 0.25, 0.1)),
    process_utilization_age_s=0.0,
    remapped_rows_correctable=2,
    remapped_rows_uncorrectable=0,
    remapped_rows_pending=True,
    remapped_rows_failed=False,
    pcie_replay_total=7,
    power_throttle_s=12.5,
    thermal_throttle_s=0.0,
    health_age_s=3.0,
    xid_total=3,
    xid_counts=((13, 1), (79, 2)),
)
LOST = GpuSnapshot(index=1, uuid="GPU-1", name="NVIDIA H100 80GB HBM3", up=False)


class CountingGpus:
    """A GPU reader that counts its reads, with fixed call costs and errors."""

    available = True
    reason = None
    driver_version = "580.65.06"

    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> tuple[GpuSnapshot, ...]:
        self.reads += 1
        return (GPU, LOST)

    def call_stats(self) -> dict[str, CallStats]:
        return {
            "nvmlDeviceGetMemoryInfo": CallStats(3, 9e-6, 4e-6, (2, 1, 0, 0, 0, 0, 0, 0, 0)),
            "nvmlDeviceGetTotalEnergyConsumption": CallStats(2, 0.021, 0.017, (0, 0, 0, 0, 1, 0, 1, 0, 0)),
        }

    def error_counts(self) -> dict[tuple[str, str], int]:
        return {("nvmlDeviceGetTotalEccErrors", "NotSupported"): 2}

    def shutdown(self) -> None:
        pass


class Host:
    """A host reader with fixed answers."""

    def read(self, generator_pid: int | None = None) -> HostSnapshot:
        return HostSnapshot(0.25, 8_000, 32_000, generator_pid, 700_000, None)


class WriterHealth:
    """Shaped like monitor.storage.writer.WriterHealth: the collector reads its to_dict()."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "store_reachable": False,
            "store_errors_total": 5,
            "spool_pending_points": 120,
            "spool_bytes": 4096,
            "buffer_points": 7,
            "points_written_total": 1000,
            "points_rejected_total": 1,
            "points_dropped_total": 0,
            "last_write_at": None,
        }


@pytest.fixture
def sampler() -> tuple[Sampler, CountingGpus]:
    """A sampler over fixed readers that has ticked once."""
    gpus = CountingGpus()
    sampler = Sampler(
        interval_s=2.0,
        host_name="h1",
        write=lambda points: None,
        gpus=gpus,
        host=Host(),
        generator_pid=lambda: 4242,
        wall_clock=lambda: 1_700_000_000_000_000_000,
    )
    sampler.tick()
    return sampler, gpus


def test_gpu_and_host_gauges_come_from_the_last_snapshot(sampler: tuple[Sampler, CountingGpus]) -> None:
    registry = make_registry(sampler[0])
    gpu0, gpu1 = {"host": "h1", "gpu": "0"}, {"host": "h1", "gpu": "1"}

    def value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    assert value("i2v_gpu_memory_used_bytes", gpu0) == 14_000_000_000
    assert value("i2v_gpu_memory_total_bytes", gpu0) == 85_520_809_984
    assert value("i2v_gpu_utilization_ratio", gpu0) == 0.97
    assert value("i2v_gpu_temperature_celsius", gpu0) == 52.0
    assert value("i2v_gpu_power_watts", gpu0) == 412.5
    assert value("i2v_gpu_sm_clock_hertz", gpu0) == 1_980_000_000
    assert value("i2v_gpu_energy_joules_total", gpu0) == 1234.5
    assert value("i2v_gpu_generator_memory_bytes", gpu0) == 13_000_000_000
    assert value("i2v_gpu_ecc_errors_total", {**gpu0, "type": "corrected"}) == 3
    assert value("i2v_gpu_throttle_reason", {**gpu0, "reason": "hw_thermal_slowdown"}) == 1
    assert value("i2v_gpu_throttle_reason", {**gpu0, "reason": "gpu_idle"}) == 0
    assert value("i2v_gpu_up", gpu0) == 1
    assert value("i2v_gpu_up", gpu1) == 0
    assert value("i2v_gpu_memory_used_bytes", gpu1) is None  # a lost GPU has no readings, only up=0
    assert value("i2v_host_cpu_ratio", {"host": "h1"}) == 0.25
    assert value("i2v_host_memory_used_bytes", {"host": "h1"}) == 8_000
    assert value("i2v_generator_rss_bytes", {"host": "h1"}) == 700_000
    assert value("i2v_outputs_disk_free_bytes", {"host": "h1"}) is None


def test_gpu_identity_and_health_are_exported_and_what_a_card_lacks_is_absent(
    sampler: tuple[Sampler, CountingGpus],
) -> None:
    registry = make_registry(sampler[0])
    gpu0, gpu1 = {"host": "h1", "gpu": "0"}, {"host": "h1", "gpu": "1"}

    def value(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    identity = {"uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:19:00.0"}
    assert value("i2v_gpu_info", {**gpu0, **identity, "driver_version": "580.65.06"}) == 1
    assert (
        value(
            "i2v_gpu_info",
            {**gpu1, "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "", "driver_version": "580.65.06"},
        )
        == 1
    )
    assert value("i2v_gpu_remapped_rows", {**gpu0, "type": "correctable"}) == 2
    assert value("i2v_gpu_remapped_rows_pending", gpu0) == 1
    assert value("i2v_gpu_remapped_rows_failed", gpu0) == 0
    assert value("i2v_gpu_retired_pages", {**gpu0, "cause": "double_bit_ecc"}) is None  # unsupported: absent
    assert value("i2v_gpu_pcie_replays_total", gpu0) == 7
    assert value("i2v_gpu_throttled_seconds_total", {**gpu0, "reason": "power"}) == 12.5
    assert value("i2v_gpu_generator_utilization_ratio", gpu0) == 0.9
    assert value("i2v_gpu_other_processes_utilization_ratio", gpu0) == 0.25
    assert value("i2v_gpu_xid_listening", gpu0) == 1
    assert value("i2v_gpu_xid_errors_total", {**gpu0, "tier": "fatal"}) == 2
    assert value("i2v_gpu_xid_errors_total", {**gpu0, "tier": "warning"}) == 1
    assert value("i2v_gpu_xid_errors_total", {**gpu0, "tier": "severe"}) == 0  # present from 0 for increase()
    assert value("i2v_gpu_xid_errors_by_code_total", {**gpu0, "xid": "79", "tier": "fatal"}) == 2
    assert value("i2v_gpu_xid_listening", gpu1) == 0  # cannot hear Xids: not "no Xid"
    assert value("i2v_gpu_xid_errors_total", {**gpu1, "tier": "fatal"}) is None
    assert value("i2v_gpu_pcie_replays_total", gpu1) is None


def test_nvml_and_sampler_health_are_exported(sampler: tuple[Sampler, CountingGpus]) -> None:
    registry = make_registry(sampler[0])

    def value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    energy = {"call": "nvmlDeviceGetTotalEnergyConsumption"}
    assert value("i2v_nvml_available") == 1
    assert value("i2v_nvml_errors_total", {"call": "nvmlDeviceGetTotalEccErrors", "error": "NotSupported"}) == 2
    assert value("i2v_nvml_call_duration_seconds_count", energy) == 2
    assert value("i2v_nvml_call_duration_seconds_sum", energy) == 0.021
    assert value("i2v_nvml_call_duration_seconds_bucket", {**energy, "le": "0.0025"}) == 1
    assert value("i2v_nvml_call_duration_seconds_bucket", {**energy, "le": "0.05"}) == 2
    assert value("i2v_nvml_call_duration_seconds_bucket", {**energy, "le": "+Inf"}) == 2
    assert value("i2v_sampler_tick_duration_seconds_count") == 1
    assert value("i2v_sampler_tick_cpu_seconds_count") == 1
    assert value("i2v_sampler_overruns_total") == 0
    assert value("i2v_sampler_errors_total") == 0
    assert value("i2v_sampler_last_success_timestamp_seconds") == 1_700_000_000.0


def test_the_store_writers_health_is_exported_when_given(sampler: tuple[Sampler, CountingGpus]) -> None:
    registry = make_registry(sampler[0], writer_health=WriterHealth)

    assert registry.get_sample_value("i2v_store_up") == 0
    assert registry.get_sample_value("i2v_store_spool_records") == 120
    assert registry.get_sample_value("i2v_store_errors_total") == 5
    assert registry.get_sample_value("i2v_store_points_written_total") == 1000
    assert make_registry(sampler[0]).get_sample_value("i2v_store_up") is None


def test_a_failing_writer_health_reads_as_store_down(sampler: tuple[Sampler, CountingGpus]) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("writer gone")

    registry = make_registry(sampler[0], writer_health=broken)

    assert registry.get_sample_value("i2v_store_up") == 0
    assert registry.get_sample_value("i2v_gpu_up", {"host": "h1", "gpu": "0"}) == 1


def test_a_scrape_never_calls_nvml(sampler: tuple[Sampler, CountingGpus]) -> None:
    registry = make_registry(sampler[0])
    reads = sampler[1].reads

    for _ in range(3):
        generate_latest(registry)

    assert sampler[1].reads == reads


def test_before_the_first_tick_only_health_is_exported() -> None:
    idle = Sampler(interval_s=2, host_name="h1", write=lambda p: None, gpus=CountingGpus(), host=Host())

    names = {f.name for f in text_string_to_metric_families(generate_latest(make_registry(idle)).decode())}

    assert "i2v_sampler_overruns" in names
    assert "i2v_gpu_up" not in names


def test_the_view_serves_parseable_text_and_openmetrics(sampler: tuple[Sampler, CountingGpus]) -> None:
    app = Flask(__name__)
    app.add_url_rule("/metrics", "metrics", metrics_view(make_registry(sampler[0], writer_health=WriterHealth)))
    client = app.test_client()

    text = client.get("/metrics")
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert text.status_code == 200
    assert text.content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.get_data(as_text=True))}
    assert families["i2v_gpu_energy_joules"].type == "counter"
    assert families["i2v_nvml_call_duration_seconds"].type == "histogram"
    assert families["i2v_sampler_tick_duration_seconds"].type == "summary"
    assert openmetrics.content_type.startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).rstrip().endswith("# EOF")
