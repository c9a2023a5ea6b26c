"""The writer: non-blocking writes, overflow to the spool, bad points isolated, nothing lost on close."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.spool import Spool
from monitor.storage import Point
from monitor.storage.influx import InfluxStore
from monitor.storage.schema import GPU_SAMPLE, conform, declare_fields
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer
from tests.servers import free_port, wait_for

T0 = 1_700_000_000 * 1_000_000_000


def points(count: int, start: int = 0, measurement: str = "m") -> list[Point]:
    return [Point(measurement, {"host": "h"}, {"seq": i}, T0 + i * 1000) for i in range(start, start + count)]


def stored_seqs(store: SqliteStore, measurement: str = "m") -> list[int]:
    return [int(p.fields["seq"]) for p in store.query_points(measurement, 0, 2**62)]


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    yield store
    store.close()


@pytest.fixture
def dead_store() -> Iterator[InfluxStore]:
    """An InfluxDB URL where nothing listens: every request is refused at once."""
    store = InfluxStore(f"http://127.0.0.1:{free_port()}", "db", timeout_s=(0.5, 0.5))
    yield store
    store.close()


def test_points_reach_the_store_in_batches(sqlite: SqliteStore, tmp_path: Path) -> None:
    writer = Writer(sqlite, Spool(tmp_path / "spool", 1 << 20), batch_size=50, flush_interval_s=0.05)
    writer.start()
    writer.write(points(120))
    wait_for(lambda: len(stored_seqs(sqlite)) == 120, 10, "120 points in the store")
    writer.close()
    health = writer.health()
    assert health.points_written_total == 120
    assert health.store_reachable is True
    assert health.last_write_at is not None


def test_a_full_buffer_overflows_to_the_spool_and_flush_delivers_it(sqlite: SqliteStore, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    writer = Writer(sqlite, spool, buffer_max_points=10)  # not started: nothing drains the buffer
    writer.write(points(25))
    assert writer.health().buffer_points == 10
    assert spool.pending() == 15
    assert writer.flush() is True
    assert sorted(stored_seqs(sqlite)) == list(range(25))


def test_bad_points_are_isolated_by_bisection_and_dropped(sqlite: SqliteStore, tmp_path: Path) -> None:
    batch = points(100)
    batch[17] = Point("m", {"host": "ends with a backslash\\"}, {"seq": 17}, T0)
    batch[80] = Point("m", {"host": "h"}, {"time": 80}, T0)
    writer = Writer(sqlite, Spool(tmp_path / "spool", 1 << 20))
    writer.write(batch)
    assert writer.flush() is True
    assert len(stored_seqs(sqlite)) == 98
    health = writer.health()
    assert health.points_rejected_total == 2
    assert "time" in (health.last_error or "")


def test_while_the_store_is_down_points_go_to_the_spool(dead_store: InfluxStore, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    writer = Writer(dead_store, spool, flush_interval_s=0.05, backoff_initial_s=0.05, backoff_max_s=0.1)
    writer.start()
    writer.write(points(30))
    wait_for(lambda: spool.pending() == 30, 10, "30 points in the spool")
    health = writer.health()
    assert health.store_reachable is False
    assert health.store_errors_total >= 1
    assert health.spool_bytes > 0
    writer.close()


def test_close_keeps_undelivered_points_and_a_restart_replays_them_in_order(
    dead_store: InfluxStore, sqlite: SqliteStore, tmp_path: Path
) -> None:
    writer = Writer(dead_store, Spool(tmp_path / "spool", 1 << 20), flush_interval_s=60)
    writer.start()
    writer.write(points(40))
    writer.close()  # the store never answered: the points stay on disk

    restarted = Writer(sqlite, Spool(tmp_path / "spool", 1 << 20))
    assert restarted.health().spool_pending_points == 40
    assert restarted.flush() is True
    assert stored_seqs(sqlite) == list(range(40))


def test_conform_keeps_field_types_stable(sqlite: SqliteStore, tmp_path: Path) -> None:
    writer = Writer(sqlite, Spool(tmp_path / "spool", 1 << 20), conform=conform)
    sample = Point(GPU_SAMPLE, {"host": "h", "gpu": "0"}, {"power_w": 300, "memory_used_bytes": 5.0, "up": 1}, T0)
    writer.write([sample])
    assert writer.flush() is True
    fields = sqlite.query_points(GPU_SAMPLE, 0, 2**62)[0].fields
    assert fields == {"power_w": 300.0, "memory_used_bytes": 5, "up": True}
    assert isinstance(fields["power_w"], float)


def test_other_parts_declare_their_field_types_for_conform() -> None:
    declare_fields("test_declared", {"score": "float", "rating": "int"})
    point = conform(Point("test_declared", {"host": "h"}, {"score": 1, "rating": 4.0, "other": "x"}, T0))
    assert point.fields == {"score": 1.0, "rating": 4, "other": "x"}
    assert isinstance(point.fields["score"], float)
    with pytest.raises(ValueError, match="one of"):
        declare_fields("test_declared", {"score": "double"})


class IngestDuringWrites(SqliteStore):
    """A real SQLite store during whose first write the monitor's ingest spools more points (another thread in
    production), enough to push the spool past its bound and drop its oldest segment: the batch being written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writer: Writer | None = None
        self.ingested = 0
        self.dropped_segment_records = 0  # how many points the dropped segment held, read before it went

    def write(self, batch: list[Point]) -> None:
        if self.writer is not None and self.ingested == 0:
            spool = self.writer.spool
            oldest = min(spool.directory.glob("segment-*"))
            while oldest.exists():
                self.dropped_segment_records = len(oldest.read_bytes().splitlines())
                self.writer.write_durable(points(1, start=10_000 + self.ingested))
                self.ingested += 1
        super().write(batch)


def test_a_drop_at_the_spool_bound_during_a_replay_never_acknowledges_undelivered_points(tmp_path: Path) -> None:
    store = IngestDuringWrites(tmp_path / "store.db")
    spool = Spool(tmp_path / "spool", 64 * 1024)  # 8 KiB segments
    writer = Writer(store, spool, batch_size=20)
    for start in range(0, 40, 4):  # spooled while the store was away: several small appends, two segments
        writer.write_durable(points(4, start=start))
    store.writer = writer
    writer.flush(timeout_s=10)  # replays the spool (not started: on this thread)
    writer.flush(timeout_s=10)
    stored = set(stored_seqs(store))
    appended = [*range(40), *range(10_000, 10_000 + store.ingested)]  # in the spool's order
    lost = set(appended) - stored
    # The dropped (oldest) segment began with 0-19, which were being written and arrived; what it held after
    # them is lost and counted. Everything after that segment arrives: none acknowledged in another's place.
    assert set(range(20)) <= stored
    assert lost == set(appended[20 : store.dropped_segment_records])
    assert writer.health().points_dropped_total == len(lost)
    assert spool.pending() == 0
    store.close()
