"""Fault: `python -m monitor` is SIGKILLed while the generator runs a job, then restarted on the same port.

The generator spools what the monitor cannot take and replays it in order; the monitor stores each event once.
Checked against the generator's own record of what it emitted (its JSON event log lines), by counting the
`job_event` points per `event_id` in influxd directly.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.faults.conftest import influx_values
from tests.faults.procs import GeneratorProcess, MonitorProcess
from tests.servers import InfluxServer, free_port, wait_for

DATABASE = "monitor_crash"


def test_events_survive_a_monitor_crash_once_each(influxd: InfluxServer, tmp_path: Path) -> None:
    monitor_port = free_port()
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    generator = GeneratorProcess(tmp_path / "generator", monitor_url=monitor_url)
    monitor = MonitorProcess(
        tmp_path / "monitor",
        store_url=influxd.store_url(DATABASE),
        generator_url=generator.url,
        port=monitor_port,
    )
    try:
        monitor.start()
        generator.start()
        job_id = generator.submit()["job_id"]
        wait_for(lambda: generator.job(job_id)["progress"]["step"] >= 2, 300, "the job to be denoising")
        monitor.kill()  # while step events flow: some were just acknowledged, some are in flight
        step_at_kill = generator.job(job_id)["progress"]["step"]
        wait_for(lambda: generator.health()["events_spooled"] > 0, 30, "the generator to spool events")
        time.sleep(1.0)  # an outage of a few steps' events; nothing to wait for but time itself
        monitor.start()
        final = generator.wait_job(job_id, ("succeeded", "failed"))
        wait_for(lambda: generator.health()["events_spooled"] == 0, 60, "the generator's spool to drain")
        wait_for(lambda: monitor.status()["spool_pending"] == 0, 30, "the monitor's writer to flush")
        status = monitor.status()
        rows = influx_values(influxd, DATABASE, 'SELECT "event_id", "job_id" FROM "job_event"')
    finally:
        generator.stop()
        monitor.stop()

    assert final["state"] == "succeeded", final
    assert step_at_kill < 10, "the job ended before the monitor was killed: the test proved nothing"
    emitted = [e["event_id"] for e in generator.logged_events() if e["job_id"] == job_id]
    assert len(emitted) >= 15  # queued, running, the stages, every denoising step, succeeded
    stored = Counter(row[1] for row in rows if row[2] == job_id)
    assert set(stored) == set(emitted), f"lost: {set(emitted) - set(stored)}"
    assert max(stored.values()) == 1
    assert status["dropped"] == 0
