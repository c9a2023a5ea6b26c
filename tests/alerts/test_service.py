"""The wired service against a fake generator: scraping, cancel on severe, one restart for an OOM streak."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry, Gauge

from monitor.alerts.actions import ActionOutcome
from monitor.alerts.engine import AlertEngine
from monitor.alerts.poller import GeneratorPoller, quantile_from_buckets
from monitor.alerts.record import FIRING, RESOLVED, label_set
from monitor.alerts.rules import Rule
from monitor.alerts.service import AlertService
from monitor.alerts.settings import AlertSettings
from tests.alerts.conftest import FakeClock, FakeGenerator, wait_for


class Recorder:
    """Stands in for subprocess.run: records each restart's argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_service(
    tmp_path: Path, clock: FakeClock, generator: FakeGenerator, registry: CollectorRegistry, **kwargs: Any
) -> AlertService:
    settings = AlertSettings(
        state_path=tmp_path / "alerts.json",
        generator_url=generator.url,
        admin_token=generator.token,
        log_notifications=False,
        restart_command="supervisorctl restart i2v-generator",
    )
    return AlertService(settings, host="h1", registry=registry, clock=clock, **kwargs)


def test_the_poller_reads_the_generator_metrics_like_promql(clock: FakeClock, fake_generator: FakeGenerator) -> None:
    poller = GeneratorPoller(fake_generator.url, clock=clock)
    fake_generator.queue.set(7)
    fake_generator.ooms.set(2)
    first = poller.poll()
    assert first == {
        "generator_up": 1.0,
        "consecutive_ooms": 2.0,
        "queue_pending": 7.0,
        "error_ratio_5m": None,
        "request_p95_s": None,
        "rejection_ratio_5m": None,
        "events_lost_5m": None,
        "event_spool_fill_ratio": None,
        "job_compiles_1h": None,
        "packages_quarantined": None,
    }
    for _ in range(9):
        fake_generator.requests.labels("succeeded").inc()
        fake_generator.duration.observe(20)
    fake_generator.requests.labels("failed").inc()
    fake_generator.requests.labels("cancelled").inc()
    fake_generator.duration.observe(100)
    clock.advance(60)
    values = poller.poll()
    assert values["error_ratio_5m"] == pytest.approx(1 / 11)
    assert values["request_p95_s"] == pytest.approx(90 + 30 * (9.5 - 9) / 1)  # rank 9.5 of 10: in (90, 120]
    clock.advance(400)  # the window moves on: no requests in the last 5 minutes
    poller.poll()
    clock.advance(60)
    assert poller.poll()["error_ratio_5m"] == 0.0
    fake_generator.healthy = False
    assert poller.poll()["generator_up"] == 0.0


def test_the_poller_counts_compiles_inside_jobs_over_the_last_hour(
    clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    poller = GeneratorPoller(fake_generator.url, clock=clock)
    assert poller.poll()["job_compiles_1h"] is None  # eager: the generator exports no compile counter
    compiles = fake_generator.compiles()
    compiles.labels("unet", "warmup").inc(2)
    assert poller.poll()["job_compiles_1h"] is None  # one scrape: no window yet
    clock.advance(60)
    compiles.labels("unet", "job").inc()
    compiles.labels("vae", "job").inc()
    assert poller.poll()["job_compiles_1h"] == 2.0  # warm-up compiles never count
    clock.advance(1800)
    compiles.labels("unet", "job").inc()
    assert poller.poll()["job_compiles_1h"] == 3.0
    clock.advance(1800)
    assert poller.poll()["job_compiles_1h"] == 1.0  # the first two left the hour
    fake_generator.restart_compiles()
    assert poller.poll()["job_compiles_1h"] == 1.0  # a restart's counter starts at 0 again: a reset, as in PromQL
    fake_generator.compiles().labels("unet", "job").inc()
    assert poller.poll()["job_compiles_1h"] == 2.0  # the new process's compile counts on top


def test_a_quarantined_package_is_read_from_the_generator_and_fires_the_shipped_warning(
    clock: FakeClock, fake_generator: FakeGenerator, default_rules: list[Rule]
) -> None:
    poller = GeneratorPoller(fake_generator.url, clock=clock)
    assert poller.poll()["packages_quarantined"] is None  # a generator without packages exports no gauge
    # The generator's own gauge (generator/metrics.py), set by a process that found a crashed package.
    quarantined = Gauge("i2v_packages_quarantined", "", ["module"], registry=fake_generator.registry)
    quarantined.labels("unet").set(1)
    engine = AlertEngine([r for r in default_rules if r.alert == "GeneratorPackageQuarantined"], clock=clock)
    host = label_set(host="h1")

    (fired,) = engine.evaluate({host: {"packages_quarantined": poller.poll()["packages_quarantined"]}})
    assert (fired.state, fired.severity) == (FIRING, "warning")
    assert fired.annotations["summary"] == "1 compiled UNet package(s) on h1 crashed the generator and are quarantined"
    quarantined.labels("unet").set(0)  # the backend changed or the .crashed file deleted, and a restart
    clock.advance(10)
    (resolved,) = engine.evaluate({host: {"packages_quarantined": poller.poll()["packages_quarantined"]}})
    assert resolved.state == RESOLVED


def test_a_dead_generator_reads_as_down_with_unknown_values(clock: FakeClock) -> None:
    values = GeneratorPoller("http://127.0.0.1:9", clock=clock, timeout_s=0.5).poll()
    assert values["generator_up"] == 0.0
    assert values["consecutive_ooms"] is None


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ({1.0: 0, 2.0: 10, math.inf: 10}, 1.95),
        ({1.0: 10, math.inf: 10}, 0.95),
        ({1.0: 0, math.inf: 10}, 1.0),  # past the last finite bound: that bound, as PromQL says
        ({1.0: 0, math.inf: 0}, None),
    ],
)
def test_histogram_quantile(buckets: dict[float, float], expected: float | None) -> None:
    assert quantile_from_buckets(0.95, buckets) == (pytest.approx(expected) if expected is not None else None)


def test_severe_memory_cancels_the_running_job_once(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    fake_generator.jobs = {"j1": {"job_id": "j1", "state": "running", "gpu": "0"}}
    events: list[ActionOutcome] = []
    service = make_service(tmp_path, clock, fake_generator, registry, on_event=events.append)
    service.start_workers()
    try:
        snapshot = SimpleNamespace(
            gpus=[SimpleNamespace(index=0, up=True, memory_used_bytes=78, memory_total_bytes=80, temperature_c=70)]
        )
        service.on_snapshot(snapshot)
        clock.advance(10)
        service.on_snapshot(snapshot)
        wait_for(lambda: fake_generator.jobs["j1"]["state"] == "cancelled", 5, "the job to be cancelled")
        for _ in range(5):  # still firing: asked again, nothing more to cancel
            clock.advance(2)
            service.on_snapshot(snapshot)
        wait_for(lambda: not service.runner._queue, 5, "the action queue to drain")
        assert fake_generator.cancel_calls == ["j1"]
        (event,) = events
        assert (event.action, event.result, event.job_id) == ("cancel_job", "success", "j1")
        assert (event.labels["tier"], event.labels["severity"]) == ("severe", "critical")
        sample = registry.get_sample_value
        assert sample("i2v_remediation_actions_total", {"action": "cancel_job", "result": "success"}) == 1
        assert sample("i2v_alerts", {"state": "firing", "severity": "severe"}) == 1
    finally:
        service.stop()


def test_three_ooms_restart_the_generator_once_and_a_fourth_does_not(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    run = Recorder()
    service = make_service(tmp_path, clock, fake_generator, registry, run_command=run)
    service.start_workers()
    try:
        for count in (1, 2):
            fake_generator.ooms.set(count)
            clock.advance(2)
            service.tick()
        assert run.calls == []
        fake_generator.ooms.set(3)
        clock.advance(2)
        (fired,) = [a for a in service.tick() if a.name == "GeneratorOomStreak"]
        assert fired.state == FIRING
        assert fired.severity == "fatal"
        wait_for(lambda: run.calls, 5, "the restart command")
        assert run.calls == [["supervisorctl", "restart", "i2v-generator"]]
        fake_generator.ooms.set(4)  # a fourth OOM while the streak still fires: no second restart
        clock.advance(2)
        service.tick()
        # The restarted generator fails again at once (3 more OOMs within the 10 s back-off): no restart yet.
        fake_generator.ooms.set(0)
        clock.advance(2)
        service.tick()
        fake_generator.ooms.set(3)
        clock.advance(2)
        service.tick()
        wait_for(lambda: not service.runner._queue, 5, "the action queue to drain")
        assert len(run.calls) == 1
        # Once the back-off has passed and the streak still fires, the next restart comes.
        clock.advance(10)
        service.tick()
        wait_for(
            lambda: (
                registry.get_sample_value(
                    "i2v_remediation_actions_total", {"action": "restart_generator", "result": "success"}
                )
                == 2
            ),
            5,
            "the restart after the back-off to be counted",
        )
        assert len(run.calls) == 2
    finally:
        service.stop()


def test_the_api_lists_and_acknowledges_alerts(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    from flask import Flask

    from monitor.web.alerts import init_app

    service = make_service(tmp_path, clock, fake_generator, registry)
    app = Flask(__name__)
    init_app(app, service)
    client = app.test_client()
    service.tick()
    body = client.get("/monitor/api/alerts").get_json()
    (watchdog,) = [a for a in body["active"] if a["alertname"] == "Watchdog"]
    assert watchdog["state"] == "firing"
    assert body["history"] == []
    assert body["rules"] == 35
    assert body["actions"]["restart_generator"]["gave_up"] is False

    assert client.post(f"/monitor/api/alerts/{watchdog['id']}/ack", json={"by": "bob"}).status_code == 401
    auth = {"Authorization": f"Bearer {fake_generator.token}"}
    acked = client.post(f"/monitor/api/alerts/{watchdog['id']}/ack", json={"by": "bob"}, headers=auth)
    assert acked.status_code == 200
    assert acked.get_json()["acked_by"] == "bob"
    assert client.post("/monitor/api/alerts/nope/ack", headers=auth).status_code == 404


def test_a_bad_rule_file_fails_at_start(tmp_path: Path, registry: CollectorRegistry) -> None:
    from monitor.alerts.rules import RuleFileError

    bad = tmp_path / "rules.yml"
    bad.write_text("rules:\n  - alert: X\n    severity: loud\n")
    with pytest.raises(RuleFileError, match=r"rules.yml:2: rule 'X': missing required key 'expr'"):
        AlertService(AlertSettings(rules_path=bad, state_path=None), host="h1", registry=registry)
    with pytest.raises(ValueError, match="not an http"):
        AlertSettings(alertmanager_urls=("am:9093",)).validate()


def test_settings_come_from_the_monitor_config(tmp_path: Path) -> None:
    from monitor.config import MonitorConfig

    env = {
        "ALERTMANAGER_URLS": "http://a:9093, http://b:9093",
        "ALERT_WEBHOOK_URLS": "http://hook/x",
        "ADMIN_TOKEN": "t0k",
        "GENERATOR_RESTART_CMD": "supervisorctl restart i2v-generator",
    }
    config = MonitorConfig.from_sources(["--data-dir", str(tmp_path), "--sample-interval", "0.5"], env).validate()
    settings = AlertSettings.from_config(config)
    settings.validate()
    assert settings.alertmanager_urls == ("http://a:9093", "http://b:9093")
    assert settings.webhook_urls == ("http://hook/x",)
    assert (settings.admin_token, settings.restart_command) == ("t0k", "supervisorctl restart i2v-generator")
    assert settings.state_path == tmp_path / "alerts-state.json"  # beside the monitor's data, not the cwd
    assert settings.interval_s == 0.5
    assert settings.generator_url == config.generator_url


def test_sampler_stall_and_watchdog_come_from_the_tick(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    service = make_service(tmp_path, clock, fake_generator, registry)
    clock.advance(31)  # no snapshot since start
    names = {a.name for a in service.tick() if a.state == FIRING}
    assert {"Watchdog", "SamplerStalled"} <= names
    service.on_snapshot(SimpleNamespace(gpus=[]))
    clock.advance(2)
    assert [a.name for a in service.tick()] == ["SamplerStalled"]  # resolved
    assert requests.get(fake_generator.url + "/health", timeout=2).ok


def test_store_health_feeds_the_store_rules_and_metrics_join_the_monitor_registry(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    from prometheus_client import generate_latest

    health = SimpleNamespace(store_reachable=False, spool_pending_points=20_000)
    settings = AlertSettings(state_path=None, generator_url=fake_generator.url, log_notifications=False)
    service = AlertService(settings, host="h1", clock=clock, writer_health=lambda: health)
    service.tick()
    clock.advance(121)
    names = {a.name for a in service.tick() if a.state == FIRING}
    assert {"StoreUnreachable", "SpoolGrowing"} <= names
    health.store_reachable = None  # a writer that has not tried yet: unknown, not down
    assert service.host_values()["store_up"] is None
    monitor_registry = CollectorRegistry(auto_describe=False)  # as monitor.web.metrics.make_registry builds it
    monitor_registry.register(service.registry)
    text = generate_latest(monitor_registry).decode()
    assert 'i2v_alerts{severity="warning",state="firing"}' in text


def oom_streak(service: AlertService, generator: FakeGenerator, clock: FakeClock) -> None:
    """Three OOMs in a row, then tick until the restart action has been asked (it runs in its own thread)."""
    generator.ooms.set(3)
    clock.advance(2)
    service.tick()
    wait_for(lambda: not service.runner._queue, 5, "the action queue to drain")


def test_restarts_exhausted_clears_once_the_generator_is_healthy_and_the_cap_survives_a_monitor_restart(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    run = Recorder()
    settings = AlertSettings(
        state_path=tmp_path / "alerts.json",
        generator_url=fake_generator.url,
        log_notifications=False,
        restart_command="supervisorctl restart i2v-generator",
        restart_max_per_window=2,
    )
    service = AlertService(settings, host="h1", registry=registry, clock=clock, run_command=run)
    service.start_workers()
    try:
        for _ in range(3):  # each streak past the back-off: two restarts, then the cap
            oom_streak(service, fake_generator, clock)
            fake_generator.ooms.set(0)
            clock.advance(400)
            service.tick()
        assert len(run.calls) == 2
        oom_streak(service, fake_generator, clock)
        wait_for(lambda: service.restart.gave_up, 5, "the cap to stop restarts")
        clock.advance(2)
        names = {a.name for a in service.tick() if a.state == FIRING}
        assert "GeneratorRestartsExhausted" in names
        assert registry.get_sample_value("i2v_generator_restarts_exhausted", {"host": "h1"}) == 1
    finally:
        service.stop()

    # The monitor restarts while the generator still fails: the cap is remembered, nothing restarts, still paging.
    again = AlertService(settings, host="h1", registry=CollectorRegistry(), clock=clock, run_command=run)
    again.start_workers()
    try:
        assert again.restart.gave_up
        clock.advance(2)
        again.tick()
        assert [a.state for a in again.engine.active() if a.name == "GeneratorRestartsExhausted"] == [FIRING]
        oom_streak(again, fake_generator, clock)
        assert len(run.calls) == 2
        # A person fixed it: the streak ends and /health answers, so the page clears (the cap holds 10 minutes).
        fake_generator.ooms.set(0)
        clock.advance(2)
        changed = {(a.name, a.state) for a in again.tick()}
        assert ("GeneratorOomStreak", "resolved") in changed
        clock.advance(2)
        changed |= {(a.name, a.state) for a in again.tick()}
        assert ("GeneratorRestartsExhausted", "resolved") in changed
        assert again.restart.gave_up
        clock.advance(600)
        again.tick()
        assert not again.restart.gave_up
    finally:
        again.stop()


def test_the_low_quality_streak_survives_a_monitor_restart_and_names_its_jobs(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    settings = AlertSettings(
        state_path=tmp_path / "alerts.json",
        generator_url=fake_generator.url,
        log_notifications=False,
        clip_configured=False,
    )
    service = AlertService(settings, host="h1", registry=registry, clock=clock)
    for job, score in (("j1", 0.41), ("j2", 0.38), ("j3", 0.52)):
        service.record_quality(SimpleNamespace(low_quality=True, job_id=job, combined=score, clip_reason=None))
    (streak,) = [a for a in service.engine.active() if a.name == "LowQualityStreak"]
    assert streak.state == FIRING
    description = streak.annotations["description"]
    assert "j1 (0.41), j2 (0.38), j3 (0.52)" in description
    assert "CLIP weights are absent" in description
    assert registry.get_sample_value("i2v_low_quality_streak", {"host": "h1"}) == 3
    service.stop()

    again = AlertService(settings, host="h1", registry=CollectorRegistry(), clock=clock)
    clock.advance(2)
    assert [a for a in again.tick() if a.name == "LowQualityStreak"] == []  # no "resolved: 0 in a row"
    assert [a.id for a in again.engine.active() if a.name == "LowQualityStreak"] == [streak.id]
    again.record_quality(SimpleNamespace(low_quality=False, job_id="j4", combined=0.8, clip_reason=None))
    assert [a for a in again.engine.active() if a.name == "LowQualityStreak"] == []


def test_store_unreachable_names_the_store_and_its_error(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    from monitor.config import MonitorConfig

    config = MonitorConfig.from_sources(
        ["--data-dir", str(tmp_path), "--store", "influxdb://i2v:hunter2@influx.example:8086/i2v"], {}
    ).validate()
    settings = AlertSettings.from_config(config, generator_url=fake_generator.url, log_notifications=False)
    health = SimpleNamespace(
        store_reachable=False, spool_pending_points=12, last_error="ConnectionError: connection refused"
    )
    service = AlertService(settings, host="h1", clock=clock, writer_health=lambda: health)
    service.tick()
    clock.advance(61)
    (alert,) = [a for a in service.tick() if a.name == "StoreUnreachable"]
    store = "influxdb://i2v:***@influx.example:8086/i2v"
    assert alert.annotations["summary"] == f"The monitor's store {store} on h1 is unreachable"
    assert "ConnectionError: connection refused" in alert.annotations["description"]
    assert "hunter2" not in str(alert.to_public())


def test_nvml_unavailable_on_a_host_configured_with_gpus(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    settings = AlertSettings(
        state_path=None, generator_url=fake_generator.url, log_notifications=False, expected_gpus=2
    )
    service = AlertService(settings, host="h1", clock=clock)
    no_nvml = SimpleNamespace(gpus=(), nvml_available=False, nvml_reason="NVML Shared Library Not Found")
    service.on_snapshot(no_nvml)
    clock.advance(30)
    service.on_snapshot(no_nvml)
    (alert,) = [a for a in service.engine.active() if a.name == "NvmlUnavailable"]
    assert alert.state == FIRING
    assert alert.annotations["summary"].startswith("NVML on h1 lists 0 of 2 GPUs")
    assert "NVML Shared Library Not Found" in alert.annotations["description"]
    gpu = SimpleNamespace(index=0, up=True, memory_used_bytes=1, memory_total_bytes=80, temperature_c=40)
    clock.advance(2)
    service.on_snapshot(SimpleNamespace(gpus=[gpu, SimpleNamespace(**{**vars(gpu), "index": 1})], nvml_available=True))
    assert [a for a in service.engine.active() if a.name == "NvmlUnavailable"] == []
    # Without MONITOR_EXPECTED_GPUS a host without NVML is a CPU host: nothing fires.
    quiet = AlertService(AlertSettings(state_path=None, generator_url=""), host="h1", clock=clock)
    quiet.on_snapshot(no_nvml)
    clock.advance(60)
    quiet.on_snapshot(no_nvml)
    assert [a for a in quiet.engine.active() if a.name == "NvmlUnavailable"] == []


def test_the_poller_counts_crash_lost_jobs_and_rejections_and_keeps_its_window_across_a_restart(
    clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    from prometheus_client import Counter

    rejected = Counter("i2v_requests_rejected", "", ["reason"], registry=fake_generator.registry)
    poller = GeneratorPoller(fake_generator.url, clock=clock)
    for status in ("succeeded", "failed", "rejected"):
        fake_generator.requests.labels(status)
    for _ in range(4):
        fake_generator.requests.labels("succeeded").inc()
    poller.poll()
    # 47 rejected against 4 succeeded, as on-call saw: only the queue warning fired then.
    for reason, count in (("queue_full", 40), ("invalid_input", 7)):
        for _ in range(count):
            fake_generator.requests.labels("rejected").inc()
            rejected.labels(reason).inc()
    for _ in range(4):
        fake_generator.requests.labels("succeeded").inc()
    clock.advance(60)
    values = poller.poll()
    assert values["rejection_ratio_5m"] == pytest.approx(47 / 51)
    assert values["error_ratio_5m"] == 0.0  # a refused submission is no job
    assert poller.rejections == {"queue_full": 40, "invalid_input": 7}

    # The monitor restarts: the window comes back with it.
    restored = GeneratorPoller(fake_generator.url, clock=clock)
    restored.restore(poller.to_state())
    # The generator crashes and restarts: its counters start again, with the lost job counted failed.
    for status in ("succeeded", "rejected"):
        fake_generator.requests.labels(status)._value.set(0)
    rejected.labels("queue_full")._value.set(0)
    rejected.labels("invalid_input")._value.set(0)
    fake_generator.requests.labels("failed").inc()
    clock.advance(10)
    values = restored.poll()
    assert values["error_ratio_5m"] == pytest.approx(1 / 5)  # 4 succeeded + the crash-lost one in the window
    assert values["rejection_ratio_5m"] == pytest.approx(47 / 52)


def test_acknowledging_says_what_to_send_and_keeps_every_acker(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    from flask import Flask

    from monitor.web.alerts import init_app

    service = make_service(tmp_path, clock, fake_generator, registry)
    app = Flask(__name__)
    init_app(app, service)
    client = app.test_client()
    service.tick()
    (watchdog,) = [a for a in service.engine.active() if a.name == "Watchdog"]
    url = f"/monitor/api/alerts/{watchdog.id}/ack"

    refused = client.post(url, json={"by": "bob"})
    assert refused.status_code == 401
    assert "Authorization: Bearer <ADMIN_TOKEN>" in refused.get_json()["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    auth = {"Authorization": f"Bearer {fake_generator.token}"}
    for body, field in [
        ([1, 2], None),
        ({"by": ""}, "by"),
        ({"by": 7}, "by"),
        ({"note": "x" * 2001}, "note"),
        ({"expires_in": "forever"}, "expires_in"),
        ({"expires_in": "30s"}, "expires_in"),
        ({"expires_in": "8d"}, "expires_in"),
    ]:
        answer = client.post(url, json=body, headers=auth)
        assert answer.status_code == 400, body
        assert answer.get_json()["field"] == field
        assert answer.get_json()["allowed"]
    assert client.post(url, data="{not json", headers={**auth, "Content-Type": "application/json"}).status_code == 400
    missing = client.post("/monitor/api/alerts/nope/ack", headers=auth)
    assert missing.status_code == 404
    assert "GET /monitor/api/alerts" in missing.get_json()["error"]

    client.post(url, json={"by": "alice", "note": "looking"}, headers=auth)
    body = client.post(url, headers=auth).get_json()  # no body: anonymous
    assert [(a["by"], a["note"]) for a in body["acks"]] == [("alice", "looking"), ("anonymous", None)]
    assert body["silence"] is None  # no Alertmanager configured: nothing to silence
    assert client.get(f"/monitor/api/alerts/{watchdog.id}").get_json()["acks"] == body["acks"]


def test_what_the_monitor_and_the_generator_lose_raises_an_alert(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    from prometheus_client import Counter, Gauge

    events_dropped = Counter("i2v_events_dropped", "", registry=fake_generator.registry)
    event_spool = Gauge("i2v_events_spool_fill_ratio", "", registry=fake_generator.registry)
    health = SimpleNamespace(
        store_reachable=False,
        spool_pending_points=100,
        spool_bytes=0,
        points_dropped_total=0,
        points_rejected_total=0,
        last_error="HTTP 500",
    )
    sampler = {"errors_total": 0}
    quality = SimpleNamespace(rejected=0)
    settings = AlertSettings(
        state_path=None, generator_url=fake_generator.url, log_notifications=False, spool_max_bytes=1000
    )
    service = AlertService(settings, host="h1", clock=clock, writer_health=lambda: health)
    service.observe(sampler_health=lambda: sampler, quality_rejected_total=lambda: quality.rejected)

    def firing() -> set[str]:
        clock.advance(2)
        service.tick()
        return {a.name for a in service.engine.active() if a.state == FIRING}

    data_loss = {
        "PointsLost",
        "SpoolNearBound",
        "EventSpoolNearBound",
        "EventsLost",
        "SamplerErrors",
        "QualityQueueFull",
    }
    assert firing() & data_loss == set()
    health.spool_bytes, health.points_dropped_total = 900, 40  # the spool at 90% of its bound; 40 points dropped
    event_spool.set(0.85)
    events_dropped.inc(3)
    sampler["errors_total"] = 5
    quality.rejected = 1
    assert firing() & data_loss == {"PointsLost", "EventsLost", "SamplerErrors", "QualityQueueFull"}
    clock.advance(60)  # the spools stay near their bounds for a minute
    assert firing() & data_loss == data_loss
    (lost,) = [a for a in service.engine.active() if a.name == "PointsLost"]
    assert lost.annotations["summary"] == "40 points lost on h1 over 5 minutes"
    assert "HTTP 500" in lost.annotations["description"]
    # Five quiet minutes: the windowed losses end; the spools drain below half their bound.
    health.spool_bytes = 100
    event_spool.set(0.1)
    for _ in range(160):
        remaining = firing() & data_loss
    assert remaining == set()


def test_the_generators_scrape_window_survives_a_monitor_restart(
    tmp_path: Path, clock: FakeClock, fake_generator: FakeGenerator, registry: CollectorRegistry
) -> None:
    service = make_service(tmp_path, clock, fake_generator, registry)
    service.tick()  # the window's first scrape
    fake_generator.requests.labels("succeeded").inc(9)
    fake_generator.requests.labels("failed").inc()
    clock.advance(60)
    assert service.host_values()["error_ratio_5m"] == pytest.approx(0.1)
    service.stop()  # saves the window beside the alert state

    again = make_service(tmp_path, clock, fake_generator, CollectorRegistry())
    clock.advance(2)
    assert again.host_values()["error_ratio_5m"] == pytest.approx(0.1)  # not None: the 5 minutes carry on
