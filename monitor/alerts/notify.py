"""Notifiers (Alertmanager v2, Alertmanager-shaped webhook, log) and the worker that delivers, resends, retries.

A notifier only sends; its worker owns the policy: what is due (a state change, or a resend while firing
and for a while after resolving), retries with exponential backoff while the target fails, and counting.
Workers run in their own threads, so a slow or dead target never blocks evaluation or another notifier.

What survives the monitor: a firing alert goes to Alertmanager with `endsAt` `firing_valid_s` ahead (15
minutes) and is resent every `resend_s` (1 minute), so Alertmanager resolves nothing during a monitor outage
shorter than their difference (14 minutes); the restarted monitor resends at once. The Watchdog is the
exception: it is resent every `watchdog_resend_s` with a short validity, so it stops soon after the monitor
dies and the dead-man's switch notices. What each worker delivered is kept (`sent_state`) so that a restart
re-sends nothing unchanged to a webhook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import requests

from common.redact import redact_url
from monitor.alerts.metrics import AlertMetrics
from monitor.alerts.record import FIRING, Alert, fingerprint, iso

log = logging.getLogger(__name__)


class NotifyError(Exception):
    """A delivery that failed and will be retried; the message says why.

    `delivered` lists the alerts a notifier did deliver before it failed (it sends in several requests).
    """

    def __init__(self, message: str, delivered: Sequence[Alert] = ()) -> None:
        """Keep the reason and what went through anyway."""
        super().__init__(message)
        self.delivered = list(delivered)


# Alertmanager's "zero" time: the endsAt of a firing alert in its webhook notifications.
ZERO_TIME = "0001-01-01T00:00:00Z"
WEBHOOK_VERSION = "4"


def is_watchdog(alert: Alert) -> bool:
    """Tell the dead-man's switch (label purpose=deadmansswitch) from the alerts it watches over."""
    return alert.labels.get("purpose") == "deadmansswitch"


def alert_link(external_url: str, alert: Alert) -> str:
    """Return the dashboard's address of the alert (its generatorURL), or "" when no external URL is known."""
    return f"{external_url.rstrip('/')}/monitor/#alert-{alert.id}" if external_url else ""


class Notifier(Protocol):
    """Send a batch of alerts somewhere. `resend_after(alert)` None means state changes only."""

    kind: str
    target: str

    def resend_after(self, alert: Alert) -> float | None:
        """Return seconds after which an unchanged alert is sent again, or None (never)."""
        ...

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
        firing_valid_s: float = 900.0,
        watchdog_resend_s: float = 15.0,
        watchdog_valid_s: float = 60.0,
        session: requests.Session | None = None,
        timeout_s: float = 5.0,
        external_url: str = "",
    ) -> None:
        """Configure one Alertmanager base URL (e.g. http://alertmanager:9093) and the resend policy."""
        if not 0 < resend_s < firing_valid_s or not 0 < watchdog_resend_s < watchdog_valid_s:
            raise ValueError("alerting: each resend interval must be positive and shorter than its validity")
        self.target = target.rstrip("/")
        self.resend_s = resend_s
        self.firing_valid_s = firing_valid_s
        self.watchdog_resend_s = watchdog_resend_s
        self.watchdog_valid_s = watchdog_valid_s
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._external_url = external_url

    def resend_after(self, alert: Alert) -> float | None:
        """Resend every alert it carries: the Watchdog on its own, steadier cadence."""
        return self.watchdog_resend_s if is_watchdog(alert) else self.resend_s

    def payload(self, alerts: Sequence[Alert], now: float) -> list[dict[str, Any]]:
        """Build the v2 body: startsAt is when the condition began; a firing alert is valid `firing_valid_s`."""
        body = []
        for alert in alerts:
            valid_s = self.watchdog_valid_s if is_watchdog(alert) else self.firing_valid_s
            ends = alert.resolved_at if alert.state != FIRING else now + valid_s
            item: dict[str, Any] = {
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": iso(alert.active_at),
                "endsAt": iso(ends),
            }
            link = alert_link(self._external_url, alert)
            if link:
                item["generatorURL"] = link
            body.append(item)
        return body

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """POST the batch to this Alertmanager."""
        _post_json(self._session, self.target + "/api/v2/alerts", self.payload(alerts, now), self._timeout_s)


class WebhookNotifier:
    """POST Alertmanager's webhook payload (version 4), one request per group, so its receivers work unchanged.

    Groups are Alertmanager's with the shipped route's `group_by` (alertname, host, gpu); a firing alert's
    endsAt is Alertmanager's zero time, a resolved one's when it resolved; each change is sent once.
    """

    kind = "webhook"

    def __init__(
        self,
        target: str,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 5.0,
        external_url: str = "",
        receiver: str = "i2v-monitor",
        group_by: Sequence[str] = ("alertname", "host", "gpu"),
    ) -> None:
        """Configure one webhook URL; `external_url` is the monitor's address (externalURL, generatorURL)."""
        self.target = target
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._external_url = external_url.rstrip("/")
        self._receiver = receiver
        self._group_by = tuple(group_by)

    def resend_after(self, alert: Alert) -> float | None:
        """Never: a webhook hears each change once."""
        return None

    def payloads(self, alerts: Sequence[Alert]) -> list[tuple[list[Alert], dict[str, Any]]]:
        """Build one version-4 document per group, with the alerts it carries."""
        groups: dict[tuple[tuple[str, str], ...], list[Alert]] = {}
        for alert in alerts:
            key = tuple((name, alert.labels[name]) for name in self._group_by if name in alert.labels)
            groups.setdefault(key, []).append(alert)
        documents = []
        for key, members in groups.items():
            items = [
                {
                    "status": FIRING if alert.state == FIRING else "resolved",
                    "labels": dict(alert.labels),
                    "annotations": dict(alert.annotations),
                    "startsAt": iso(alert.active_at),
                    "endsAt": ZERO_TIME if alert.state == FIRING else iso(alert.resolved_at),
                    "generatorURL": alert_link(self._external_url, alert),
                    "fingerprint": fingerprint(alert.labels),
                }
                for alert in members
            ]
            group_labels = dict(key)
            documents.append(
                (
                    members,
                    {
                        "receiver": self._receiver,
                        "status": FIRING if any(a.state == FIRING for a in members) else "resolved",
                        "alerts": items,
                        "groupLabels": group_labels,
                        "commonLabels": _common([a.labels for a in members]),
                        "commonAnnotations": _common([a.annotations for a in members]),
                        "externalURL": self._external_url,
                        "version": WEBHOOK_VERSION,
                        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
                        "truncatedAlerts": 0,
                    },
                )
            )
        return documents

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """POST each group's document; on a failure, say which alerts went through before it."""
        delivered: list[Alert] = []
        for members, document in self.payloads(alerts):
            try:
                _post_json(self._session, self.target, document, self._timeout_s)
            except NotifyError as exc:
                raise NotifyError(str(exc), delivered) from None
            delivered += members


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Return the pairs every mapping shares (Alertmanager's commonLabels and commonAnnotations)."""
    if not maps:
        return {}
    first, *rest = maps
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


class LogNotifier:
    """Write each state change to the log: firing as a warning, resolved as info."""

    kind = "log"
    target = "log"

    def resend_after(self, alert: Alert) -> float | None:
        """Never: each change is logged once."""
        return None

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
        sent: Mapping[str, tuple[str, float]] | None = None,
        on_sent_change: Callable[[], None] | None = None,
    ) -> None:
        """`source(now)` returns the notifiable alerts (firing and recently resolved).

        `sent` is what an earlier run delivered (`sent_state()`, alert id -> (state, time)): an alert sent in its
        current state is not sent again until its resend is due. `on_sent_change()` is called after a delivery
        that sent an alert in a new state, so the caller can keep `sent_state()`.
        """
        self.notifier = notifier
        self._source = source
        self._metrics = metrics
        self._clock = clock
        self._tick_s = tick_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._sent: dict[str, tuple[str, float]] = dict(sent or {})
        self._on_sent_change = on_sent_change
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

    def sent_state(self) -> dict[str, tuple[str, float]]:
        """Return what was delivered: alert id -> (state, when), for the next run's `sent`."""
        with self._lock:
            return dict(self._sent)

    def due(self, alerts: Sequence[Alert], now: float) -> list[Alert]:
        """Pick alerts never sent in their current state, or due for a resend."""
        due = []
        for alert in alerts:
            previous = self._sent.get(alert.id)
            resend_s = self.notifier.resend_after(alert)
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
            delivered, sent_changed = self._deliver_locked()
        if sent_changed and self._on_sent_change is not None:
            self._on_sent_change()  # outside the lock: it reads every worker's sent_state()
        return delivered

    def _deliver_locked(self) -> tuple[bool, bool]:
        now = self._clock()
        if now < self.retry_at:
            return False, False
        alerts = self._source(now)
        known = {alert.id for alert in alerts}
        self._sent = {key: value for key, value in self._sent.items() if key in known}
        due = self.due(alerts, now)
        if not due:
            return False, False
        try:
            self.notifier.send(due, now)
        except NotifyError as exc:
            sent_changed = self._record(exc.delivered, now)
            self.failures += 1
            self.consecutive_failures += 1
            delay = min(self._backoff_initial_s * 2 ** (self.consecutive_failures - 1), self._backoff_max_s)
            self.retry_at = now + delay
            self._metrics.notifications.labels(self.notifier.kind, "failure").inc()
            if self.consecutive_failures == 1 or self.last_error != str(exc):
                log.warning("alert delivery failed (%s); retrying in %.0f s", exc, delay)
            self.last_error = str(exc)
            return False, sent_changed
        sent_changed = self._record(due, now)
        if self.consecutive_failures:
            log.info("alert delivery to %s works again", self.notifier.target)
        self.delivered += len(due)
        self.consecutive_failures = 0
        self.retry_at = 0.0
        self.last_success_at = now
        self._metrics.notifications.labels(self.notifier.kind, "success").inc()
        return True, sent_changed

    def _record(self, sent: Sequence[Alert], now: float) -> bool:
        changed = False
        for alert in sent:
            previous = self._sent.get(alert.id)
            changed = changed or previous is None or previous[0] != alert.state
            self._sent[alert.id] = (alert.state, now)
        return changed

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
