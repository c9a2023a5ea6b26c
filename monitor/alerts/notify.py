"""Notifiers (Alertmanager v2, JSON webhook, log) and the worker that delivers, resends and retries.

A notifier only sends; its worker owns the policy: what is due (a state change, or a resend while firing
and for a while after resolving), retries with exponential backoff while the target fails, and counting.
Workers run in their own threads, so a slow or dead target never blocks evaluation or another notifier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import requests

from common.redact import redact_url
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.record import FIRING, Alert, iso

log = logging.getLogger(__name__)


class NotifyError(Exception):
    """A delivery that failed and will be retried; the message says why."""


class Notifier(Protocol):
    """Send a batch of alerts somewhere. `resend_s` None means state changes only."""

    kind: str
    target: str
    resend_s: float | None

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """Deliver the alerts (firing and resolved); raise NotifyError on failure."""
        ...


def _post_json(session: requests.Session, url: str, payload: Any, timeout_s: float) -> None:
    try:
        response = session.post(url, json=payload, timeout=timeout_s)
    except requests.RequestException as exc:
        # Only the error's class: requests puts the URL (a webhook's secret path) into its messages.
        raise NotifyError(f"{redact_url(url, keep_path=False)}: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise NotifyError(f"{redact_url(url, keep_path=False)}: HTTP {response.status_code} {response.text[:200]}")


class AlertmanagerNotifier:
    """POST /api/v2/alerts to one Alertmanager; resent while firing and for 5 minutes after the resolve."""

    kind = "alertmanager"

    def __init__(
        self,
        target: str,
        *,
        resend_s: float = 60.0,
        session: requests.Session | None = None,
        timeout_s: float = 5.0,
        generator_url: str = "",
    ) -> None:
        """Configure one Alertmanager base URL (e.g. http://alertmanager:9093)."""
        self.target = target.rstrip("/")
        self.resend_s: float | None = resend_s
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._generator_url = generator_url

    def payload(self, alerts: Sequence[Alert], now: float) -> list[dict[str, Any]]:
        """Build the v2 body; a firing alert's endsAt is 4 resends ahead, as Prometheus' ValidUntil."""
        assert self.resend_s is not None
        body = []
        for alert in alerts:
            ends = alert.resolved_at if alert.state != FIRING else now + 4 * self.resend_s
            item: dict[str, Any] = {
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": iso(alert.fired_at or alert.active_at),
                "endsAt": iso(ends),
            }
            if self._generator_url:
                item["generatorURL"] = self._generator_url
            body.append(item)
        return body

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """POST the batch to this Alertmanager."""
        _post_json(self._session, self.target + "/api/v2/alerts", self.payload(alerts, now), self._timeout_s)


class WebhookNotifier:
    """POST a JSON document shaped like Alertmanager's webhook (each alert carries its own status)."""

    kind = "webhook"
    resend_s: float | None = None

    def __init__(self, target: str, *, session: requests.Session | None = None, timeout_s: float = 5.0) -> None:
        """Configure one webhook URL."""
        self.target = target
        self._session = session or requests.Session()
        self._timeout_s = timeout_s

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """POST {"version", "status", "alerts": [...]} to the webhook."""
        status = FIRING if any(a.state == FIRING for a in alerts) else "resolved"
        items = [{**alert.to_public(), "status": alert.state} for alert in alerts]
        payload = {
            "version": "1",
            "source": "i2v-monitor",
            "status": status,
            "sent_at": iso(now),
            "alerts": items,
        }
        _post_json(self._session, self.target, payload, self._timeout_s)


class LogNotifier:
    """Write each state change to the log: firing as a warning, resolved as info."""

    kind = "log"
    target = "log"
    resend_s: float | None = None

    def __init__(self, target: str = "log", *, logger: logging.Logger | None = None) -> None:
        """Use `logger`, or this module's."""
        self._log = logger or log

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """Log one line per alert."""
        for alert in alerts:
            self._log.log(
                logging.WARNING if alert.state == FIRING else logging.INFO,
                "ALERT %s [%s] %s: %s",
                alert.state.upper(),
                alert.severity,
                alert.name,
                alert.annotations.get("summary", ""),
            )


NOTIFIERS: dict[str, Callable[..., Notifier]] = {
    "alertmanager": AlertmanagerNotifier,
    "webhook": WebhookNotifier,
    "log": LogNotifier,
}


def build_notifier(kind: str, target: str, **options: Any) -> Notifier:
    """Build a notifier from the registry by kind; raise ValueError for an unknown kind."""
    try:
        factory = NOTIFIERS[kind]
    except KeyError:
        raise ValueError(f"unknown notifier {kind!r} (known: {', '.join(NOTIFIERS)})") from None
    return factory(target, **options)


class NotifierWorker:
    """Deliver what is due to one notifier from a background thread, retrying with backoff on failure."""

    def __init__(
        self,
        notifier: Notifier,
        source: Callable[[float], list[Alert]],
        metrics: AlertMetrics,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        """`source(now)` returns the notifiable alerts (firing and recently resolved)."""
        self.notifier = notifier
        self._source = source
        self._metrics = metrics
        self._clock = clock
        self._tick_s = tick_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._sent: dict[str, tuple[str, float]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self.retry_at = 0.0

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.notifier.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after its current delivery."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """Ask for a delivery now (an alert changed state)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._tick_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.deliver_once()
            except Exception:  # the loop boundary: this round is retried on the next tick
                log.exception("alert delivery to %s crashed; retrying next tick", self.notifier.target)

    def due(self, alerts: Sequence[Alert], now: float) -> list[Alert]:
        """Pick alerts never sent in their current state, or due for a resend."""
        resend_s = self.notifier.resend_s
        due = []
        for alert in alerts:
            previous = self._sent.get(alert.id)
            if (
                previous is None
                or previous[0] != alert.state
                or (resend_s is not None and now - previous[1] >= resend_s)
            ):
                due.append(alert)
        return due

    def deliver_once(self) -> bool:
        """Send whatever is due unless backing off; return whether a delivery succeeded."""
        with self._lock:
            now = self._clock()
            if now < self.retry_at:
                return False
            alerts = self._source(now)
            known = {alert.id for alert in alerts}
            self._sent = {key: value for key, value in self._sent.items() if key in known}
            due = self.due(alerts, now)
            if not due:
                return False
            try:
                self.notifier.send(due, now)
            except NotifyError as exc:
                self.failures += 1
                self.consecutive_failures += 1
                delay = min(self._backoff_initial_s * 2 ** (self.consecutive_failures - 1), self._backoff_max_s)
                self.retry_at = now + delay
                self._metrics.notifications.labels(self.notifier.kind, "failure").inc()
                if self.consecutive_failures == 1 or self.last_error != str(exc):
                    log.warning("alert delivery failed (%s); retrying in %.0f s", exc, delay)
                self.last_error = str(exc)
                return False
            for alert in due:
                self._sent[alert.id] = (alert.state, now)
            if self.consecutive_failures:
                log.info("alert delivery to %s works again", self.notifier.target)
            self.delivered += len(due)
            self.consecutive_failures = 0
            self.retry_at = 0.0
            self.last_success_at = now
            self._metrics.notifications.labels(self.notifier.kind, "success").inc()
            return True

    def status(self) -> dict[str, Any]:
        """Describe delivery health for the API: counts, the last error and when the next retry comes."""
        return {
            "notifier": self.notifier.kind,
            # A webhook's path or query is often its secret: shown, never whole.
            "target": redact_url(self.notifier.target, keep_path=False)
            if "://" in self.notifier.target
            else self.notifier.target,
            "delivered": self.delivered,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_success_at": iso(self.last_success_at),
            "retry_at": iso(self.retry_at) if self.retry_at else None,
        }
