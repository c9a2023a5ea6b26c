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
from monitor.alerts.record import Alert, fingerprint, iso, label_set
from monitor.alerts.rules import Rule
from monitor.alerts.settings import AlertSettings
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

    def resend_after(self, alert: Alert) -> float | None:
        return self.resend_s

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
    began = clock.now
    fire(engine, clock)
    (alert,) = engine.notifiable()
    notifier = AlertmanagerNotifier("http://am:9093/", resend_s=60, external_url="http://mon:7861")
    (item,) = notifier.payload([alert], clock.now)
    assert item["labels"] == {
        "alertname": "GpuMemoryHigh",
        "severity": "warning",
        "tier": "warning",
        "host": "h1",
        "gpu": "0",
        "pipeline": "monitor",
    }
    assert set(item["annotations"]) == {"summary", "description", "runbook_url", "runbook"}
    assert item["startsAt"] == iso(began)  # when the condition began (pending), not when it fired 30 s later
    assert item["endsAt"] == iso(clock.now + 900)  # a 15-minute validity, resent every minute
    assert item["generatorURL"] == f"http://mon:7861/monitor/#alert-{alert.id}"
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.1}})
    (resolved,) = engine.notifiable()
    (item,) = notifier.payload([resolved], clock.now + 100)
    assert item["endsAt"] == resolved.to_public()["resolved_at"]


def test_a_firing_alert_outlives_a_monitor_outage_shorter_than_the_stated_bound() -> None:
    settings = AlertSettings()
    # Resent every minute, each send valid for 15: Alertmanager keeps a firing alert through 14 minutes of
    # silence, well past a 5-minute monitor outage. The relation, not the numbers, is what the tests use.
    assert settings.outage_bound_s == settings.firing_valid_s - settings.resend_s == 840
    assert settings.outage_bound_s > 5 * 60
    assert settings.watchdog_valid_s <= 60  # the Watchdog, though, stops within a minute of the last send
    with pytest.raises(ValueError, match="validity must be longer"):
        AlertSettings(resend_s=60, firing_valid_s=60).validate()


def test_the_watchdog_is_resent_on_its_own_steady_cadence_with_a_short_validity(
    clock: FakeClock, default_rules: list[Rule]
) -> None:
    watchdog_rule = [r for r in default_rules if r.alert == "Watchdog"]
    engine = AlertEngine(watchdog_rule, clock=clock)
    engine.evaluate({label_set(host="h1"): {"monitor_up": 1.0}})
    notifier = AlertmanagerNotifier("http://am:9093", resend_s=60, watchdog_resend_s=15, watchdog_valid_s=60)
    sent_at: list[float] = []

    class Recording(AlertmanagerNotifier):
        def send(self, alerts: Sequence[Alert], now: float) -> None:
            sent_at.append(now)
            (item,) = self.payload(alerts, now)
            assert item["endsAt"] == iso(now + 60)
            assert item["labels"]["pipeline"] == "monitor"

    recording = Recording("http://am:9093", resend_s=60, watchdog_resend_s=15, watchdog_valid_s=60)
    worker = NotifierWorker(recording, engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock)
    start = clock.now
    for _ in range(60):
        worker.deliver_once()
        clock.advance(1)
    assert [t - start for t in sent_at] == [0, 15, 30, 45]
    assert notifier.resend_after(engine.notifiable()[0]) == 15


def test_the_webhook_sends_alertmanagers_version_4_payload_one_document_per_group(
    clock: FakeClock, default_rules: list[Rule], receiver: Receiver
) -> None:
    rules = [r for r in default_rules if r.alert == "GpuMemoryHigh"]
    engine = AlertEngine(rules, clock=clock)
    gpu1 = label_set(host="h1", gpu="1")
    began = clock.now
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.97}, gpu1: {"gpu_memory_ratio": 0.9}})
    clock.advance(30)
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.97}, gpu1: {"gpu_memory_ratio": 0.9}})
    notifier = WebhookNotifier(receiver.url + "/hook", external_url="http://mon:7861/")
    notifier.send(engine.notifiable(), clock.now)
    documents = sorted((doc for _, doc in receiver.received), key=lambda d: d["groupLabels"]["gpu"])
    assert [len(doc["alerts"]) for doc in documents] == [2, 1]  # GPU 0: warning and severe; GPU 1: warning
    gpu0 = documents[0]
    assert set(gpu0) == {
        "receiver",
        "status",
        "alerts",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "version",
        "groupKey",
        "truncatedAlerts",
    }
    assert gpu0["version"] == "4"
    assert gpu0["status"] == "firing"
    assert gpu0["groupLabels"] == {"alertname": "GpuMemoryHigh", "host": "h1", "gpu": "0"}
    assert gpu0["commonLabels"] == {"alertname": "GpuMemoryHigh", "host": "h1", "gpu": "0", "pipeline": "monitor"}
    assert gpu0["externalURL"] == "http://mon:7861"
    assert gpu0["groupKey"] == '{}:{alertname="GpuMemoryHigh", gpu="0", host="h1"}'
    severe = next(a for a in gpu0["alerts"] if a["labels"]["tier"] == "severe")
    assert set(severe) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert severe["status"] == "firing"
    assert severe["startsAt"] == iso(began)
    assert severe["endsAt"] == "0001-01-01T00:00:00Z"  # Alertmanager's zero time while firing
    assert severe["generatorURL"].startswith("http://mon:7861/monitor/#alert-")
    assert severe["fingerprint"] == fingerprint(severe["labels"])
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.1}})
    receiver.received.clear()
    notifier.send([a for a in engine.notifiable() if a.state == "resolved"], clock.now)
    (document,) = (doc for _, doc in receiver.received)
    assert document["status"] == "resolved"
    assert {a["endsAt"] for a in document["alerts"]} == {iso(clock.now)}


def test_fingerprints_match_prometheus_labelset_fingerprint() -> None:
    # Values from prometheus/common model.LabelSet.Fingerprint(): FNV-1a 64 over sorted names and values.
    assert fingerprint({}) == f"{14695981039346656037:016x}"
    assert fingerprint({"a": "b"}) == fingerprint({"a": "b"})
    assert fingerprint({"a": "b", "c": "d"}) == fingerprint({"c": "d", "a": "b"})
    assert fingerprint({"a": "bc"}) != fingerprint({"ab": "c"})  # the separator byte keeps them apart


def test_a_restarted_worker_sends_no_unchanged_alert_to_a_webhook_again(clock: FakeClock, engine: AlertEngine) -> None:
    fake = Fake(resend_s=None)
    saved: list[dict[str, tuple[str, float]]] = []
    worker = NotifierWorker(
        fake,
        engine.notifiable,
        AlertMetrics(CollectorRegistry()),
        clock=clock,
        on_sent_change=lambda: saved.append(worker.sent_state()),
    )
    fire(engine, clock)
    assert worker.deliver_once()
    assert len(saved) == 1
    # The monitor restarts: a new worker given what the old one had sent.
    clock.advance(120)
    again = NotifierWorker(fake, engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock, sent=saved[-1])
    assert not again.deliver_once()
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.1}})
    assert again.deliver_once()
    assert fake.batches == [[("warning", "firing")], [("warning", "resolved")]]


def test_a_partly_delivered_batch_is_not_sent_twice(clock: FakeClock, default_rules: list[Rule]) -> None:
    engine = AlertEngine([r for r in default_rules if r.alert == "GpuMemoryHigh"], clock=clock)
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.97}})
    clock.advance(30)
    engine.evaluate({GPU0: {"gpu_memory_ratio": 0.97}})
    calls: list[list[str]] = []

    class HalfDown:
        kind = "half"
        target = "half://"

        def resend_after(self, alert: Alert) -> float | None:
            return None

        def send(self, alerts: Sequence[Alert], now: float) -> None:
            calls.append(sorted(a.severity for a in alerts))
            if len(alerts) > 1:
                delivered = [a for a in alerts if a.severity == "severe"]
                raise NotifyError("the second request failed", delivered)

    worker = NotifierWorker(HalfDown(), engine.notifiable, AlertMetrics(CollectorRegistry()), clock=clock)
    assert not worker.deliver_once()
    clock.now = worker.retry_at
    assert worker.deliver_once()
    assert calls == [["severe", "warning"], ["warning"]]


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
        assert alert["startsAt"].endswith("Z")
    finally:
        worker.stop()


def test_unknown_notifier_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notifier 'pagerduty'"):
        build_notifier("pagerduty", "x")
