"""Fault: NVML fails or a GPU vanishes under a running monitor, through the NVML wrapper's seam.

The monitor is the real one (`build_monitor`: writer, alerting, sampler on its schedule, the app served by
waitress); only the NVML module under `NvmlReader` is the recorded-answer fake, since no GPU exists here.
The monitor keeps serving and sampling the host, exports the GPU as down, and fires GpuLost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.spool import Spool
from monitor.collection.nvml import NvmlReader
from monitor.compose import Monitor, build_monitor
from monitor.config import MonitorConfig
from monitor.storage import schema
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer
from monitor.web.context import get_context
from tests.faults.procs import ROOT
from tests.monitor.test_nvml import FakeNvml, load
from tests.servers import AppServer, wait_for

# tests/data/nvml/vanish.json: two H100s; GPU 1 answers "GPU is lost" from tick 2. Tick 3 added here: GPU 0
# answers "Unknown Error" to everything too (the driver failing under both cards).
ALL_FAILING_TICK = 3


@pytest.fixture
def nvml() -> FakeNvml:
    """The recorded two-GPU answers, with the whole driver failing from ALL_FAILING_TICK."""
    recording = copy.deepcopy(load("vanish"))
    gpu0_ticks = recording["devices"][0]["ticks"]
    gpu0_ticks += [{} for _ in range(ALL_FAILING_TICK - len(gpu0_ticks))] + [{"*": {"nvml_error": 999}}]
    return FakeNvml(recording)


@pytest.fixture
def served(nvml: FakeNvml, tmp_path: Path) -> Iterator[tuple[str, Monitor]]:
    """A monitor built as `python -m monitor` builds it, on the fake NVML, sampling every 0.2 s."""
    rules = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())
    for rule in rules["rules"]:
        if rule["alert"] == "GpuLost":
            rule["for"] = "1s"  # 10 s in production
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    config = MonitorConfig(
        store_url=f"sqlite:///{tmp_path / 'monitor.db'}",
        data_dir=tmp_path,
        spool_dir=tmp_path / "spool",
        sample_interval_s=0.2,
        generator_url=None,
        host_name="nvml-host",
        outputs_dir=tmp_path,
        alert_rules=tmp_path / "rules.yml",
        alert_state_path=tmp_path / "alerts-state.json",
    ).validate()
    store = SqliteStore(tmp_path / "monitor.db")
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    writer.start()
    monitor = build_monitor(config, store, writer, gpus=NvmlReader(nvml))
    server = AppServer(monitor.app).start()
    monitor.start()
    try:
        yield server.url, monitor
    finally:
        server.stop()
        monitor.stop()


def status(url: str) -> dict[str, Any]:
    """Return the monitor's /monitor/api/status."""
    return requests.get(f"{url}/monitor/api/status", timeout=10).json()


def gpu_up_metric(url: str) -> dict[str, float]:
    """Return i2v_gpu_up by GPU index from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["gpu"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "i2v_gpu_up"
    }


def firing_gpus(url: str, name: str = "GpuLost") -> set[str]:
    """Return the GPUs an alert of that name fires for."""
    active = requests.get(f"{url}/monitor/api/alerts", timeout=10).json()["active"]
    return {a["labels"]["gpu"] for a in active if a["alertname"] == name and a["state"] == "firing"}


def test_a_vanishing_gpu_and_a_failing_driver_are_alerted_and_sampling_goes_on(
    served: tuple[str, Monitor], nvml: FakeNvml
) -> None:
    url, monitor = served
    wait_for(lambda: status(url)["sampler"]["gpus_up"] == 2, 30, "both GPUs sampled")
    assert firing_gpus(url) == set()

    nvml.tick = 2  # GPU 1 falls off the bus
    wait_for(lambda: firing_gpus(url) == {"1"}, 30, "GpuLost for GPU 1")
    assert gpu_up_metric(url) == {"0": 1.0, "1": 0.0}
    assert status(url)["sampler"]["gpus_up"] == 1

    nvml.tick = ALL_FAILING_TICK  # now every NVML call fails: the driver is gone under both cards
    wait_for(lambda: firing_gpus(url) == {"0", "1"}, 30, "GpuLost for both GPUs")
    assert gpu_up_metric(url) == {"0": 0.0, "1": 0.0}

    # The monitor itself goes on: it serves, keeps sampling the host, and the samples reach the store.
    ticks = status(url)["sampler"]["ticks_total"]
    wait_for(lambda: status(url)["sampler"]["ticks_total"] >= ticks + 5, 30, "five more sampler ticks")
    health = status(url)
    assert health["sampler"]["running"] is True
    assert health["sampler"]["errors_total"] == 0  # a lost GPU is a reading, not a sampler error
    writer = get_context(monitor.app).writer
    assert writer.flush(timeout_s=10)
    store = get_context(monitor.app).store
    host_points = store.query_points(schema.HOST_SAMPLE, 0, 2**62, limit=100_000)
    gpu_points = store.query_points(schema.GPU_SAMPLE, 0, 2**62, limit=100_000)
    assert len(host_points) >= ticks + 5
    assert {p.fields.get("up") for p in gpu_points if p.tags["gpu"] == "1"} == {True, False}
