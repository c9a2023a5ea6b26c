"""Fault: a slow store (a proxy in front of a real influxd that holds every answer back).

The writer's producers (sampler, ingest) must never wait on the store, and its memory must stay bounded: the
in-memory buffer holds at most `buffer_max_points`, the rest goes to the bounded disk spool; once the store is
fast again everything arrives, once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from common.spool import Spool
from monitor.storage.base import Point
from monitor.storage.influx import InfluxStore
from monitor.storage.writer import Writer
from tests.faults.conftest import influx_values
from tests.servers import InfluxServer, free_port, wait_for

T0 = 1_700_000_000 * 1_000_000_000
DATABASE = "slow"
STORE_DELAY_S = 3.0  # every answer of the store, through the proxy


class SlowProxy:
    """Forward HTTP requests to `target`, holding each answer back `delay_s` seconds (settable while running)."""

    def __init__(self, target: str, delay_s: float) -> None:
        """Listen on a free loopback port."""
        self.delay_s = delay_s
        self.requests_total = 0
        proxy = self
        session = requests.Session()

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests_total += 1
                time.sleep(proxy.delay_s)  # the fault itself: a store that answers late
                upstream = session.request(self.command, target + self.path, data=body, timeout=30)
                self.send_response(upstream.status_code)
                for name in ("Content-Type", "X-Influxdb-Version"):
                    if name in upstream.headers:
                        self.send_header(name, upstream.headers[name])
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = _forward

            def log_message(self, *args: object) -> None:
                return None

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def store_url(self, database: str) -> str:
        """Return the monitor's store URL through the proxy."""
        return f"influxdb://127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_proxy(influxd: InfluxServer) -> Iterator[SlowProxy]:
    """A proxy to the session's influxd that delays every answer by 3 s."""
    proxy = SlowProxy(influxd.url, delay_s=STORE_DELAY_S)
    yield proxy
    proxy.close()


def test_a_slow_store_never_blocks_producers_and_memory_stays_bounded(
    slow_proxy: SlowProxy, influxd: InfluxServer, tmp_path: Path
) -> None:
    buffer_max = 5_000
    store = InfluxStore.from_url(slow_proxy.store_url(DATABASE))  # production timeouts: 3 s connect, 10 s read
    writer = Writer(
        store,
        Spool(tmp_path / "spool", max_bytes=256 * 1024 * 1024),
        batch_size=1_000,
        flush_interval_s=0.1,
        buffer_max_points=buffer_max,
    )
    writer.start()
    produced, slowest_write_s, largest_buffer = 0, 0.0, 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < 6.0:  # 6 s of 2,000 points every 20 ms against a store 3 s late
            batch = [
                Point(DATABASE, {"host": "h"}, {"seq": seq}, T0 + seq * 1000)
                for seq in range(produced, produced + 2000)
            ]
            before = time.monotonic()
            writer.write(batch)
            slowest_write_s = max(slowest_write_s, time.monotonic() - before)
            produced += len(batch)
            largest_buffer = max(largest_buffer, writer.health().buffer_points)
            time.sleep(0.02)
        during = writer.health()

        slow_proxy.delay_s = 0.0  # the store recovers
        wait_for(lambda: writer.flush(timeout_s=10), 120, "the spool to drain into the store")
    finally:
        writer.close()
        store.close()

    assert largest_buffer <= buffer_max  # bounded memory: the rest went to disk
    # Producers never waited on the store: a write that did would take its whole delay; a disk append on a loaded
    # 2-core machine took up to 1.5 s.
    assert slowest_write_s < STORE_DELAY_S - 0.5
    assert during.spool_pending_points > 0  # the overflow really went to the spool
    assert during.store_reachable is not False  # slow is not down: nothing was counted as an outage
    health = writer.health()
    assert health.points_dropped_total == 0
    assert health.points_written_total >= produced
    stored = influx_values(influxd, DATABASE, f'SELECT count("seq") FROM "{DATABASE}"')
    assert stored[0][1] == produced  # all of it, once
