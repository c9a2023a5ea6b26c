"""Remediation: cancel through the generator's API, restart through a command, rate-limited, never on resolve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.alerts.actions import ActionOutcome, ActionRunner, CancelJobAction, RestartGeneratorAction
from monitor.alerts.engine import AlertEngine
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.record import FIRING, Alert, label_set
from monitor.alerts.rules import Rule
from tests.alerts.conftest import FakeClock, FakeGenerator


def alert(alert_id: str = "a1", severity: str = "severe", gpu: str | None = "0", action: str = "cancel_job") -> Alert:
    labels = {"alertname": "GpuMemoryHigh", "severity": severity, "host": "h1"}
    if gpu is not None:
        labels["gpu"] = gpu
    return Alert(
        id=alert_id,
        rule_key=f"GpuMemoryHigh/{severity}",
        labels=labels,
        annotations={},
        state=FIRING,
        value=0.97,
        active_at=0.0,
        last_seen_at=0.0,
        action=action,
        fired_at=0.0,
    )


def test_cancel_finds_the_running_job_and_cancels_it_once(fake_generator: FakeGenerator) -> None:
    fake_generator.jobs = {
        "j1": {"job_id": "j1", "state": "running", "gpu": "0"},
        "j2": {"job_id": "j2", "state": "running", "gpu": "1"},
        "j3": {"job_id": "j3", "state": "queued", "gpu": "0"},
    }
    action = CancelJobAction(fake_generator.url, "s3cret")
    (outcome,) = action.run(alert(), 10.0)
    assert (outcome.result, outcome.job_id) == ("success", "j1")
    assert fake_generator.jobs["j1"]["state"] == "cancelled"
    assert fake_generator.jobs["j2"]["state"] == "running"  # another GPU's job is left alone
    assert action.run(alert(), 12.0) == []  # idempotent: nothing running on GPU 0 any more
    assert fake_generator.cancel_calls == ["j1"]
    event = outcome.to_event()
    assert event["kind"] == "action"
    assert event["job_id"] == "j1"
    assert event["at"].endswith("Z")


def test_cancel_reports_a_wrong_token_as_a_failure(fake_generator: FakeGenerator) -> None:
    fake_generator.jobs = {"j1": {"job_id": "j1", "state": "running"}}
    (outcome,) = CancelJobAction(fake_generator.url, "wrong").run(alert(), 1.0)
    assert outcome.result == "failure"
    assert "401" in outcome.detail
    (outcome,) = CancelJobAction("http://127.0.0.1:9", "s3cret", timeout_s=0.5).run(alert(), 1.0)
    assert outcome.result == "failure"
    assert "cannot list running jobs" in outcome.detail


class Recorder:
    """A stand-in for subprocess.run that records the argv and answers with an exit code."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert "shell" not in kwargs
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, self.returncode, "", "boom" if self.returncode else "")


def test_restart_backs_off_like_the_kubelet_and_gives_up_at_the_cap() -> None:
    run = Recorder()
    action = RestartGeneratorAction("systemctl restart 'i2v generator'", run_command=run, max_restarts=3)
    now = 1000.0
    assert action.run(alert("a1", action="restart_generator"), now)[0].result == "success"
    assert run.calls == [["systemctl", "restart", "i2v generator"]]
    assert action.run(alert("a1", action="restart_generator"), now + 1) == []  # same activation: done
    assert action.run(alert("a2", action="restart_generator"), now + 9) == []  # new streak, within 10 s
    assert action.run(alert("a2", action="restart_generator"), now + 10)[0].result == "success"
    assert action.run(alert("a3", action="restart_generator"), now + 29) == []  # back-off is now 20 s
    assert action.run(alert("a3", action="restart_generator"), now + 30)[0].result == "success"
    assert len(run.calls) == 3
    (gave_up,) = action.run(alert("a4", action="restart_generator"), now + 200)  # cap of 3 an hour
    assert gave_up.result == "gave_up"
    assert action.gave_up
    assert action.run(alert("a5", action="restart_generator"), now + 400) == []
    assert len(run.calls) == 3
    # Ten minutes without a restart request: healthy, so the back-off and the cap reset.
    assert action.run(alert("a6", action="restart_generator"), now + 1001)[0].result == "success"
    assert not action.gave_up
    assert action.status()["next_delay_s"] == 20


def test_restart_failures_are_retried_after_the_back_off() -> None:
    run = Recorder(returncode=1)
    action = RestartGeneratorAction([sys.executable, "-c", "raise SystemExit(1)"], run_command=run)
    (failed,) = action.run(alert("a1", action="restart_generator"), 0.0)
    assert failed.result == "failure"
    assert "exited 1" in failed.detail
    assert action.run(alert("a1", action="restart_generator"), 5.0) == []
    run.returncode = 0
    assert action.run(alert("a1", action="restart_generator"), 10.0)[0].result == "success"


def test_a_real_restart_command_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "restarted"
    action = RestartGeneratorAction([sys.executable, "-c", f"open({str(marker)!r}, 'w').write('$HOME')"])
    assert action.run(alert(action="restart_generator"), 0.0)[0].result == "success"
    assert marker.read_text() == "$HOME"


def test_the_runner_never_acts_on_a_resolved_alert_and_counts_outcomes(
    clock: FakeClock, default_rules: list[Rule], fake_generator: FakeGenerator
) -> None:
    fake_generator.jobs = {"j1": {"job_id": "j1", "state": "running"}}
    registry = CollectorRegistry()
    engine = AlertEngine([r for r in default_rules if r.alert == "GpuMemoryHigh"], clock=clock)
    events: list[ActionOutcome] = []
    runner = ActionRunner(
        {"cancel_job": CancelJobAction(fake_generator.url, "s3cret")},
        AlertMetrics(registry),
        is_firing=engine.is_firing,
        on_event=events.append,
        clock=clock,
    )
    gpu0 = label_set(host="h1", gpu="0")
    engine.evaluate({gpu0: {"gpu_memory_ratio": 0.97}})
    clock.advance(10)
    engine.evaluate({gpu0: {"gpu_memory_ratio": 0.97}})
    (severe,) = [a for a in engine.active() if a.severity == "severe" and a.state == FIRING]
    clock.advance(2)
    engine.evaluate({gpu0: {"gpu_memory_ratio": 0.5}})  # resolved before the runner got to it
    assert runner.run_one(severe) == []
    assert fake_generator.cancel_calls == []

    clock.advance(2)
    engine.evaluate({gpu0: {"gpu_memory_ratio": 0.97}})
    clock.advance(10)
    engine.evaluate({gpu0: {"gpu_memory_ratio": 0.97}})
    (severe,) = [a for a in engine.active() if a.severity == "severe"]
    assert [o.result for o in runner.run_one(severe)] == ["success"]
    assert fake_generator.cancel_calls == ["j1"]
    assert [e.job_id for e in events] == ["j1"]
    point = events[0].to_point("h1")
    assert point.tags == {"host": "h1", "action": "cancel_job", "result": "success", "severity": "severe"}
    assert point.fields["job_id"] == "j1"
    sample = registry.get_sample_value
    assert sample("i2v_remediation_actions_total", {"action": "cancel_job", "result": "success"}) == 1
