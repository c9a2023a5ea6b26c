"""Fault: influxd is SIGKILLed mid-stream and restarted under a running `python -m monitor`.

Every host sample the monitor took and every event it accepted must be in influxd exactly once afterwards,
counted by querying influxd directly (not through the monitor's code).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import requests

from tests.faults.conftest import influx_values, make_events
from tests.faults.procs import MonitorProcess
from tests.servers import InfluxServer, wait_for

DATABASE = "faults"
INTERVAL_S = 0.2
OUTAGE_S = 4.0


def test_samples_and_events_arrive_exactly_once_across_an_influxd_crash(
    own_influxd: InfluxServer, tmp_path: Path
) -> None:
    monitor = MonitorProcess(tmp_path / "monitor", store_url=own_influxd.store_url(DATABASE), interval_s=INTERVAL_S)
    monitor.start()
    sent: list[str] = []

    def post_events(count: int, replay: list[dict] | None = None) -> list[dict]:
        """Post fresh events (and optionally a batch already sent: a generator's replay after a lost answer)."""
        batch = make_events(count)
        answer = requests.post(f"{monitor.url}/monitor/api/events", json={"events": batch + (replay or [])}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": count, "duplicates": len(replay or [])}
        sent.extend(e["event_id"] for e in batch)
        return batch

    try:
        wait_for(lambda: monitor.status()["writer"]["points_written_total"] >= 5, 30, "samples to reach influxd")
        previous = post_events(10)

        own_influxd.kill()  # mid-stream: no clean shutdown
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < OUTAGE_S:
            previous = post_events(10, replay=previous[:3])
            time.sleep(0.25)  # a steady trickle of events while the samples keep coming
        during = monitor.status()
        assert during["store_reachable"] is False
        assert during["spool_pending"] > 0

        own_influxd.start()  # same data directory and ports
        post_events(10, replay=previous)
        wait_for(lambda: monitor.status()["spool_pending"] == 0, 60, "the monitor's spool to drain")
        status = monitor.status()
        assert status["store_reachable"] is True
        assert status["dropped"] == 0
        assert status["rejected"] == 0
        ticks, last_sample_s = status["sampler"]["ticks_total"], status["sampler"]["last_sample_time_s"]
        until_ns = int(last_sample_s * 1e9) + 1000  # a float of seconds loses the last digits; ticks are 0.2 s apart

        def stored_samples() -> list[list]:
            query = f'SELECT "cpu_ratio" FROM "host_sample" WHERE time <= {until_ns}'
            return influx_values(own_influxd, DATABASE, query)

        wait_for(lambda: len(stored_samples()) >= ticks, 30, f"{ticks} host samples in influxd")
        samples = stored_samples()
        stored_events = [row[1] for row in influx_values(own_influxd, DATABASE, 'SELECT "event_id" FROM "job_event"')]
        assert monitor.alive(), monitor.log_tail()
    finally:
        exit_status = monitor.stop()

    assert exit_status == 0, monitor.log_tail()
    assert len(samples) == ticks  # one point per sampler tick: none lost during the outage, none twice
    times_s = [row[0] / 1e9 for row in samples]
    largest_gap_s = max(b - a for a, b in itertools.pairwise(times_s))
    assert largest_gap_s < 5 * INTERVAL_S, "a run of samples is missing"
    assert sorted(stored_events) == sorted(sent)  # every event once; the replayed ones were not stored twice
