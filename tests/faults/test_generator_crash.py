"""Fault: `python -m generator` is SIGKILLed mid-job and restarted with the same state folder.

The running job is reported failed (job state persists across restarts), ended when it was last known alive (not
at the restart: its run time holds no downtime) with the crash and the restart time in its notes, and counted
failed in the restarted generator's request metrics, the job queued behind it runs, the
monitor (a real `python -m monitor` with its alerting wired) raises GeneratorUnreachable while the generator
is gone and resolves it once it answers again, and the failure reaches the monitor as an event.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
import yaml

from common.events import epoch_s
from generator.jobs import ALIVE_EVERY_S
from tests.faults.procs import ROOT, GeneratorProcess, MonitorProcess
from tests.servers import free_port, wait_for


def rules_with_short_for(path: Path) -> Path:
    """Write the shipped rules with GeneratorUnreachable's `for` cut from 30 s to 1 s (the rest unchanged)."""
    rules = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())
    for rule in rules["rules"]:
        if rule["alert"] == "GeneratorUnreachable":
            rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules))
    return path


def alert_states(monitor: MonitorProcess, name: str) -> list[dict[str, Any]]:
    """Return the monitor's active and past alerts of one name."""
    body = monitor.alerts()
    return [a for a in body["active"] + body["history"] if a["alertname"] == name]


def firing(monitor: MonitorProcess, name: str) -> bool:
    """Return whether an alert of that name is firing."""
    return any(a["state"] == "firing" for a in monitor.alerts()["active"] if a["alertname"] == name)


def test_a_killed_generator_fails_its_job_resumes_its_queue_and_is_alerted(tmp_path: Path) -> None:
    monitor_port = free_port()
    generator = GeneratorProcess(tmp_path / "generator", monitor_url=f"http://127.0.0.1:{monitor_port}")
    rules = rules_with_short_for(tmp_path / "rules.yml")
    monitor = MonitorProcess(
        tmp_path / "monitor",
        generator_url=generator.url,
        port=monitor_port,
        interval_s=0.5,
        extra_args=["--alert-rules", str(rules)],
    )
    try:
        monitor.start()
        generator.start()
        wait_for(lambda: not firing(monitor, "GeneratorUnreachable"), 30, "the generator to be seen up")
        running = generator.submit()["job_id"]
        queued = generator.submit()["job_id"]
        wait_for(lambda: generator.job(running)["progress"]["step"] >= 1, 300, "the first job to be denoising")
        assert generator.job(queued)["state"] == "queued"

        generator.kill()
        killed_at = time.time()
        wait_for(lambda: firing(monitor, "GeneratorUnreachable"), 30, "GeneratorUnreachable to fire")

        generator.start()
        restarted_at = time.time()
        failed = generator.job(running)
        assert failed["state"] == "failed"
        assert failed["error"].startswith("lost in a crash")
        # It ended when last known alive (a step at most ALIVE_EVERY_S before the kill), not at the restart.
        finished_s = epoch_s(failed["finished_at"])
        assert epoch_s(failed["started_at"]) <= finished_s <= killed_at
        assert killed_at - finished_s <= ALIVE_EVERY_S + 5  # 5 s: a step of the tiny model on loaded cores
        assert restarted_at - finished_s > restarted_at - killed_at  # the downtime is not run time
        assert "the generator restarted at" in failed["notes"][-1]
        # The restarted process counts the lost job, so the error ratio (GeneratorErrorRateHigh) sees crashes.
        exposition = requests.get(f"{generator.url}/metrics", timeout=10).text
        assert 'i2v_requests_total{status="failed"} 1.0' in exposition
        done = generator.wait_job(queued, ("succeeded", "failed", "cancelled"))
        assert done["state"] == "succeeded", done
        assert requests.get(f"{generator.url}{done['video_url']}", timeout=10).content[4:8] == b"ftyp"
        wait_for(lambda: not firing(monitor, "GeneratorUnreachable"), 30, "GeneratorUnreachable to resolve")
        resolved = [a for a in alert_states(monitor, "GeneratorUnreachable") if a["state"] == "resolved"]
        assert resolved, monitor.alerts()
        # The failure of the killed job reaches the monitor as an event, like any other.
        wait_for(
            lambda: (
                requests.get(f"{monitor.url}/monitor/api/jobs/{running}", timeout=10).json().get("state") == "failed"
            ),
            60,
            "the monitor to see the killed job failed",
        )
        seen = requests.get(f"{monitor.url}/monitor/api/jobs/{running}", timeout=10).json()
        assert seen["finished_at"] == failed["finished_at"]  # the monitor's run_s holds no downtime either
        assert seen["run_s"] <= killed_at - epoch_s(failed["started_at"])
    finally:
        generator.stop()
        monitor.stop()
