"""Fault: a spool at its bound, and a spool on a full disk (a real, tiny tmpfs filled to the last byte).

At the bound the oldest records go, counted (and exported), and the SpoolGrowing alert fires before a spool
of the production size can reach its bound. On a full disk nothing crashes and nothing is corrupted: what
cannot be kept is counted as lost (or, for ingest, refused with 503 so the generator keeps it), and once
space frees up everything works again.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.events import Event
from common.spool import Spool
from generator.events import EventSender
from monitor.alerts import AlertService, AlertSettings
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import schema
from monitor.storage.base import Point
from monitor.storage.influx import InfluxStore
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer
from monitor.web.context import get_context
from tests.faults.conftest import make_events
from tests.generator.test_events_delivery import EventReceiver
from tests.servers import free_port, wait_for

T0 = 1_700_000_000 * 1_000_000_000


class FullDisk:
    """A 1 MiB tmpfs mounted for one test; `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, path: Path) -> None:
        """Mount it at `path` (skip the test where mounting is not allowed)."""
        self.path = path
        path.mkdir(parents=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root needed): {result.stderr.decode().strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a filler file until the disk says ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (65536, 4096, 512, 1):
                while _write_fits(fd, b"\0" * size):
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        """Delete the filler."""
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        """Unmount (everything on it goes)."""
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def _write_fits(fd: int, data: bytes) -> bool:
    try:
        os.write(fd, data)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return False
    return True


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[FullDisk]:
    """A tiny real filesystem the test can fill."""
    mounted = FullDisk(tmp_path / "disk")
    yield mounted
    mounted.unmount()


def points(start: int, count: int) -> list[Point]:
    """Return `count` numbered host points."""
    return [Point("bound", {"host": "h"}, {"seq": seq}, T0 + seq * 1000) for seq in range(start, start + count)]


def dead_store() -> InfluxStore:
    """A store on a port nobody listens on: every write fails as an outage does."""
    return InfluxStore.from_url(f"influxdb://127.0.0.1:{free_port()}/nobody", timeout_s=(0.2, 0.5))


# ---- at the bound ------------------------------------------------------------------------------------------


def test_a_spool_at_its_bound_drops_the_oldest_counts_them_and_alerts(tmp_path: Path) -> None:
    max_bytes = 2 * 1024 * 1024
    spool = Spool(tmp_path / "spool", max_bytes=max_bytes)
    writer = Writer(dead_store(), spool, batch_size=1000, backoff_initial_s=60)
    now = [1000.0]
    alerts = AlertService(
        AlertSettings(state_path=None, log_notifications=False),
        host="h",
        clock=lambda: now[0],
        notifiers=[],
        writer_health=writer.health,
    )
    produced = 0
    while produced < 40_000:  # about three times what 2 MiB holds
        writer.write(points(produced, 2000))
        produced += 2000
        writer.flush(timeout_s=5)  # the store is down: the buffer goes to the spool
    health = writer.health()
    assert health.spool_bytes <= max_bytes + spool.segment_max_bytes  # bounded (one segment of slack)
    assert health.points_dropped_total > 0
    assert health.points_dropped_total + health.spool_pending_points == produced  # each point kept or counted
    kept = [record["f"]["seq"] for record in spool.peek(produced)]
    assert kept == list(range(produced - len(kept), produced))  # the oldest went, the newest stayed, in order

    alerts.tick()
    now[0] += 180  # SpoolGrowing's `for` is 2 minutes; StoreUnreachable's 1
    firing = {a.name for a in alerts.tick() if a.state == "firing"}
    assert {"SpoolGrowing", "StoreUnreachable"} <= firing
    # The production bound (256 MiB) holds about 1.3 million points: SpoolGrowing (over 10,000) fires long
    # before any point is dropped, and the drops themselves are exported as i2v_store_points_dropped_total.
    assert 10_000 * (max_bytes / health.spool_pending_points) < MonitorConfig().spool_max_bytes / 100


def test_the_monitor_exports_dropped_points(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024)
    writer = Writer(dead_store(), spool, backoff_initial_s=60)
    from monitor.collection.sampler import Sampler

    sampler = Sampler(interval_s=1, host_name="h", write=writer.write, gpus=_NoGpus())
    sampler.tick()
    config = MonitorConfig(store_url=f"sqlite:///{tmp_path / 'm.db'}", spool_dir=tmp_path / "spool")
    app = create_app(config, store=SqliteStore(tmp_path / "m.db"), writer=writer, sampler=sampler)
    for start in range(0, 5000, 500):
        writer.write(points(start, 500))
        writer.flush(timeout_s=5)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    dropped = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if "dropped" in s.name}
    assert dropped["i2v_store_points_dropped_total"] == writer.health().points_dropped_total > 0
    get_context(app).close()


class _NoGpus:
    """A GPU reader on a machine without GPUs."""

    available = False
    reason = "no GPU in this test"

    def read(self) -> tuple:
        return ()

    def call_stats(self) -> dict:
        return {}

    def error_counts(self) -> dict:
        return {}

    def shutdown(self) -> None:
        return None


def test_the_generators_event_spool_at_its_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    sender = EventSender(f"http://127.0.0.1:{free_port()}", tmp_path / "events", spool_max_bytes=64 * 1024)
    try:
        for event in make_events(2000):
            sender.emit(Event.from_dict(event))
        wait_for(lambda: sender.dropped_total > 0 and sender.queued() == 0, 30, "the spool to reach its bound")
        # queued() counts the batch the sender is writing: at 0 every event is in the spool or counted dropped
        assert sender.pending() + sender.dropped_total == 2000
    finally:
        sender.close()


# ---- on a full disk ----------------------------------------------------------------------------------------


def _append_until_full(spool: Spool) -> OSError:
    """Append records until the disk refuses one (half written or not at all); return the error."""
    for seq in range(1, 100_000):
        try:
            spool.append([{"seq": seq, "pad": "x" * 200}])
        except OSError as e:
            return e
    raise AssertionError("the disk never filled up")


def test_a_full_disk_never_corrupts_the_spool(disk: FullDisk) -> None:
    spool = Spool(disk.path / "spool", max_bytes=64 * 1024 * 1024)
    spool.append([{"seq": 0}])
    disk.fill()
    error = _append_until_full(spool)
    assert error.errno == errno.ENOSPC
    assert spool.peek(10)[0] == {"seq": 0}
    disk.free()
    spool.append([{"seq": "after"}])
    records = spool.peek(100_000)
    assert records[0] == {"seq": 0}
    assert records[-1] == {"seq": "after"}
    assert all(isinstance(r, dict) for r in records)
    reopened = Spool(disk.path / "spool", max_bytes=64 * 1024 * 1024)  # a restart reads the same records
    assert reopened.peek(100_000) == records


def test_the_writer_counts_what_a_full_disk_cannot_keep_and_goes_on(disk: FullDisk) -> None:
    writer = Writer(dead_store(), Spool(disk.path / "spool", max_bytes=64 * 1024 * 1024), backoff_initial_s=60)
    writer.start()
    try:
        disk.fill()
        writer.write(points(0, 100))
        writer.flush(timeout_s=5)
        health = writer.health()
        assert health.points_dropped_total == 100
        assert "spool append failed" in (health.last_error or "")
        disk.free()
        writer.write(points(100, 100))
        writer.flush(timeout_s=5)
        assert writer.health().spool_pending_points == 100  # spooling works again
    finally:
        writer.close()


def test_ingest_on_a_full_disk_answers_503_and_takes_the_retry_once_space_frees(disk: FullDisk, tmp_path: Path) -> None:
    config = MonitorConfig(store_url=f"sqlite:///{tmp_path / 'm.db'}", spool_dir=disk.path / "spool")
    store = SqliteStore(tmp_path / "m.db")
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    app = create_app(config, store=store, writer=writer)
    client = app.test_client()
    events = make_events(5)
    disk.fill()
    refused = client.post("/monitor/api/events", json={"events": events})
    assert refused.status_code == 503
    assert "retry" in refused.get_json()["error"]
    disk.free()
    accepted = client.post("/monitor/api/events", json={"events": events})
    assert accepted.get_json() == {"accepted": 5, "duplicates": 0}  # the refused batch was not marked seen
    assert writer.flush(timeout_s=5)
    assert len(store.query_points(schema.JOB_EVENT, 0, 2**62)) == 5
    get_context(app).close()


def test_the_generators_event_sender_survives_a_full_disk(disk: FullDisk) -> None:
    port = free_port()
    sender = EventSender(f"http://127.0.0.1:{port}", disk.path / "events", spool_max_bytes=64 * 1024 * 1024)
    receiver = None
    try:
        disk.fill()
        lost = make_events(20)
        for event in lost:  # no monitor and no disk: these cannot be kept, and are counted
            sender.emit(Event.from_dict(event))
        wait_for(lambda: sender.dropped_total == 20, 30, "the events that could not be kept to be counted")
        receiver = EventReceiver(port)
        direct = make_events(20)
        for event in direct:  # still no disk, but a monitor: they are handed over directly
            sender.emit(Event.from_dict(event))
        wait_for(lambda: len(receiver.event_ids()) == 20, 30, "events sent directly")
        disk.free()
        after = make_events(5)
        for event in after:  # space again: spooled and delivered as usual
            sender.emit(Event.from_dict(event))
        wait_for(lambda: len(receiver.event_ids()) == 25, 30, "events to flow through the spool again")
        assert receiver.event_ids() == [e["event_id"] for e in direct + after]
        assert sender.dropped_total == 20
    finally:
        sender.close()
        if receiver is not None:
            receiver.close()
