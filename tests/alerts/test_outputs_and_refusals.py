"""Two more things that lose data: events the monitor refused (EventsLost counts them beside the dropped ones),
and a filling outputs disk (OutputsDiskLow), from the shipped rules, the real poller and the real host reader."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import Counter

from common.spool import Spool
from monitor import compose
from monitor.alerts.record import FIRING
from monitor.alerts.service import AlertService
from monitor.alerts.settings import AlertSettings
from monitor.config import MonitorConfig
from monitor.storage import schema
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer
from tests.alerts.conftest import FakeClock, FakeGenerator
from tests.api.conftest import NoGpus


def firing(service: AlertService, clock: FakeClock, name: str) -> bool:
    clock.advance(2)
    service.tick()
    return any(a.name == name and a.state == FIRING for a in service.engine.active())


def test_events_the_monitor_refused_count_as_lost(clock: FakeClock, fake_generator: FakeGenerator) -> None:
    refused = Counter("i2v_events_refused", "", registry=fake_generator.registry)
    settings = AlertSettings(state_path=None, generator_url=fake_generator.url, log_notifications=False)
    service = AlertService(settings, host="h1", clock=clock)
    assert not firing(service, clock, "EventsLost")
    refused.inc()  # the generator dropped one event the monitor named as invalid
    assert firing(service, clock, "EventsLost")
    (lost,) = [a for a in service.engine.active() if a.name == "EventsLost"]
    assert "refused by the monitor" in lost.annotations["description"]
    clock.advance(300)
    assert not firing(service, clock, "EventsLost")


def test_the_outputs_disk_low_for_five_minutes_warns_with_hysteresis(
    clock: FakeClock, fake_generator: FakeGenerator
) -> None:
    settings = AlertSettings(state_path=None, generator_url=fake_generator.url, log_notifications=False)
    service = AlertService(settings, host="h1", clock=clock)
    disk = SimpleNamespace(outputs_disk_free_bytes=50, outputs_disk_total_bytes=1000)  # 5% free

    def sample() -> None:
        service.on_snapshot(SimpleNamespace(gpus=[], host=disk, nvml_available=True))

    sample()
    assert not firing(service, clock, "OutputsDiskLow")  # pending for its 5 minutes
    clock.advance(300)
    sample()
    assert firing(service, clock, "OutputsDiskLow")
    disk.outputs_disk_free_bytes = 120  # 12%: above the threshold, below the 15% clear
    sample()
    assert firing(service, clock, "OutputsDiskLow")
    disk.outputs_disk_free_bytes = 200
    sample()
    assert not firing(service, clock, "OutputsDiskLow")


def test_the_assembled_monitor_reads_the_real_outputs_disk(tmp_path: Path) -> None:
    config = MonitorConfig(
        store_url=f"sqlite:///{tmp_path / 'monitor.db'}",
        data_dir=tmp_path,
        spool_dir=tmp_path / "spool",
        outputs_dir=tmp_path / "outputs",
        alert_state_path=None,
        generator_url=None,
        host_name="h1",
    ).validate()
    store = SqliteStore(tmp_path / "monitor.db")
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    monitor = compose.build_monitor(config, store, writer, gpus=NoGpus())
    try:
        assert monitor.alerts is not None
        monitor.sampler.tick()
        ratio = monitor.alerts.host_values()["outputs_disk_free_ratio"]
        assert ratio is not None
        assert 0 < ratio <= 1
        text = monitor.app.test_client().get("/metrics").get_data(as_text=True)
        assert 'i2v_outputs_disk_size_bytes{host="h1"}' in text
    finally:
        monitor.app.extensions["monitor"].close()
