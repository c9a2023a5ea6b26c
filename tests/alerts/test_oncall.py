"""On-call, tried for real: the monitor's alerts through a real Alertmanager running the shipped routes (every
duration scaled down by the same factor) to webhook receivers standing in for the pager, chat and dead-man's switch.

Shown: a second incident a minute after the first pages; the Watchdog arrives per pipeline on a steady cadence and
stops after the monitor dies; a monitor outage shorter than the stated bound resolves nothing, and the restarted
monitor pages nothing twice; an acknowledgement creates a silence; the webhook payload is Alertmanager's.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry

from monitor.alerts.record import iso
from monitor.alerts.service import AlertService
from monitor.alerts.settings import DEFAULT_RULES, AlertSettings
from tests.alerts.conftest import Alertmanager, FakeClock, FakeGenerator, Receiver, wait_for

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.yml"
SCALE = 30  # every Alertmanager duration divided by this: 1 minute runs in 2 s, 15 s in 0.5 s
# The race between a short incident and the group's flush is tried at a gentler scale: at SCALE the 9 s by which a
# 24 s incident outlasts the pager's 15 s group_interval shrink to 0.3 s, less than a loaded machine's scheduling.
INCIDENT_SCALE = 10
_DURATION = re.compile(r"^(\d+)([smh])$")


def scaled(value: str, scale: int = SCALE) -> str:
    """Divide an Alertmanager duration ("15s", "1m", "4h") by `scale`, in milliseconds."""
    number, unit = _DURATION.match(value).groups()  # type: ignore[union-attr]
    seconds = int(number) * {"s": 1, "m": 60, "h": 3600}[unit]
    return f"{max(seconds * 1000 // scale, 0)}ms"


def shipped_config_scaled(receiver_url: str, scale: int = SCALE) -> str:
    """The shipped routing, inhibition and timings (scaled), receivers pointed at the test's."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = scaled(route[key], scale)
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = receiver_url + "/" + receiver["name"]
    return yaml.safe_dump(config)


def rules_with_for(path: Path, **for_by_alert: str) -> Path:
    """Write the shipped rules with some alerts' `for` shortened (thresholds and the rest unchanged)."""
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    for rule in rules["rules"]:
        if rule["alert"] in for_by_alert:
            rule["for"] = for_by_alert[rule["alert"]]
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    server = Alertmanager(tmp_path / "am", shipped_config_scaled(receiver.url))
    yield server
    server.close()


def parse_time(text: str) -> datetime:
    """Read an RFC 3339 time as Alertmanager writes it (nanoseconds, trailing zeros trimmed) or as we do."""
    head, _, fraction = text.removesuffix("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}+00:00")


def notified(receiver: Receiver, path: str, name: str, status: str | None = None) -> list[dict[str, Any]]:
    return [
        a
        for a in receiver.alerts(path)
        if a["labels"]["alertname"] == name and (status is None or a["status"] == status)
    ]


def am_alerts(am: Alertmanager, name: str) -> list[dict[str, Any]]:
    response = requests.get(am.url + "/api/v2/alerts", params={"filter": f'alertname="{name}"'}, timeout=2)
    response.raise_for_status()
    return list(response.json())


def service_for(settings: AlertSettings, **kwargs: Any) -> AlertService:
    service = AlertService(settings, host="h1", registry=CollectorRegistry(), **kwargs)
    service.start_workers()
    return service


def test_a_second_incident_a_minute_after_the_first_pages(
    tmp_path: Path, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    # The incident on-call saw: GeneratorUnreachable fired and resolved 24 s later, a minute after an earlier one
    # of the same group. The clock is ten minutes behind real time, so every time sent is real and past.
    scale = INCIDENT_SCALE
    alertmanager = Alertmanager(tmp_path / "am", shipped_config_scaled(receiver.url, scale))
    clock = FakeClock(start=time.time() - 600)
    settings = AlertSettings(
        state_path=None,
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
    )
    service = service_for(settings, clock=clock)
    try:
        starts: list[float] = []
        for incident in range(2):
            fake_generator.healthy = False
            service.tick()
            clock.advance(30)
            (fired,) = [a for a in service.tick() if a.name == "GeneratorUnreachable"]
            starts.append(fired.active_at)
            # Resolved 24 s (scaled) after Alertmanager has it, whether or not it paged by then: the monitor's
            # delivery is not what is tried here, the group's flush inside a short incident is.
            wait_for(lambda: am_alerts(alertmanager, "GeneratorUnreachable"), 5, "the alert in Alertmanager")
            began = time.monotonic()
            wait_for(lambda b=began: time.monotonic() - b >= 24 / scale, 5, "the incident to last 24 s, scaled")
            fake_generator.healthy = True
            clock.advance(24)
            service.tick()
            wait_for(
                lambda n=incident: len(notified(receiver, "/pager", "GeneratorUnreachable", "firing")) > n,
                5,
                f"incident {incident + 1} to have paged",
            )
            if incident == 0:
                wait_for(
                    lambda: notified(receiver, "/pager", "GeneratorUnreachable", "resolved"), 10, "the first resolve"
                )
                # About a minute to the next incident (scaled), counted from the resolve's notification, that is
                # from a flush of the group: the next incident starts just after the group's next 1-minute flush
                # would have come, as on-call's did, and ends before the one after.
                began = time.monotonic()
                wait_for(lambda b=began: time.monotonic() - b >= 66 / scale, 10, "a minute, scaled")
                clock.advance(66)
        paged = notified(receiver, "/pager", "GeneratorUnreachable", "firing")
        # Each incident paged once, with its own startsAt: when its condition began.
        assert [parse_time(a["startsAt"]) for a in paged] == [parse_time(iso(s) or "") for s in starts]
    finally:
        service.stop()
        alertmanager.close()


def test_each_pipelines_watchdog_arrives_on_a_steady_cadence_and_stops_when_the_monitor_dies(
    alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    # The Watchdog resend and validity scaled like Alertmanager's timings: 15 s -> 0.5 s, 60 s -> 2 s.
    settings = AlertSettings(
        state_path=None,
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
        watchdog_resend_s=15 / SCALE,
        watchdog_valid_s=60 / SCALE,
    )
    service = service_for(settings)
    # Prometheus' Watchdog, as Prometheus sends it: the same alert name and host, another pipeline.
    prometheus_watchdog = {
        "labels": {
            "alertname": "Watchdog",
            "severity": "warning",
            "purpose": "deadmansswitch",
            "pipeline": "prometheus",
        }
    }
    try:
        service.tick()
        requests.post(alertmanager.url + "/api/v2/alerts", json=[prometheus_watchdog], timeout=2).raise_for_status()

        def arrivals(pipeline: str) -> list[float]:
            with receiver.lock:
                return [
                    at
                    for at, (path, doc) in zip(receiver.times, receiver.received, strict=True)
                    if path == "/deadmansswitch" and doc["commonLabels"].get("pipeline") == pipeline
                ]

        wait_for(lambda: len(arrivals("monitor")) >= 4, 20, "four of the monitor's Watchdogs")
        assert arrivals("prometheus"), "Prometheus' Watchdog arrives as its own notification"
        monitor = arrivals("monitor")
        gaps = [b - a for a, b in itertools.pairwise(monitor)]
        # repeat_interval 1 m checked every group_interval 10 s (scaled): one every 60-70 s, never 2 minutes.
        assert all(55 / SCALE <= gap <= 100 / SCALE for gap in gaps), gaps

        service.stop()
        stopped = time.monotonic()
        # Valid one minute from its last send: Alertmanager resolves it, and the dead-man's switch hears no more.
        wait_for(
            lambda: not [a for a in am_alerts(alertmanager, "Watchdog") if a["labels"]["pipeline"] == "monitor"],
            10,
            "Alertmanager to drop the dead monitor's Watchdog",
        )
        assert time.monotonic() - stopped <= 90 / SCALE + 1
        heard = len(arrivals("monitor"))
        since = len(arrivals("prometheus"))
        wait_for(lambda: len(arrivals("prometheus")) >= since + 2, 20, "Prometheus' Watchdog to keep arriving")
        assert len(arrivals("monitor")) == heard
    finally:
        service.stop()


def test_a_monitor_outage_resolves_nothing_and_the_restart_pages_nothing_twice(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    # The shipped relation scaled down: resent every 1 s, valid 4 s, so an outage under 3 s must resolve nothing
    # (shipped: every 60 s, valid 900 s, under 840 s; test_notify checks that bound exceeds 5 minutes).
    settings = AlertSettings(
        rules_path=rules_with_for(tmp_path / "rules.yml", GeneratorUnreachable="0s"),
        state_path=tmp_path / "state" / "alerts-state.json",
        alertmanager_urls=(alertmanager.url,),
        webhook_urls=(receiver.url + "/direct",),
        log_notifications=False,
        generator_url=fake_generator.url,
        resend_s=1.0,
        firing_valid_s=4.0,
    )
    assert settings.outage_bound_s == 3.0
    fake_generator.healthy = False
    first = service_for(settings)
    try:
        first.tick()
        wait_for(lambda: notified(receiver, "/pager", "GeneratorUnreachable", "firing"), 10, "the page")
        wait_for(lambda: notified(receiver, "/direct", "GeneratorUnreachable", "firing"), 10, "the webhook")
    finally:
        first.stop()  # the monitor goes away with the alert firing

    # 2.5 s without the monitor: Alertmanager holds the alert firing all along.
    end = time.monotonic() + 2.5
    pause = threading.Event()
    while time.monotonic() < end:
        (held,) = am_alerts(alertmanager, "GeneratorUnreachable")
        assert held["status"]["state"] == "active", held
        pause.wait(0.2)  # the poll interval of a check that runs for the outage's length

    second = service_for(settings)  # restarted from the same state folder, the generator still down
    try:
        second.tick()
        (alert,) = [a for a in second.engine.active() if a.name == "GeneratorUnreachable"]
        assert alert.state == "firing"
        # Resent to Alertmanager at once, so it stays active past the first send's validity.
        wait_for(lambda: second.workers[0].delivered >= 1, 5, "the restarted monitor to resend")
        assert second.workers[1].delivered == 0  # nothing unchanged to the webhook
        wait_for(lambda: time.monotonic() > end + 2.5, 5, "the first send's validity to pass")
        (held,) = am_alerts(alertmanager, "GeneratorUnreachable")
        assert held["status"]["state"] == "active"

        fake_generator.healthy = True
        second.tick()
        wait_for(lambda: notified(receiver, "/pager", "GeneratorUnreachable", "resolved"), 10, "the resolve")
        wait_for(lambda: notified(receiver, "/direct", "GeneratorUnreachable", "resolved"), 10, "the webhook resolve")
    finally:
        second.stop()
    assert len(notified(receiver, "/pager", "GeneratorUnreachable", "firing")) == 1
    assert len(notified(receiver, "/pager", "GeneratorUnreachable", "resolved")) == 1
    assert len(notified(receiver, "/direct", "GeneratorUnreachable", "firing")) == 1


def test_an_outage_longer_than_the_validity_resolves_the_alert_there(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    # The other side of the bound: silence past `firing_valid_s` and Alertmanager resolves on its own (why the
    # shipped validity is 15 minutes, not Prometheus' 4 resends).
    settings = AlertSettings(
        rules_path=rules_with_for(tmp_path / "rules.yml", GeneratorUnreachable="0s"),
        state_path=None,
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
        resend_s=0.5,
        firing_valid_s=1.5,
    )
    fake_generator.healthy = False
    service = service_for(settings)
    try:
        service.tick()
        wait_for(lambda: notified(receiver, "/pager", "GeneratorUnreachable", "firing"), 10, "the page")
    finally:
        service.stop()
    wait_for(lambda: notified(receiver, "/pager", "GeneratorUnreachable", "resolved"), 10, "Alertmanager's resolve")


def test_an_acknowledgement_creates_a_silence_and_keeps_every_acker(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    from flask import Flask

    from monitor.web.alerts import init_app

    settings = AlertSettings(
        rules_path=rules_with_for(tmp_path / "rules.yml", GeneratorUnreachable="0s"),
        state_path=tmp_path / "alerts-state.json",
        alertmanager_urls=(alertmanager.url,),
        log_notifications=False,
        generator_url=fake_generator.url,
        admin_token="t0k",
    )
    fake_generator.healthy = False
    service = service_for(settings)
    app = Flask(__name__)
    init_app(app, service)
    client = app.test_client()
    auth = {"Authorization": "Bearer t0k"}
    try:
        service.tick()
        (alert,) = [a for a in service.engine.active() if a.name == "GeneratorUnreachable"]
        wait_for(lambda: am_alerts(alertmanager, "GeneratorUnreachable"), 10, "the alert in Alertmanager")

        answer = client.post(
            f"/monitor/api/alerts/{alert.id}/ack",
            json={"by": "alice", "note": "restarting the generator", "expires_in": "30m"},
            headers=auth,
        )
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        silence_id = body["silence"]["id"]
        response = requests.get(f"{alertmanager.url}/api/v2/silence/{silence_id}", timeout=2)
        silence = response.json()
        assert silence["createdBy"] == "alice"
        assert silence["comment"] == "restarting the generator"
        assert silence["status"]["state"] == "active"
        expected = {k: v for k, v in alert.labels.items() if k != "pipeline"}  # Prometheus' copy silenced too
        assert {m["name"]: m["value"] for m in silence["matchers"]} == expected
        assert all(m["isEqual"] and not m["isRegex"] for m in silence["matchers"])
        lasts_s = (
            datetime.fromisoformat(silence["endsAt"].replace("Z", "+00:00"))
            - datetime.fromisoformat(silence["startsAt"].replace("Z", "+00:00"))
        ).total_seconds()
        assert 1790 <= lasts_s <= 1810
        wait_for(
            lambda: silence_id in am_alerts(alertmanager, "GeneratorUnreachable")[0]["status"]["silencedBy"],
            10,
            "Alertmanager to silence the alert",
        )

        second = client.post(f"/monitor/api/alerts/{alert.id}/ack", json={"by": "bob"}, headers=auth).get_json()
        assert [(a["by"], a["note"]) for a in second["acks"]] == [("alice", "restarting the generator"), ("bob", None)]
        assert all(a["silence_id"] for a in second["acks"])
        assert client.get(f"/monitor/api/alerts/{alert.id}").get_json()["acked_by"] == "bob"
    finally:
        service.stop()


def test_our_webhook_document_has_alertmanagers_shape_and_fingerprints(
    tmp_path: Path, alertmanager: Alertmanager, receiver: Receiver, fake_generator: FakeGenerator
) -> None:
    settings = AlertSettings(
        rules_path=rules_with_for(tmp_path / "rules.yml", GeneratorUnreachable="0s"),
        state_path=None,
        alertmanager_urls=(alertmanager.url,),
        webhook_urls=(receiver.url + "/direct",),
        log_notifications=False,
        generator_url=fake_generator.url,
        external_url="http://monitor.example:7861",
    )
    fake_generator.healthy = False
    service = service_for(settings)
    try:
        service.tick()
        wait_for(lambda: notified(receiver, "/pager", "GeneratorUnreachable"), 10, "Alertmanager's webhook")
        wait_for(lambda: notified(receiver, "/direct", "GeneratorUnreachable"), 10, "ours")
    finally:
        service.stop()

    def first(path: str) -> dict[str, Any]:
        with receiver.lock:
            return next(
                doc
                for p, doc in receiver.received
                if p == path and doc["alerts"][0]["labels"]["alertname"] == "GeneratorUnreachable"
            )

    theirs, ours = first("/pager"), first("/direct")
    assert set(ours) == set(theirs)
    assert ours["version"] == theirs["version"] == "4"
    (their_alert,) = theirs["alerts"]
    (our_alert,) = ours["alerts"]
    assert set(our_alert) == set(their_alert)
    assert our_alert["fingerprint"] == their_alert["fingerprint"]
    assert our_alert["labels"] == their_alert["labels"]
    assert parse_time(our_alert["startsAt"]) == parse_time(their_alert["startsAt"])
    assert our_alert["endsAt"] == their_alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert their_alert["generatorURL"] == our_alert["generatorURL"]
    assert our_alert["generatorURL"].startswith("http://monitor.example:7861/monitor/#alert-")
