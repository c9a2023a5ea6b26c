"""The GPU rules' values from sampler snapshots: Xids held for a window, counters turned into rates."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from monitor.alerts.gpu_values import GpuValues
from monitor.alerts.record import label_set
from monitor.collection.nvml import GpuProcessUtilization, GpuSnapshot, XidEvent

GPU0 = label_set(host="h1", gpu="0")
S = 1_000_000_000
BASE = GpuSnapshot(
    index=0,
    uuid="GPU-0",
    name="NVIDIA H200",
    up=True,
    memory_used_bytes=10,
    memory_total_bytes=100,
    remapped_rows_pending=False,
    remapped_rows_failed=False,
    pcie_replay_total=100,
    power_throttle_s=50.0,
    thermal_throttle_s=0.0,
    health_age_s=0.0,
    process_utilization=(GpuProcessUtilization(4242, 0.7, 0.3), GpuProcessUtilization(999, 0.2, 0.1)),
    xid_total=0,
)


def tick(values: GpuValues, gpu: GpuSnapshot, at_s: float, generator_pid: int | None = 4242) -> dict:
    snapshot = SimpleNamespace(gpus=(gpu,), time_ns=int(at_s * S), generator_pid=generator_pid)
    return values(snapshot, "h1")[GPU0]


def test_xids_count_by_tier_for_the_window_after_they_were_heard() -> None:
    values = GpuValues(xid_window_s=900)
    heard = replace(BASE, xid_events=(XidEvent(79, 1000 * S), XidEvent(13, 1000 * S), XidEvent(92, 1000 * S)))

    at_heard = tick(values, heard, 1000)
    later = tick(values, BASE, 1800)
    after_window = tick(values, BASE, 1901)

    assert (at_heard["gpu_xid_reset_required"], at_heard["gpu_xid_severe"], at_heard["gpu_xid_other"]) == (1, 1, 1)
    assert later["gpu_xid_reset_required"] == 1
    assert after_window["gpu_xid_reset_required"] == 0


def test_counters_become_rates_between_fresh_reads_and_reset_when_the_driver_reloads() -> None:
    values = GpuValues()

    first = tick(values, BASE, 0)
    carried = tick(values, replace(BASE, health_age_s=2.0, pcie_replay_total=999), 2)
    second = tick(values, replace(BASE, pcie_replay_total=160, power_throttle_s=80.0, thermal_throttle_s=6.0), 60)
    reloaded = tick(values, replace(BASE, pcie_replay_total=3), 70)

    assert first["gpu_pcie_replays_per_min"] is None  # one read is not a rate
    assert carried["gpu_pcie_replays_per_min"] is None  # a carried value is not a new read
    assert second["gpu_pcie_replays_per_min"] == 60.0
    assert second["gpu_power_throttle_ratio"] == 0.5
    assert second["gpu_thermal_throttle_ratio"] == 0.1
    assert reloaded["gpu_pcie_replays_per_min"] is None


def test_foreign_share_flags_and_what_a_card_lacks() -> None:
    values = GpuValues()

    known = tick(values, replace(BASE, remapped_rows_pending=True), 0)
    no_pid = tick(GpuValues(), BASE, 0, generator_pid=None)
    bare = tick(GpuValues(), GpuSnapshot(index=0, uuid="GPU-0", name="x", up=True), 0)

    assert known["gpu_foreign_utilization_ratio"] == 0.2
    assert known["gpu_memory_rows_pending"] == 1
    assert known["gpu_memory_rows_failed"] == 0
    assert known["gpu_xid_reset_required"] == 0
    assert no_pid["gpu_foreign_utilization_ratio"] is None  # every process would look foreign
    for name in (
        "gpu_memory_rows_pending",
        "gpu_pcie_replays_per_min",
        "gpu_xid_other",
        "gpu_foreign_utilization_ratio",
    ):
        assert bare[name] is None, name


def test_the_shipped_rules_page_on_an_xid_needing_a_reset_with_the_routing_labels() -> None:
    from pathlib import Path

    from monitor.alerts.engine import AlertEngine
    from monitor.alerts.record import FIRING
    from monitor.alerts.rules import load_rules

    now = [1000.0]
    engine = AlertEngine(load_rules(Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"), clock=lambda: now[0])
    values = GpuValues()
    heard = replace(BASE, xid_events=(XidEvent(79, 1000 * S),))

    changed = engine.evaluate(values(SimpleNamespace(gpus=(heard,), time_ns=1000 * S, generator_pid=4242), "h1"))

    (alert,) = [a for a in changed if a.name == "GpuXidResetRequired"]
    assert alert.state == FIRING
    assert alert.labels == {
        "alertname": "GpuXidResetRequired",
        "severity": "critical",
        "tier": "fatal",
        "page": "true",
        "pipeline": "monitor",
        "host": "h1",
        "gpu": "0",
    }
    assert alert.severity == "fatal"
    now[0] = 1000.0 + 901
    later = SimpleNamespace(gpus=(BASE,), time_ns=int(now[0] * S), generator_pid=4242)
    resolved = [a for a in engine.evaluate(values(later, "h1")) if a.name == "GpuXidResetRequired"]
    assert [a.state for a in resolved] == ["resolved"]  # 15 minutes after the Xid
    assert not [a for a in engine.active() if a.name == "GpuXidResetRequired"]
