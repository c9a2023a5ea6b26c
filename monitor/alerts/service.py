"""Wire the alerting together: rules, engine, notifier workers, actions and the generator poller.

Feeds: the sampler's on_snapshot (GPU values, the GPUs NVML lists), `tick()` on the sampling cadence from its
own thread (generator values, sampler age, the Watchdog, what the writer, the sampler and the scorer lost or
refused, read through `observe()` and `writer_health`), `feed()` for values other parts own and
`record_quality()` for the low-quality streak. What the rules read from memory (the streak,
the generator's scrape window, the restart back-off) and what each notifier delivered are saved beside the
alert state, so a monitor restart neither resolves, re-fires nor re-sends an unchanged alert.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_client import CollectorRegistry

from monitor.alerts.actions import ActionOutcome, ActionRunner, CancelJobAction, RestartGeneratorAction
from monitor.alerts.engine import AlertEngine
from monitor.alerts.gpu_values import GpuValues
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.notify import Notifier, NotifierWorker, build_notifier
from monitor.alerts.poller import GeneratorPoller
from monitor.alerts.record import FIRING, PENDING, Alert, Labels, label_set
from monitor.alerts.rules import SEVERITIES, load_rules
from monitor.alerts.settings import AlertSettings
from monitor.alerts.silence import AlertmanagerSilencer, Silence, SilenceError
from monitor.alerts.state import JsonFile, sibling
from monitor.alerts.window import CounterWindow

log = logging.getLogger(__name__)

LOW_QUALITY_JOBS_SHOWN = 10  # the streak's newest jobs named in LowQualityStreak's description


def snapshot_values(snapshot: Any, host: str) -> dict[Labels, dict[str, float | None]]:
    """Turn one sampler snapshot (`.gpus`, or the sequence itself) into GPU values, with no earlier ticks."""
    return GpuValues()(snapshot, host)


def build_notifiers(settings: AlertSettings, session: requests.Session | None = None) -> list[Notifier]:
    """Build one notifier per Alertmanager and webhook URL, plus the log notifier when enabled."""
    notifiers: list[Notifier] = [
        build_notifier(
            "alertmanager",
            url,
            resend_s=settings.resend_s,
            firing_valid_s=settings.firing_valid_s,
            watchdog_resend_s=settings.watchdog_resend_s,
            watchdog_valid_s=settings.watchdog_valid_s,
            session=session,
            external_url=settings.external_url,
        )
        for url in settings.alertmanager_urls
    ]
    notifiers += [
        build_notifier("webhook", url, session=session, external_url=settings.external_url)
        for url in settings.webhook_urls
    ]
    if settings.log_notifications:
        notifiers.append(build_notifier("log", "log"))
    return notifiers


def delivery_key(notifier: Notifier) -> str:
    """Name a notifier in the delivery state file without its target (a webhook URL often holds a secret)."""
    digest = hashlib.sha256(f"{notifier.kind} {notifier.target}".encode()).hexdigest()[:16]
    return f"{notifier.kind}:{digest}"


@dataclass(frozen=True)
class AckResult:
    """What acknowledging did: the alert with every acknowledgement, and the silence or why there is none."""

    alert: Alert
    silence: Silence | None = None
    silence_error: str | None = None


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
        self._save_lock = threading.Lock()
        self._inputs_file = JsonFile(sibling(settings.state_path, "inputs")) if settings.state_path else None
        self._delivery_file = JsonFile(sibling(settings.state_path, "delivery")) if settings.state_path else None
        inputs = self._load(self._inputs_file)
        # Rule inputs held in memory, saved so that a monitor restart neither resolves nor re-fires on them.
        self._low_quality_streak = int(inputs.get("low_quality_streak", 0))
        self._low_quality_jobs: deque[tuple[str, float | None]] = deque(
            ((str(job), score) for job, score in inputs.get("low_quality_jobs", [])), maxlen=LOW_QUALITY_JOBS_SHOWN
        )
        self._clip_reason: str | None = inputs.get("clip_reason")
        self._store_error: str | None = None
        self._gpus_visible: int | None = None
        self._nvml_reason: str | None = None
        self._gpus_missing: float | None = None
        self._outputs_free_ratio: float | None = None  # the outputs disk's free share, from the last snapshot
        self.engine = AlertEngine(
            load_rules(settings.rules_path),
            clock=clock,
            state_path=settings.state_path,
            stale_after_s=settings.stale_after_s,
            resolved_retention_s=settings.resolved_resend_s,
            context=self.context,
        )
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = AlertMetrics(self.registry)
        self.metrics.gpus_expected.labels(host).set(settings.expected_gpus)
        self.metrics.low_quality_streak.labels(host).set(self._low_quality_streak)
        self._writer_health = writer_health
        notifiers = build_notifiers(settings, session) if notifiers is None else notifiers
        delivered = self._load(self._delivery_file)
        self.workers = [
            NotifierWorker(
                notifier,
                self.engine.notifiable,
                self.metrics,
                clock=clock,
                sent={
                    alert_id: (str(state), float(at))
                    for alert_id, (state, at) in delivered.get(delivery_key(notifier), {}).items()
                },
                on_sent_change=self._save_delivery,
            )
            for notifier in notifiers
        ]
        self.restart = RestartGeneratorAction(
            settings.restart_command,
            run_command=run_command,
            backoff_initial_s=settings.restart_backoff_initial_s,
            backoff_max_s=settings.restart_backoff_max_s,
            reset_after_s=settings.restart_reset_after_s,
            max_restarts=settings.restart_max_per_window,
            window_s=settings.restart_window_s,
        )
        self.restart.restore(inputs.get("restart", {}))
        self.restart.on_change = self.save_inputs
        self.cancel = CancelJobAction(settings.generator_url, settings.admin_token, session=session)
        self.runner = ActionRunner(
            {self.cancel.name: self.cancel, self.restart.name: self.restart},
            self.metrics,
            is_firing=self.engine.is_firing,
            on_event=on_event,
            clock=clock,
        )
        self.silencer = (
            AlertmanagerSilencer(settings.alertmanager_urls, session=session) if settings.alertmanager_urls else None
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
        if self.poller is not None:
            self.poller.restore(inputs.get("poller", {}))
        self.engine.add_listener(self._after_evaluation)
        self.gpu_values = GpuValues()
        self._fed: dict[str, float | None] = {}
        self._started_at = clock()
        self._last_snapshot_at: float | None = None
        self._inputs_saved_at = clock()
        # Counters of what the monitor itself lost or refused, as 5-minute increases.
        self._points_lost = CounterWindow(self._started_at)
        self._sampler_errors = CounterWindow(self._started_at)
        self._quality_rejected = CounterWindow(self._started_at)
        self._sampler_health: Callable[[], Mapping[str, Any]] | None = None
        self._quality_rejected_total: Callable[[], float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _load(file: JsonFile | None) -> dict[str, Any]:
        payload = file.load() if file is not None else None
        if payload is None:
            return {}
        if not isinstance(payload, dict):
            assert file is not None
            file.set_aside("not a JSON object")
            return {}
        return payload

    def _save(self, file: JsonFile | None, payload: dict[str, Any]) -> None:
        if file is None:
            return
        try:
            with self._save_lock:
                file.save(payload)
        except OSError as exc:
            log.error("cannot save %s (%s); it is kept in memory", file.path, exc)  # noqa: TRY400 - no traceback

    def save_inputs(self) -> None:
        """Save the rule inputs held in memory: streak, the generator's scrape window, the restart back-off."""
        self._inputs_saved_at = self._clock()
        self._save(
            self._inputs_file,
            {
                "low_quality_streak": self._low_quality_streak,
                "low_quality_jobs": list(self._low_quality_jobs),
                "clip_reason": self._clip_reason,
                "restart": self.restart.to_state(),
                "poller": self.poller.to_state() if self.poller is not None else {},
            },
        )

    def _save_delivery(self) -> None:
        self._save(
            self._delivery_file,
            {delivery_key(worker.notifier): worker.sent_state() for worker in self.workers},
        )

    def context(self) -> dict[str, str]:
        """Return what annotations may quote about the host now (monitor.alerts.rules.CONTEXT)."""
        jobs = ", ".join(
            f"{job} ({'no score' if score is None else f'{score:.2f}'})" for job, score in self._low_quality_jobs
        )
        if not self.settings.clip_configured:
            clip_note = (
                "CLIP weights are absent (no --clip-model / CLIP_MODEL_DIR): the scores have no CLIP part, "
                "so they judge motion and ratings only."
            )
        elif self._clip_reason:
            clip_note = f"CLIP did not score the last clip: {self._clip_reason}."
        else:
            clip_note = "CLIP scored these clips."
        rejections = self.poller.rejections if self.poller is not None else {}
        return {
            "store": self.settings.store_label or "the store",
            "store_error": self._store_error or "no error recorded",
            "low_quality_jobs": jobs or "no job recorded",
            "clip_note": clip_note,
            "gpus_expected": str(self.settings.expected_gpus),
            "gpus_visible": "unknown" if self._gpus_visible is None else str(self._gpus_visible),
            "nvml_reason": self._nvml_reason or "NVML answers",
            "rejections": ", ".join(f"{reason} {count:.0f}" for reason, count in sorted(rejections.items()))
            or "no reason counted",
        }

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

    def observe(
        self,
        *,
        sampler_health: Callable[[], Mapping[str, Any]] | None = None,
        quality_rejected_total: Callable[[], float] | None = None,
    ) -> None:
        """Read, every tick, the sampler's health (its `errors_total`) and the clips the scorer refused."""
        self._sampler_health = sampler_health
        self._quality_rejected_total = quality_rejected_total

    def on_snapshot(self, snapshot: Any) -> None:
        """Evaluate the GPU rules, and the GPUs NVML lists, on a sampler snapshot (the sampler's on_snapshot hook)."""
        self._last_snapshot_at = self._clock()
        values = self.gpu_values(snapshot, self.host)
        available = getattr(snapshot, "nvml_available", True)
        gpus = getattr(snapshot, "gpus", snapshot) or ()
        self._gpus_visible = len(gpus) if available else 0
        self._nvml_reason = None if available else (getattr(snapshot, "nvml_reason", None) or "NVML is unavailable")
        if self.settings.expected_gpus > 0:
            self._gpus_missing = float(max(self.settings.expected_gpus - self._gpus_visible, 0))
            values.setdefault(label_set(host=self.host), {})["gpus_missing"] = self._gpus_missing
        disk = getattr(snapshot, "host", None)
        free, total = getattr(disk, "outputs_disk_free_bytes", None), getattr(disk, "outputs_disk_total_bytes", None)
        self._outputs_free_ratio = free / total if free is not None and total else None
        self.engine.evaluate(values)

    def feed(self, values: Mapping[str, float | None]) -> None:
        """Set host values other parts own (e.g. store_up, spool_records); evaluated now and on every tick."""
        self._fed.update(values)
        self.engine.evaluate({label_set(host=self.host): dict(values)})

    def record_quality(self, result: Any) -> None:
        """Count low-quality clips in a row: a result with `low_quality` true extends it, false ends it.

        The streak's jobs and scores are kept for the alert's description; the streak is saved at once.
        """
        low = getattr(result, "low_quality", result)
        if low is None:
            return
        if low:
            self._low_quality_streak += 1
            self._low_quality_jobs.append((str(getattr(result, "job_id", "?")), getattr(result, "combined", None)))
        else:
            self._low_quality_streak = 0
            self._low_quality_jobs.clear()
        self._clip_reason = getattr(result, "clip_reason", None)
        self.metrics.low_quality_streak.labels(self.host).set(self._low_quality_streak)
        self.save_inputs()
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
            self._store_error = getattr(health, "last_error", None)
            lost = float(getattr(health, "points_dropped_total", 0) + getattr(health, "points_rejected_total", 0))
            values["points_lost_5m"] = self._points_lost.add(now, lost)
            fill = getattr(health, "spool_bytes", 0) / self.settings.spool_max_bytes
            values["spool_fill_ratio"] = fill
            self.metrics.store_spool_fill.labels(self.host).set(fill)
        if self._sampler_health is not None:
            values["sampler_errors_5m"] = self._sampler_errors.add(now, float(self._sampler_health()["errors_total"]))
        if self._quality_rejected_total is not None:
            values["quality_rejected_5m"] = self._quality_rejected.add(now, float(self._quality_rejected_total()))
        if self.poller is not None:
            values.update(self.poller.poll())
        values["monitor_up"] = 1.0
        values["sampler_age_s"] = now - (self._last_snapshot_at or self._started_at)
        # Healthy: /health answers and no OOM streak asks for a restart; then the page for the cap clears.
        healthy = values.get("generator_up") == 1.0 and not self.engine.firing_with_action("restart_generator")
        exhausted = self.restart.exhausted(now, healthy)
        values["restarts_exhausted"] = 1.0 if exhausted else 0.0
        self.metrics.restarts_exhausted.labels(self.host).set(1.0 if exhausted else 0.0)
        values["low_quality_streak"] = float(self._low_quality_streak)
        values["gpus_missing"] = self._gpus_missing
        values["outputs_disk_free_ratio"] = self._outputs_free_ratio
        return values

    def tick(self) -> list[Alert]:
        """Poll the generator and evaluate the host rules once; return the alerts that changed."""
        changed = self.engine.evaluate({label_set(host=self.host): self.host_values()})
        if self._clock() - self._inputs_saved_at >= self.settings.inputs_save_interval_s:
            self.save_inputs()
        return changed

    def acknowledge(
        self, alert_id: str, by: str, *, note: str | None = None, expires_s: float | None = None
    ) -> AckResult | None:
        """Acknowledge an alert: keep who and why, and silence it in Alertmanager while it is active.

        The silence matches the alert's labels except `pipeline`, so Prometheus' copy of the same alert is
        silenced too. Return None for an unknown id.
        """
        alert = self.engine.get(alert_id)
        if alert is None:
            return None
        silence: Silence | None = None
        error: str | None = None
        if self.silencer is not None and alert.state in (PENDING, FIRING):
            now = self._clock()
            summary = alert.annotations.get("summary", alert.name)
            try:
                silence = self.silencer.create(
                    {k: v for k, v in alert.labels.items() if k != "pipeline"},
                    created_by=by,
                    comment=note or f"acknowledged in the i2v monitor: {summary}",
                    starts_at=now,
                    ends_at=now + (expires_s or self.settings.silence_default_s),
                )
            except SilenceError as exc:
                error = str(exc)
                log.error("alert %s acknowledged by %s, but not silenced: %s", alert.name, by, error)  # noqa: TRY400
        acked = self.engine.ack(alert_id, by, note=note, silence_id=silence.silence_id if silence else None)
        if acked is None:
            return None
        log.warning(
            "alert %s (%s) acknowledged by %s%s%s",
            acked.name,
            acked.id,
            by,
            f": {note}" if note else "",
            f"; silenced until {silence.to_public()['ends_at']} ({silence.silence_id})" if silence else "",
        )
        return AckResult(acked, silence, error)

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
        """Stop every thread (each finishes its current step), then save the inputs and what was delivered."""
        self._stop.set()
        if self._thread:
            self._thread.join(5.0)
        self.runner.stop()
        for worker in self.workers:
            worker.stop()
        self.save_inputs()
        self._save_delivery()

    def status(self) -> dict[str, Any]:
        """Describe delivery and remediation health for the API."""
        return {
            "notifiers": [worker.status() for worker in self.workers],
            "actions": {
                "restart_generator": self.restart.status(),
                "recent": [outcome.to_event() for outcome in self.runner.recent],
            },
            "rules": len(self.engine.rules),
            "survives_outage_s": self.settings.outage_bound_s,
        }
