"""The outage test: SIGKILL a real influxd mid-stream, keep writing, restart it, count every point once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.spool import Spool
from monitor.storage import Point
from monitor.storage.influx import InfluxStore
from monitor.storage.writer import Writer
from tests.servers import InfluxServer, wait_for

T0 = 1_700_000_000 * 1_000_000_000
OUTAGE_S = 3.0
POINTS_PER_ROUND = 100


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[InfluxServer]:
    """An influxd of this test's own, since the test kills it."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    yield server
    server.stop()


def test_every_point_survives_an_influxd_crash_exactly_once(own_influxd: InfluxServer, tmp_path: Path) -> None:
    store = InfluxStore.from_url(own_influxd.store_url("outage"), timeout_s=(0.5, 2.0))
    writer = Writer(
        store,
        Spool(tmp_path / "spool", max_bytes=64 << 20),
        batch_size=200,
        flush_interval_s=0.05,
        backoff_initial_s=0.05,
        backoff_max_s=0.4,
    )
    writer.start()
    produced = 0

    def produce_round() -> None:
        """Write one round of points and wait until the writer has taken them (to the store or the spool)."""
        nonlocal produced
        points = [
            Point("outage", {"host": "h", "gpu": str(seq % 2)}, {"seq": seq, "v": seq / 7}, T0 + seq * 1000)
            for seq in range(produced, produced + POINTS_PER_ROUND)
        ]
        produced += len(points)
        writer.write(points)
        wait_for(lambda: writer.health().buffer_points == 0, 20, "the writer to take a round")

    try:
        for _ in range(10):
            produce_round()
        assert writer.health().points_written_total > 0

        own_influxd.kill()  # mid-stream: no clean shutdown
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < OUTAGE_S:
            produce_round()
        during = writer.health()
        assert during.store_reachable is False
        assert during.spool_pending_points > 0
        assert during.store_errors_total > 0

        own_influxd.start()  # same data directory and ports
        for _ in range(5):
            produce_round()
        wait_for(lambda: writer.flush(timeout_s=5), 30, "the spool to drain into the restarted influxd")
    finally:
        writer.close()
        store.close()

    health = writer.health()
    assert health.store_reachable is True
    assert health.points_dropped_total == 0
    assert health.points_rejected_total == 0
    result = own_influxd.query('SELECT "seq" FROM "outage"', database="outage")
    seqs = [row[1] for row in result["results"][0]["series"][0]["values"]]
    assert len(seqs) == produced  # each point once: replays of in-flight batches were stored once
    assert sorted(seqs) == list(range(produced))
