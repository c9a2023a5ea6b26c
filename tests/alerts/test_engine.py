"""Engine semantics driven through the sampler's seam with an injected clock."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitor.alerts.engine import AlertEngine
from monitor.alerts.record import FIRING, PENDING, RESOLVED, label_set
from monitor.alerts.rules import Rule, parse_rules
from monitor.alerts.service import snapshot_values
from tests.alerts.conftest import FakeClock

GPU0 = label_set(host="h1", gpu="0")
GPU1 = label_set(host="h1", gpu="1")


def memory_rules(default_rules: list[Rule]) -> list[Rule]:
    return [rule for rule in default_rules if rule.alert == "GpuMemoryHigh"]


def feed(engine: AlertEngine, clock: FakeClock, ratio: float | None, labels=GPU0, step_s: float = 2.0):
    clock.advance(step_s)
    return engine.evaluate({labels: {"gpu_memory_ratio": ratio}})


def states(engine: AlertEngine) -> dict[str, str]:
    return {alert.severity: alert.state for alert in engine.active()}


def test_fires_only_after_for_holds(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    assert feed(engine, clock, 0.86)[0].state == PENDING
    for _ in range(14):  # 28 s above 85%: still pending (for: 30s)
        assert feed(engine, clock, 0.88) == []
    assert states(engine) == {"warning": PENDING}
    (fired,) = feed(engine, clock, 0.88)
    assert fired.state == FIRING
    assert fired.severity == "warning"
    assert fired.labels == {
        "alertname": "GpuMemoryHigh",
        "severity": "warning",
        "tier": "warning",
        "host": "h1",
        "gpu": "0",
        "pipeline": "monitor",
    }
    assert fired.annotations["description"].startswith("GPU 0 on h1 uses 88% of its memory")
    assert fired.fired_at - fired.active_at == pytest.approx(30.0)


def test_a_dip_below_the_clear_threshold_while_pending_starts_over(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    feed(engine, clock, 0.9)
    feed(engine, clock, 0.5, step_s=20)
    assert engine.active() == []
    feed(engine, clock, 0.9, step_s=20)
    assert feed(engine, clock, 0.9, step_s=20) == []  # 20 s into the new pending period
    assert states(engine) == {"warning": PENDING}


def test_one_sample_above_the_severe_threshold_does_not_fire_it(clock: FakeClock, default_rules: list[Rule]) -> None:
    # 96% once, then 91% for 10 s: memory was never "above 95% for 10 s"; 91% is only above severe's clear.
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    feed(engine, clock, 0.96)
    assert states(engine) == {"warning": PENDING, "severe": PENDING}
    changes = []
    for _ in range(10):  # 20 s at 91%
        changes += feed(engine, clock, 0.91)
    assert [(a.severity, a.state) for a in changes] == []
    assert "severe" not in states(engine)
    assert all(alert.severity != "severe" for alert in engine.notifiable())


def test_one_hot_sample_then_below_the_threshold_does_not_fire_the_temperature_alert(
    clock: FakeClock, default_rules: list[Rule]
) -> None:
    rules = [rule for rule in default_rules if rule.alert == "GpuTemperatureHigh"]
    engine = AlertEngine(rules, clock=clock)
    clock.advance(2)
    engine.evaluate({GPU0: {"gpu_temperature_c": 86.0}})
    for temperature in [81, 82, 83, 84, 85] * 4:  # 40 s between the clear (80) and the threshold (85)
        clock.advance(2)
        assert engine.evaluate({GPU0: {"gpu_temperature_c": float(temperature)}}) == []
    assert engine.active() == []


def test_a_firing_alert_holds_between_clear_and_threshold_but_a_pending_one_does_not(
    clock: FakeClock, default_rules: list[Rule]
) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    feed(engine, clock, 0.86)
    feed(engine, clock, 0.86, step_s=30)
    assert states(engine) == {"warning": FIRING}
    assert feed(engine, clock, 0.82) == []  # firing: hysteresis holds it above the 80% clear
    assert states(engine) == {"warning": FIRING}
    (severe_pending,) = feed(engine, clock, 0.96)
    assert (severe_pending.severity, severe_pending.state) == ("severe", PENDING)
    assert feed(engine, clock, 0.92) == []  # pending: below 95% ends it, although above the 90% clear
    assert states(engine) == {"warning": FIRING}


def test_no_flapping_around_the_threshold(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    feed(engine, clock, 0.90)
    feed(engine, clock, 0.90, step_s=30)
    assert states(engine) == {"warning": FIRING}
    changes = []
    for i in range(50):  # oscillating across 85% (and staying above the 80% clear) for 100 s
        changes += feed(engine, clock, 0.84 if i % 2 else 0.86)
    assert changes == []
    assert states(engine) == {"warning": FIRING}


def test_resolves_once_past_the_clear_threshold(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    feed(engine, clock, 0.97)
    feed(engine, clock, 0.97, step_s=30)
    assert states(engine) == {"warning": FIRING, "severe": FIRING}
    (severe_resolved,) = feed(engine, clock, 0.89)  # below severe's 90% clear, above warning's 80%
    assert (severe_resolved.severity, severe_resolved.state) == ("severe", RESOLVED)
    assert states(engine) == {"warning": FIRING}
    assert feed(engine, clock, 0.81) == []
    (warning_resolved,) = feed(engine, clock, 0.80)
    assert warning_resolved.state == RESOLVED
    assert warning_resolved.resolved_at == clock.now
    assert engine.active() == []
    assert [alert.severity for alert in engine.history()] == ["warning", "severe"]
    # A new crossing is a new alert (a new id), pending again.
    (again,) = feed(engine, clock, 0.86)
    assert again.state == PENDING
    assert again.id != warning_resolved.id


def test_one_alert_per_rule_and_label_set(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock)
    for _ in range(40):
        clock.advance(2)
        engine.evaluate({GPU0: {"gpu_memory_ratio": 0.9}, GPU1: {"gpu_memory_ratio": 0.9}})
        engine.evaluate({GPU0: {"gpu_memory_ratio": 0.91}})  # a second feed in the same tick
    active = engine.active()
    assert sorted(alert.labels["gpu"] for alert in active) == ["0", "1"]
    assert {alert.state for alert in active} == {FIRING}
    assert len(engine.notifiable()) == 2


def test_a_missing_value_holds_and_a_stale_alert_resolves(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine(memory_rules(default_rules), clock=clock, stale_after_s=60)
    feed(engine, clock, 0.9)
    feed(engine, clock, 0.9, step_s=30)
    assert feed(engine, clock, None, step_s=30) == []
    assert states(engine) == {"warning": FIRING}
    clock.advance(31)
    (resolved,) = engine.evaluate({GPU1: {"gpu_memory_ratio": 0.1}})
    assert resolved.state == RESOLVED
    assert "no value" in (resolved.note or "")


def test_state_survives_a_restart(tmp_path: Path, clock: FakeClock, default_rules: list[Rule]) -> None:
    path = tmp_path / "state" / "alerts.json"
    engine = AlertEngine(memory_rules(default_rules), clock=clock, state_path=path)
    feed(engine, clock, 0.9)
    feed(engine, clock, 0.9, step_s=30)
    (fired,) = engine.active()
    engine.ack(fired.id, "alice")
    assert json.loads(path.read_text())["active"][0]["state"] == FIRING
    assert not list(path.parent.glob("*.tmp"))

    clock.advance(600)  # the monitor was down ten minutes
    restored = AlertEngine(memory_rules(default_rules), clock=clock, state_path=path, stale_after_s=60)
    (alert,) = restored.active()
    assert (alert.id, alert.state, alert.fired_at, alert.acked_by) == (fired.id, FIRING, fired.fired_at, "alice")
    assert feed(restored, clock, 0.9) == []  # same alert, not a new one and no new notification
    (resolved,) = feed(restored, clock, 0.5)
    assert resolved.id == fired.id
    assert resolved.state == RESOLVED


def test_a_corrupt_state_file_is_set_aside(tmp_path: Path, clock: FakeClock, default_rules: list[Rule]) -> None:
    path = tmp_path / "alerts.json"
    path.write_text("{not json")
    engine = AlertEngine(default_rules, clock=clock, state_path=path)
    assert engine.active() == []
    assert (tmp_path / "alerts.json.corrupt").exists()


def test_for_zero_fires_at_once_and_ge_threshold_clears_on_reset(clock: FakeClock) -> None:
    (rule,) = parse_rules(
        "rules:\n  - {alert: OomStreak, severity: fatal, expr: consecutive_ooms, op: '>=', threshold: 3,"
        " annotations: {summary: s, description: 'd {{value}}', runbook: r}}\n"
    )
    engine = AlertEngine([rule], clock=clock)
    host = label_set(host="h1")
    assert engine.evaluate({host: {"consecutive_ooms": 2}}) == []
    (fired,) = engine.evaluate({host: {"consecutive_ooms": 3}})
    assert fired.state == FIRING
    assert fired.annotations["description"] == "d 3"
    assert engine.evaluate({host: {"consecutive_ooms": 4}}) == []
    (resolved,) = engine.evaluate({host: {"consecutive_ooms": 0}})
    assert resolved.state == RESOLVED


def test_sampler_snapshots_become_gpu_values() -> None:
    gpus = [
        SimpleNamespace(index=0, up=True, memory_used_bytes=76, memory_total_bytes=80, temperature_c=71),
        SimpleNamespace(index=1, up=False, memory_used_bytes=None, memory_total_bytes=None, temperature_c=None),
    ]
    values = snapshot_values(SimpleNamespace(gpus=gpus, host=SimpleNamespace()), "h1")
    load = ("gpu_up", "gpu_memory_ratio", "gpu_temperature_c")
    assert {k: values[GPU0][k] for k in load} == {"gpu_up": 1.0, "gpu_memory_ratio": 0.95, "gpu_temperature_c": 71.0}
    assert {k: values[GPU1][k] for k in load} == {"gpu_up": 0.0, "gpu_memory_ratio": None, "gpu_temperature_c": None}
    assert values[GPU0]["gpu_xid_reset_required"] is None  # cannot hear Xids: unknown, not 0
