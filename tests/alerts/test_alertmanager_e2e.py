"""End to end: the monitor's alerts through a real Alertmanager (the shipped config) to a webhook receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry

from monitor.alerts.service import AlertService
from monitor.alerts.settings import AlertSettings
from tests.alerts.conftest import Alertmanager, FakeClock, FakeGenerator, Receiver, wait_for

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.yml"


def test_config(receiver_url: str) -> str:
    """The shipped routing and inhibition, with the receivers pointed at the test and second-long timings."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = receiver_url + "/" + receiver["name"]
    return yaml.safe_dump(config)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    server = Alertmanager(tmp_path / "am", test_config(receiver.url))
    yield server
    server.close()


def gpus(*ratios: float) -> SimpleNamespace:
    """A sampler snapshot with one 80 GB GPU per ratio."""
    total = 80 * 10**9
    return SimpleNamespace(
        gpus=[
            SimpleNamespace(
                index=i, up=True, memory_used_bytes=int(r * total), memory_total_bytes=total, temperature_c=60.0
            )
            for i, r in enumerate(ratios)
        ]
    )


def am_alert(am: Alertmanager, gpu: str, severity: str) -> dict[str, Any] | None:
    """Return the alert as Alertmanager holds it now, or None."""
    response = requests.get(
        am.url + "/api/v2/alerts",
        params={
            "filter": [f'gpu="{gpu}"', f'tier="{severity}"'],
            "active": "true",
            "silenced": "true",
            "inhibited": "true",
        },
        timeout=2,
    )
    response.raise_for_status()
    alerts = response.json()
    return alerts[0] if alerts else None


def received(receiver: Receiver, path: str, gpu: str, severity: str, status: str) -> list[dict[str, Any]]:
    return [
        a
        for a in receiver.alerts(path)
        if a["labels"].get("gpu") == gpu and a["labels"]["tier"] == severity and a["status"] == status
    ]


def test_alerts_route_by_severity_severe_inhibits_warning_and_resolves_arrive(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    # Alertmanager works in real time: start the injected clock a minute in the past so that every startsAt
    # and endsAt the engine sends is a real, recent time.
    clock = FakeClock(start=time.time() - 60)
    settings = AlertSettings(
        state_path=tmp_path / "state.json",
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
    )
    service = AlertService(settings, host="h1", registry=CollectorRegistry(), clock=clock)
    service.start_workers()
    try:
        # GPU 0 crosses 85%: the warning fires after 30 s and reaches the chat receiver with its labels.
        service.on_snapshot(gpus(0.90, 0.5))
        clock.advance(30)
        service.on_snapshot(gpus(0.90, 0.5))
        (warning,) = wait_for(lambda: received(receiver, "/chat", "0", "warning", "firing"), 15, "the warning")
        assert warning["labels"] == {
            "alertname": "GpuMemoryHigh",
            "severity": "warning",
            "tier": "warning",
            "host": "h1",
            "gpu": "0",
            "pipeline": "monitor",
        }
        assert warning["annotations"]["summary"] == "GPU 0 on h1 memory above 85%"
        assert "90%" in warning["annotations"]["description"]
        assert warning["annotations"]["runbook_url"]

        # GPU 0 passes 95% and GPU 1 jumps straight there: severe fires for both and pages.
        service.on_snapshot(gpus(0.97, 0.97))
        clock.advance(10)
        service.on_snapshot(gpus(0.97, 0.97))
        clock.advance(20)
        service.on_snapshot(gpus(0.97, 0.97))  # GPU 1's warning fires now, after its severe
        for gpu in ("0", "1"):
            wait_for(lambda g=gpu: received(receiver, "/pager", g, "severe", "firing"), 15, f"GPU {gpu}'s severe")
            # Alertmanager holds the warning, inhibited by the severe alert of the same name, host and GPU.
            held = wait_for(lambda g=gpu: am_alert(alertmanager, g, "warning"), 15, f"GPU {gpu}'s warning in AM")
            wait_for(
                lambda g=gpu: (am_alert(alertmanager, g, "warning") or {}).get("status", {}).get("inhibitedBy"),
                15,
                f"GPU {gpu}'s warning to be inhibited",
            )
            assert held["labels"]["alertname"] == "GpuMemoryHigh"

        # Memory falls: every alert resolves; Alertmanager sends the resolves on.
        clock.now = time.time()
        service.on_snapshot(gpus(0.5, 0.5))
        for gpu in ("0", "1"):
            (resolved,) = wait_for(
                lambda g=gpu: received(receiver, "/pager", g, "severe", "resolved"), 15, f"GPU {gpu}'s resolve"
            )
            assert not resolved["endsAt"].startswith("0001")
        # By now GPU 1's group has flushed several times: its warning never reached anyone.
        assert received(receiver, "/chat", "1", "warning", "firing") == []
    finally:
        service.stop()


def test_the_watchdog_arrives_through_alertmanager(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    settings = AlertSettings(
        state_path=None,
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
    )
    service = AlertService(settings, host="h1", registry=CollectorRegistry())
    service.start_workers()
    try:
        service.tick()
        (watchdog,) = wait_for(lambda: receiver.alerts("/deadmansswitch"), 15, "the Watchdog")
        assert watchdog["labels"]["alertname"] == "Watchdog"
        assert watchdog["status"] == "firing"
    finally:
        service.stop()
