"""Wire the alerting together: rules, engine, notifier workers, actions and the generator poller.

Feeds: the sampler's on_snapshot (GPU values), `tick()` on the sampling cadence from its own thread (generator
values, sampler age, the Watchdog), `feed()` for values other parts own (store_up, spool_records) and
`record_quality()` for the low-quality streak.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests
from prometheus_client import CollectorRegistry

from monitor.alerts.actions import ActionOutcome, ActionRunner, CancelJobAction, RestartGeneratorAction
from monitor.alerts.engine import AlertEngine
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.notify import Notifier, NotifierWorker, build_notifier
from monitor.alerts.poller import GeneratorPoller
from monitor.alerts.record import FIRING, PENDING, Alert, Labels, label_set
from monitor.alerts.rules import SEVERITIES, load_rules
from monitor.alerts.settings import AlertSettings

log = logging.getLogger(__name__)


def snapshot_values(snapshot: Any, host: str) -> dict[Labels, dict[str, float | None]]:
    """Turn a sampler snapshot (`.gpus` of GpuSnapshot-like records, or the sequence itself) into values."""
    gpus: Iterable[Any] = getattr(snapshot, "gpus", snapshot) or ()
    values: dict[Labels, dict[str, float | None]] = {}
    for gpu in gpus:
        used, total = getattr(gpu, "memory_used_bytes", None), getattr(gpu, "memory_total_bytes", None)
        ratio = used / total if used is not None and total else None
        temperature = getattr(gpu, "temperature_c", None)
        values[label_set(host=host, gpu=str(gpu.index))] = {
            "gpu_up": 1.0 if gpu.up else 0.0,
            "gpu_memory_ratio": ratio,
            "gpu_temperature_c": None if temperature is None else float(temperature),
        }
    return values


def build_notifiers(settings: AlertSettings, session: requests.Session | None = None) -> list[Notifier]:
    """Build one notifier per Alertmanager and webhook URL, plus the log notifier when enabled."""
    notifiers: list[Notifier] = [
        build_notifier(
            "alertmanager",
            url,
            resend_s=settings.resend_s,
            session=session,
            generator_url=settings.external_url,
        )
        for url in settings.alertmanager_urls
    ]
    notifiers += [build_notifier("webhook", url, session=session) for url in settings.webhook_urls]
    if settings.log_notifications:
        notifiers.append(build_notifier("log", "log"))
    return notifiers


class AlertService:
    """Own the alerting parts and their threads; the monitor app creates one and calls start()/stop()."""

    def __init__(
        self,
        settings: AlertSettings,
        *,
        host: str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
        on_event: Callable[[ActionOutcome], None] | None = None,
        writer_health: Callable[[], Any] | None = None,
        run_command: Callable[..., Any] = subprocess.run,
        notifiers: list[Notifier] | None = None,
    ) -> None:
        """Load the rules (RuleFileError on a bad file: fail fast at start-up) and restore saved state.

        `registry`: where the alerting's metrics go; by default a registry of its own (`self.registry`), which
        the monitor's /metrics registry can include with `registry.register(service.registry)`.
        `writer_health`: the store writer's `health()`, read each tick for store_up and spool_records.
        `on_event`: called with each remediation outcome (`.to_point(host)` stores it, `.to_event()` is JSON).
        """
        self.settings = settings
        self.host = host
        self._clock = clock
        self.engine = AlertEngine(
            load_rules(settings.rules_path),
            clock=clock,
            state_path=settings.state_path,
            stale_after_s=settings.stale_after_s,
            resolved_retention_s=settings.resolved_resend_s,
        )
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = AlertMetrics(self.registry)
        self._writer_health = writer_health
        notifiers = build_notifiers(settings, session) if notifiers is None else notifiers
        self.workers = [NotifierWorker(n, self.engine.notifiable, self.metrics, clock=clock) for n in notifiers]
        self.restart = RestartGeneratorAction(
            settings.restart_command,
            run_command=run_command,
            backoff_initial_s=settings.restart_backoff_initial_s,
            backoff_max_s=settings.restart_backoff_max_s,
            reset_after_s=settings.restart_reset_after_s,
            max_restarts=settings.restart_max_per_window,
            window_s=settings.restart_window_s,
        )
        self.cancel = CancelJobAction(settings.generator_url, settings.admin_token, session=session)
        self.runner = ActionRunner(
            {self.cancel.name: self.cancel, self.restart.name: self.restart},
            self.metrics,
            is_firing=self.engine.is_firing,
            on_event=on_event,
            clock=clock,
        )
        # No generator URL: a monitor watching only GPUs; the generator rules then never get values.
        self.poller = (
            None
            if not settings.generator_url
            else GeneratorPoller(
                settings.generator_url,
                session=session,
                timeout_s=settings.scrape_timeout_s,
                error_statuses=settings.error_statuses,
                clock=clock,
            )
        )
        self.engine.add_listener(self._after_evaluation)
        self._fed: dict[str, float | None] = {}
        self._low_quality_streak = 0
        self._started_at = clock()
        self._last_snapshot_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _after_evaluation(self, changed: list[Alert], firing: list[Alert]) -> None:
        if changed:
            for worker in self.workers:
                worker.wake()
        self.runner.submit(firing)
        counts = {(state, severity): 0 for state in (PENDING, FIRING) for severity in SEVERITIES}
        for alert in self.engine.active():
            counts[(alert.state, alert.severity)] = counts.get((alert.state, alert.severity), 0) + 1
        for (state, severity), count in counts.items():
            self.metrics.alerts.labels(state, severity).set(count)

    def on_snapshot(self, snapshot: Any) -> None:
        """Evaluate the GPU rules on a sampler snapshot (the sampler's on_snapshot hook)."""
        self._last_snapshot_at = self._clock()
        self.engine.evaluate(snapshot_values(snapshot, self.host))

    def feed(self, values: Mapping[str, float | None]) -> None:
        """Set host values other parts own (e.g. store_up, spool_records); evaluated now and on every tick."""
        self._fed.update(values)
        self.engine.evaluate({label_set(host=self.host): dict(values)})

    def record_quality(self, result: Any) -> None:
        """Count low-quality clips in a row: a result with `low_quality` true extends it, false ends it."""
        low = getattr(result, "low_quality", result)
        if low is None:
            return
        self._low_quality_streak = self._low_quality_streak + 1 if low else 0
        self.engine.evaluate({label_set(host=self.host): {"low_quality_streak": float(self._low_quality_streak)}})

    def host_values(self) -> dict[str, float | None]:
        """Return this tick's host values: generator, sampler age, Watchdog, restarts, quality, fed ones."""
        now = self._clock()
        values = dict(self._fed)
        if self._writer_health is not None:
            health = self._writer_health()
            # None before the writer's first attempt: unknown holds the rule rather than reading as down.
            reachable = health.store_reachable
            values["store_up"] = None if reachable is None else (1.0 if reachable else 0.0)
            values["spool_records"] = float(health.spool_pending_points)
        if self.poller is not None:
            values.update(self.poller.poll())
        values["monitor_up"] = 1.0
        values["sampler_age_s"] = now - (self._last_snapshot_at or self._started_at)
        values["restarts_exhausted"] = 1.0 if self.restart.gave_up else 0.0
        values["low_quality_streak"] = float(self._low_quality_streak)
        return values

    def tick(self) -> list[Alert]:
        """Poll the generator and evaluate the host rules once; return the alerts that changed."""
        return self.engine.evaluate({label_set(host=self.host): self.host_values()})

    def start_workers(self) -> None:
        """Start the notifier workers and the action runner (not the tick thread: tests call tick())."""
        for worker in self.workers:
            worker.start()
        self.runner.start()

    def start(self) -> None:
        """Start the notifier workers, the action runner and the tick thread (every `interval_s`)."""
        self.start_workers()
        self._thread = threading.Thread(target=self._loop, name="alerts-tick", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop boundary: this tick's values are lost, the next tick tries again
                log.exception("alert tick failed")
            deadline += self.settings.interval_s
            deadline = max(deadline, time.monotonic())
            self._stop.wait(deadline - time.monotonic())

    def stop(self) -> None:
        """Stop every thread (each finishes its current step)."""
        self._stop.set()
        if self._thread:
            self._thread.join(5.0)
        self.runner.stop()
        for worker in self.workers:
            worker.stop()

    def status(self) -> dict[str, Any]:
        """Describe delivery and remediation health for the API."""
        return {
            "notifiers": [worker.status() for worker in self.workers],
            "actions": {
                "restart_generator": self.restart.status(),
                "recent": [outcome.to_event() for outcome in self.runner.recent],
            },
            "rules": len(self.engine.rules),
        }
