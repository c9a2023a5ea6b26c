"""Remediation actions (cancel the running job, restart the generator) and the thread that runs them.

Actions are asked again on every evaluation while their alert fires and decide themselves whether there
is anything to do, which makes them idempotent: a job is cancelled once, a firing activation restarts the
generator at most once, and the restart back-off (kubelet-like) holds the next one back. They never run for
a resolve: the runner re-checks that the alert still fires right before acting.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import requests

from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.record import Alert, iso
from monitor.storage.base import Point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionOutcome:
    """What one action attempt did: counted, logged and emitted as an event."""

    action: str
    result: str  # success | failure | gave_up
    detail: str
    alert_id: str = ""
    alertname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None
    at: float = 0.0

    def to_event(self) -> dict[str, Any]:
        """Serialise as JSON (kind "action", RFC 3339 time) for the API and logs."""
        return {"kind": "action", **asdict(self), "at": iso(self.at)}

    def to_point(self, host: str) -> Point:
        """Return the store point: low-cardinality tags, the alert and job as fields."""
        return Point(
            measurement="remediation_action",
            tags={
                "host": host,
                "action": self.action,
                "result": self.result,
                "severity": self.labels.get("tier", self.labels.get("severity", "")),  # the tier, as stored before
            },
            fields={
                "alertname": self.alertname,
                "alert_id": self.alert_id,
                "job_id": self.job_id or "",
                "detail": self.detail,
            },
            time_ns=int(self.at * 1e9),
        )


class Action(Protocol):
    """Act for a firing alert; return what was done (an empty list when there is nothing to do)."""

    name: str

    def run(self, alert: Alert, now: float) -> list[ActionOutcome]:
        """Act once if needed; never raise for a failure the outcome can carry."""
        ...


class CancelJobAction:
    """Cancel the generator's running job(s) through its API, once per job; on the alert's GPU when known."""

    name = "cancel_job"

    def __init__(
        self,
        generator_url: str,
        admin_token: str | None = None,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 3.0,
        remember: int = 1000,
    ) -> None:
        """Point at the generator's base URL (e.g. http://127.0.0.1:7860) with its admin token."""
        self.generator_url = generator_url.rstrip("/")
        self._token = admin_token
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._done: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def run(self, alert: Alert, now: float) -> list[ActionOutcome]:
        """Find running jobs (GET /api/jobs?state=running) and POST /api/jobs/<id>/cancel for each new one."""
        base: dict[str, Any] = {
            "action": self.name,
            "alert_id": alert.id,
            "alertname": alert.name,
            "labels": alert.labels,
            "at": now,
        }
        try:
            response = self._session.get(
                f"{self.generator_url}/api/jobs",
                params={"state": "running"},
                headers=self._headers(),
                timeout=self._timeout_s,
            )
            response.raise_for_status()
            jobs = response.json().get("jobs", [])
        except (requests.RequestException, ValueError, AttributeError) as exc:
            return [ActionOutcome(result="failure", detail=f"cannot list running jobs: {exc}", **base)]
        outcomes = []
        gpu = alert.labels.get("gpu")
        for job in jobs:
            job_id = str(job.get("job_id", ""))
            if not job_id or job.get("state", "running") != "running" or job_id in self._done:
                continue
            if gpu is not None and job.get("gpu") is not None and str(job["gpu"]) != gpu:
                continue
            outcomes.append(self._cancel(job_id, alert, base))
        return outcomes

    def _cancel(self, job_id: str, alert: Alert, base: dict[str, Any]) -> ActionOutcome:
        try:
            response = self._session.post(
                f"{self.generator_url}/api/jobs/{job_id}/cancel",
                headers=self._headers(),
                timeout=self._timeout_s,
            )
        except requests.RequestException as exc:
            return ActionOutcome(result="failure", detail=f"cancel {job_id}: {exc}", job_id=job_id, **base)
        if response.status_code in (200, 202, 409):
            # 409: the job already ended; either way there is nothing more to do for it.
            self._done[job_id] = None
            while len(self._done) > self._remember:
                self._done.popitem(last=False)
            detail = f"cancelled job {job_id} for {alert.name} ({alert.severity})"
            if response.status_code == 409:
                detail = f"job {job_id} had already ended"
            return ActionOutcome(result="success", detail=detail, job_id=job_id, **base)
        return ActionOutcome(
            result="failure",
            detail=f"cancel {job_id}: HTTP {response.status_code} {response.text[:200]}",
            job_id=job_id,
            **base,
        )


class RestartGeneratorAction:
    """Run the configured restart command, rate-limited like the kubelet's crash-loop back-off.

    After a restart the next one waits `backoff_initial_s`, doubling each time up to `backoff_max_s`; the
    back-off resets once no restart has been asked for during `reset_after_s` (the generator stayed
    healthy). More than `max_restarts` within `window_s` stops the action: it reports `gave_up` once and
    `exhausted(now, healthy)` reads 1 while the generator is not healthy (feed it to the engine as
    `restarts_exhausted` to page), until the reset period passes. `to_state()` / `restore()` carry all of this
    across a monitor restart, so a restart of the monitor never resets the cap.
    """

    name = "restart_generator"

    def __init__(
        self,
        command: str | Sequence[str] | None,
        *,
        run_command: Callable[..., Any] = subprocess.run,
        timeout_s: float = 120.0,
        backoff_initial_s: float = 10.0,
        backoff_max_s: float = 300.0,
        reset_after_s: float = 600.0,
        max_restarts: int = 5,
        window_s: float = 3600.0,
    ) -> None:
        """Take the command as a string (split with shlex, never run through a shell) or an argv list."""
        self.argv = shlex.split(command) if isinstance(command, str) else list(command or [])
        self._run_command = run_command
        self._timeout_s = timeout_s
        self._initial_s = backoff_initial_s
        self._max_s = backoff_max_s
        self._reset_after_s = reset_after_s
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._delay_s = backoff_initial_s
        self._next_allowed_at = 0.0
        self._last_asked_at: float | None = None
        self._restarts: deque[float] = deque()
        self._done_alerts: set[str] = set()
        self._lock = threading.Lock()
        self.gave_up = False
        self.on_change: Callable[[], None] | None = None  # called after an attempt, to save to_state()

    def refresh(self, now: float) -> None:
        """Reset the back-off and the cap once no restart was asked for during `reset_after_s` (called per tick)."""
        with self._lock:
            self._refresh(now)

    def _refresh(self, now: float) -> None:
        if self._last_asked_at is not None and now - self._last_asked_at >= self._reset_after_s:
            if self.gave_up or self._restarts:
                log.info("restart back-off reset after %.0f s without a restart request", self._reset_after_s)
            self._delay_s = self._initial_s
            self._next_allowed_at = 0.0
            self._restarts.clear()
            self._done_alerts.clear()
            self.gave_up = False
            self._last_asked_at = None

    def exhausted(self, now: float, healthy: bool) -> bool:
        """Return whether restarts are capped while the generator still needs one (not healthy)."""
        with self._lock:
            self._refresh(now)
            return self.gave_up and not healthy

    def to_state(self) -> dict[str, Any]:
        """Return the back-off, the cap's window and which alerts were handled, JSON-ready."""
        with self._lock:
            return {
                "delay_s": self._delay_s,
                "next_allowed_at": self._next_allowed_at,
                "last_asked_at": self._last_asked_at,
                "restarts": list(self._restarts),
                "done_alerts": sorted(self._done_alerts),
                "gave_up": self.gave_up,
            }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back `to_state()` from before a monitor restart."""
        with self._lock:
            self._delay_s = float(state.get("delay_s", self._initial_s))
            self._next_allowed_at = float(state.get("next_allowed_at", 0.0))
            last = state.get("last_asked_at")
            self._last_asked_at = None if last is None else float(last)
            self._restarts = deque(float(t) for t in state.get("restarts", []))
            self._done_alerts = {str(a) for a in state.get("done_alerts", [])}
            self.gave_up = bool(state.get("gave_up", False))

    def run(self, alert: Alert, now: float) -> list[ActionOutcome]:
        """Restart once for this firing activation, if the back-off and the cap allow it now."""
        with self._lock:
            outcomes = self._run(alert, now)
        if outcomes and self.on_change is not None:
            self.on_change()
        return outcomes

    def _run(self, alert: Alert, now: float) -> list[ActionOutcome]:
        base: dict[str, Any] = {
            "action": self.name,
            "alert_id": alert.id,
            "alertname": alert.name,
            "labels": alert.labels,
            "at": now,
        }
        self._refresh(now)
        self._last_asked_at = now
        if alert.id in self._done_alerts or self.gave_up or now < self._next_allowed_at:
            return []
        if not self.argv:
            self._done_alerts.add(alert.id)
            return [
                ActionOutcome(
                    result="failure", detail="no restart command configured (MONITOR_RESTART_COMMAND)", **base
                )
            ]
        while self._restarts and now - self._restarts[0] > self._window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self._max_restarts:
            self.gave_up = True
            return [
                ActionOutcome(
                    result="gave_up",
                    detail=f"{len(self._restarts)} restarts within {self._window_s:.0f} s: "
                    "stopped restarting, a person must look",
                    **base,
                )
            ]
        self._restarts.append(now)
        self._next_allowed_at = now + self._delay_s
        self._delay_s = min(self._delay_s * 2, self._max_s)
        try:
            completed = self._run_command(
                self.argv,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return [ActionOutcome(result="failure", detail=f"restart command failed to run: {exc}", **base)]
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout or "").strip()[-300:]
            return [ActionOutcome(result="failure", detail=f"restart exited {completed.returncode}: {tail}", **base)]
        self._done_alerts.add(alert.id)
        return [ActionOutcome(result="success", detail=f"ran {shlex.join(self.argv)}", **base)]

    def status(self) -> dict[str, Any]:
        """Describe the back-off for the API."""
        return {
            "max_restarts": self._max_restarts,
            "window_s": self._window_s,
            "restarts_in_window": len(self._restarts),
            "next_allowed_at": iso(self._next_allowed_at) if self._next_allowed_at else None,
            "next_delay_s": self._delay_s,
            "gave_up": self.gave_up,
            "last_asked_at": iso(self._last_asked_at),
        }


ACTIONS: dict[str, Callable[..., Action]] = {
    "cancel_job": CancelJobAction,
    "restart_generator": RestartGeneratorAction,
}


class ActionRunner:
    """Run actions for firing alerts in a background thread; count, log and emit each outcome."""

    def __init__(
        self,
        actions: dict[str, Action],
        metrics: AlertMetrics,
        *,
        is_firing: Callable[[str], bool],
        on_event: Callable[[ActionOutcome], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`is_firing(alert_id)` is checked right before acting, so a resolve in between cancels the act."""
        self.actions = actions
        self._metrics = metrics
        self._is_firing = is_firing
        self._on_event = on_event
        self._clock = clock
        self._queue: OrderedDict[str, Alert] = OrderedDict()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.recent: deque[ActionOutcome] = deque(maxlen=50)

    def submit(self, firing: Sequence[Alert]) -> None:
        """Queue the firing alerts that carry an action (a newer copy replaces a queued one); never blocks."""
        with self._cond:
            for alert in firing:
                if alert.action in self.actions and alert.state == "firing":
                    self._queue[alert.id] = alert
            if self._queue:
                self._cond.notify()

    def start(self) -> None:
        """Start the action thread."""
        self._thread = threading.Thread(target=self._loop, name="alerts-actions", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current action."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                _, alert = self._queue.popitem(last=False)
            try:
                self.run_one(alert)
            except Exception:  # the loop boundary: the alert is asked again on the next evaluation
                log.exception("action %s for alert %s crashed", alert.action, alert.id)

    def run_one(self, alert: Alert) -> list[ActionOutcome]:
        """Run the alert's action now if it still fires; count, log and emit the outcomes."""
        if not self._is_firing(alert.id):
            return []
        outcomes = self.actions[alert.action].run(alert, self._clock())
        for outcome in outcomes:
            self._metrics.actions.labels(outcome.action, outcome.result).inc()
            self.recent.appendleft(outcome)
            level = logging.WARNING if outcome.result == "success" else logging.ERROR
            log.log(
                level,
                "remediation %s %s for %s: %s",
                outcome.action,
                outcome.result,
                alert.name,
                outcome.detail,
            )
            if self._on_event:
                try:
                    self._on_event(outcome)
                except Exception:  # an event sink failure must not stop remediation; the log line above has it
                    log.exception("could not emit the action event")
        return outcomes
