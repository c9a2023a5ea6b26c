"""Fault: `python -m monitor` frozen (SIGSTOP) while the generator finishes jobs, then thawed (SIGCONT).

While it is frozen the kernel still accepts the generator's event posts, which are never answered: the sender
times out, keeps its spool and posts it again, later with more. Once thawed the monitor serves those posts side
by side and takes every job's end in a burst, more clips than its scoring queue holds
(`MONITOR_QUALITY_MAX_QUEUE=1` here; the GPU acceptance run filled its queue of 32 with a restart's backlog and
clips waiting beside back-to-back jobs). Every clip must still be scored: the posts are published in the order
their events happened (out of order, a job's steps heard after its end left the scorer holding every clip for
a job it took for running), and the clip the queue could not take waits in the store, counted as pending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import save_tiny_clip
from tests.faults.procs import GeneratorProcess, MonitorProcess
from tests.servers import InfluxServer, free_port, wait_for

DATABASE = "monitor_paused"
JOBS = 2  # one more than the queue holds; together they outlast the sender's 5 s timeout


def get(monitor: MonitorProcess, path: str) -> requests.Response:
    """GET a monitor API path (under /monitor/api)."""
    return requests.get(f"{monitor.url}/monitor/api/{path}", timeout=10)


def test_clips_finished_while_the_monitor_was_frozen_are_all_scored(influxd: InfluxServer, tmp_path: Path) -> None:
    monitor_port = free_port()
    generator = GeneratorProcess(tmp_path / "generator", monitor_url=f"http://127.0.0.1:{monitor_port}")
    monitor = MonitorProcess(
        tmp_path / "monitor",
        store_url=influxd.store_url(DATABASE),
        generator_url=generator.url,
        port=monitor_port,
        outputs=generator.root / "outputs",
        extra_args=["--clip-model", str(save_tiny_clip(tmp_path / "weights"))],
        env={"MONITOR_QUALITY_MAX_QUEUE": "1", "MONITOR_QUALITY_STARTUP_QUIET": "0", "OMP_NUM_THREADS": "1"},
    )
    try:
        monitor.start()
        generator.start()
        monitor.pause()
        job_ids = [generator.submit()["job_id"] for _ in range(JOBS)]
        for job_id in job_ids:
            assert generator.wait_job(job_id, ("succeeded", "failed"))["state"] == "succeeded"
        assert generator.health()["events_spooled"] > 0
        monitor.resume()

        wait_for(
            lambda: all((get(monitor, f"jobs/{j}").json() or {}).get("status") == "succeeded" for j in job_ids),
            60,
            "every job's end to reach the monitor's store",
        )
        drained = True
        try:
            wait_for(
                lambda: (q := monitor.status()["quality"])["pending"] == 0 and not q["scoring"],
                60,
                "the scorer to have no clip waiting",
            )
        except TimeoutError:
            drained = False
        answers: dict[str, Any] = {job_id: get(monitor, f"jobs/{job_id}/quality").json() for job_id in job_ids}
    finally:
        generator.stop()
        monitor.stop()

    unscored = {job_id: a for job_id, a in answers.items() if a.get("status") != "scored" or a["clip_score"] is None}
    assert not unscored, f"clips not scored with CLIP: {unscored}\n{monitor.log_tail()}"
    assert drained, f"clips still pending: {answers}"
