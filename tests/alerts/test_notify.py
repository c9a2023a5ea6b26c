"""Delivery: what is due, resends while firing and after resolve, retries with back-off, counted failures."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from monitor.alerts.engine import AlertEngine
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.notify import (
    AlertmanagerNotifier,
    NotifierWorker,
    NotifyError,
    WebhookNotifier,
    build_notifier,
)
from monitor.alerts.record import Alert, label_set
from monitor.alerts.rules import Rule
from tests.alerts.conftest import FakeClock, Receiver, wait_for

GPU0 = label_set(host="h1", gpu="0")


class Fake:
    """A notifier that records batches and fails while `failing` is set."""

    kind = "fake"
    target = "fake://"

    def __init__(self, resend_s: float | None) -> None:
        self.resend_s = resend_s
        self.batches: list[list[tuple[str, str]]] = []
        self.failing = False

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        if self.failing:
            raise NotifyError("target down")
        self.batches.append([(a.severity, a.state) for a in alerts])


@pytest.fixture
def engine(clock: FakeClock, default_rules: list[Rule]) -> AlertEngine:
    rules = [r for r in default_rules if r.alert == "GpuMemoryHigh" and r.severity == "warning"]
    return AlertEngine(rules, clock=clock, resolved_retention_s=300)


def fire(engine: AlertEngine, clock: FakeClock) -> None:
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.9}})
    clock.advance(30)
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.9}})


def test_alertmanager_policy_resends_while_firing_and_for_five_minutes_after_resolve(
    clock: FakeClock, engine: AlertEngine
) -> None:
    fake = Fake(resend_s=60)
    worker = NotifierWorker(fake, engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock)
    assert not worker.deliver_once()  # pending alerts are not sent
    fire(engine, clock)
    assert worker.deliver_once()
    assert fake.batches == [[("warning", "firing")]]
    clock.advance(59)
    assert not worker.deliver_once()
    clock.advance(1)
    assert worker.deliver_once()
    assert len(fake.batches) == 2
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.5}})
    assert worker.deliver_once()
    assert fake.batches[-1] == [("warning", "resolved")]
    for _ in range(5):
        clock.advance(60)
        worker.deliver_once()
    assert [b[0][1] for b in fake.batches[2:]] == ["resolved"] * 6  # at once, then every 60 s for 5 minutes
    clock.advance(60)  # 6 minutes after the resolve: it is no longer carried
    assert not worker.deliver_once()


def test_webhook_and_log_policy_send_each_change_once(clock: FakeClock, engine: AlertEngine) -> None:
    fake = Fake(resend_s=None)
    worker = NotifierWorker(fake, engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock)
    fire(engine, clock)
    worker.deliver_once()
    clock.advance(600)
    worker.deliver_once()
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.1}})
    worker.deliver_once()
    clock.advance(60)
    worker.deliver_once()
    assert fake.batches == [[("warning", "firing")], [("warning", "resolved")]]


def test_failures_back_off_are_counted_and_shown_then_delivery_catches_up(
    clock: FakeClock, engine: AlertEngine
) -> None:
    registry = CollectorRegistry()
    fake = Fake(resend_s=60)
    fake.failing = True
    worker = NotifierWorker(
        fake, engine.notifiable, AlertMetrics(registry), clock=clock, backoff_initial_s=1, backoff_max_s=8
    )
    fire(engine, clock)
    retries = []
    for _ in range(6):
        worker.deliver_once()
        retries.append(worker.retry_at - clock.now)
        clock.now = worker.retry_at
    assert retries == [1, 2, 4, 8, 8, 8]
    status = worker.status()
    assert status["failures"] == 6
    assert status["consecutive_failures"] == 6
    assert "target down" in status["last_error"]
    fake.failing = False
    assert worker.deliver_once()
    assert fake.batches == [[("warning", "firing")]]
    assert worker.status()["consecutive_failures"] == 0
    count = registry.get_sample_value
    assert count("i2v_alert_notifications_total", {"notifier": "fake", "result": "failure"}) == 6
    assert count("i2v_alert_notifications_total", {"notifier": "fake", "result": "success"}) == 1


def test_alertmanager_payload_follows_the_v2_api(clock: FakeClock, engine: AlertEngine) -> None:
    fire(engine, clock)
    (alert,) = engine.notifiable()
    (item,) = AlertmanagerNotifier("http://am:9093/", resend_s=60).payload([alert], clock.now)
    assert item["labels"] == {"alertname": "GpuMemoryHigh", "severity": "warning", "host": "h1", "gpu": "0"}
    assert set(item["annotations"]) == {"summary", "description", "runbook_url", "runbook"}
    assert item["startsAt"] < item["endsAt"]  # firing: valid for 4 resends, as Prometheus does
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.1}})
    (resolved,) = engine.notifiable()
    (item,) = AlertmanagerNotifier("http://am:9093", resend_s=60).payload([resolved], clock.now + 100)
    assert item["endsAt"] == resolved.to_public()["resolved_at"]


def test_the_worker_thread_delivers_to_a_webhook_without_blocking_evaluation(
    clock: FakeClock, engine: AlertEngine, receiver: Receiver
) -> None:
    worker = NotifierWorker(
        WebhookNotifier(receiver.url + "/hook"), engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock
    )
    worker.start()
    try:
        fire(engine, clock)
        worker.wake()
        (alert,) = wait_for(lambda: receiver.alerts("/hook"), 5, "the webhook to receive the alert")
        assert alert["status"] == "firing"
        assert alert["labels"]["gpu"] == "0"
        assert alert["fired_at"].endswith("Z")
    finally:
        worker.stop()


def test_unknown_notifier_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notifier 'pagerduty'"):
        build_notifier("pagerduty", "x")
