"""Fault: a point no store can write (text with a lone surrogate, which JSON carries and UTF-8 cannot).

Found by fuzzing ingest: such a point in the monitor's spool was retried forever, blocking every point behind
it. Ingest now refuses such events; whatever else produces one, the writer drops it alone, counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.spool import Spool
from monitor.storage.base import Point, StoreRejected
from monitor.storage.influx import InfluxStore
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer, encode_point
from tests.faults.conftest import influx_values, make_events
from tests.servers import InfluxServer

T0 = 1_700_000_000 * 1_000_000_000
LONE_SURROGATE = "bad \ud800 text"


def points(start: int, count: int, measurement: str = "poison") -> list[Point]:
    """Return numbered points with a text field."""
    return [
        Point(measurement, {"host": "h"}, {"seq": i, "note": "ok"}, T0 + i * 1000) for i in range(start, start + count)
    ]


def poison(seq: int, measurement: str = "poison") -> Point:
    """Return a point whose text field cannot be encoded."""
    return Point(measurement, {"host": "h"}, {"seq": seq, "note": LONE_SURROGATE}, T0 + seq * 1000)


def test_a_poison_point_in_the_spool_is_dropped_alone_and_the_rest_delivered(
    influxd: InfluxServer, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024 * 1024)
    spool.append([encode_point(p) for p in [*points(0, 50), poison(50), *points(51, 49)]])
    store = InfluxStore.from_url(influxd.store_url("poison"))
    writer = Writer(store, spool, batch_size=40)
    writer.write([*points(100, 10), poison(110), *points(111, 9)])
    try:
        assert writer.flush(timeout_s=30)  # nothing left behind: the spool drained past the poison
    finally:
        writer.close()
        store.close()
    health = writer.health()
    assert health.points_rejected_total == 2
    assert health.points_written_total == 118
    seqs = sorted(row[1] for row in influx_values(influxd, "poison", 'SELECT "seq" FROM "poison"'))
    assert seqs == [s for s in range(120) if s not in (50, 110)]


def test_ingest_refuses_events_no_store_could_keep(tmp_path: Path) -> None:
    from common.events import Event, EventError

    event = make_events(1)[0]
    for change in ({"prompt": LONE_SURROGATE}, {"duration_s": 1e308}, {"started_at": "0107-06-08T03:37:24Z"}):
        with pytest.raises(EventError):
            Event.from_dict({**event, **change})


def test_sqlite_stays_usable_after_a_point_it_cannot_write(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "m.db")
    try:
        with pytest.raises(StoreRejected):
            store.write([poison(0)])
        store.write(points(1, 1))
    finally:
        store.close()
