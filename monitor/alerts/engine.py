"""Evaluate rules on fed values: pending -> firing -> resolved per rule and label set, as Prometheus does.

As Prometheus' `for`: a pending alert ends as soon as its value stops crossing the firing threshold, so one
sample above it never fires an alert on its own. Differences, on purpose: a firing alert ends only once its
value crosses the rule's clear threshold (hysteresis, so a value hovering at the threshold does not flap), and
a missing value (None, e.g. NVML said "not supported") holds the alert where it is instead of resolving it; an
alert whose value has not been seen for `stale_after_s` resolves, as a vanished series does in Prometheus.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from monitor.alerts.record import FIRING, PENDING, RESOLVED, Alert, Labels, render
from monitor.alerts.rules import PIPELINE, ROUTING_LABELS, Rule, routing_labels
from monitor.alerts.state import StateFile

log = logging.getLogger(__name__)

Values = Mapping[Labels, Mapping[str, float | None]]
Listener = Callable[[list[Alert], list[Alert]], None]


class AlertEngine:
    """Hold one alert per rule and label set; thread-safe; state saved on every transition."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        clock: Callable[[], float] = time.time,
        state_path: str | Path | None = None,
        history_limit: int = 500,
        stale_after_s: float = 300.0,
        resolved_retention_s: float = 300.0,
        context: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """Index the rules by input name and restore any saved state (restored alerts count as just seen).

        `context()` returns the text annotations may quote besides values and labels (monitor.alerts.rules.CONTEXT),
        read once per evaluation.
        """
        self.rules = list(rules)
        self._by_expr: dict[str, list[Rule]] = {}
        for rule in self.rules:
            self._by_expr.setdefault(rule.expr, []).append(rule)
        self._rules_by_key = {rule.key: rule for rule in self.rules}
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._resolved_retention_s = resolved_retention_s
        self._lock = threading.RLock()
        self._active: dict[tuple[str, Labels], Alert] = {}
        self._history: deque[Alert] = deque(maxlen=history_limit)
        self._listeners: list[Listener] = []
        self._context = context or dict
        self._context_now: Mapping[str, str] = {}
        self._state = StateFile(state_path) if state_path else None
        self._save_failed = False
        if self._state:
            self._restore()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(changed, firing)` after each evaluation (copies; called outside the lock)."""
        self._listeners.append(listener)

    def evaluate(self, values: Values, now: float | None = None) -> list[Alert]:
        """Feed values per label set, advance every affected alert, return the alerts that changed state."""
        now = self._clock() if now is None else now
        changed: list[Alert] = []
        context = self._context()
        with self._lock:
            self._context_now = context
            for labels, named in values.items():
                for name, value in named.items():
                    for rule in self._by_expr.get(name, ()):
                        alert = self._step(rule, labels, value, now)
                        if alert is not None:
                            changed.append(alert)
            changed.extend(self._expire_stale(now))
            if changed:
                self._save()
            changed_copies = [copy.deepcopy(alert) for alert in changed]
            firing = [copy.deepcopy(a) for a in self._active.values() if a.state == FIRING]
        for alert in changed_copies:
            log.log(
                logging.WARNING if alert.state == FIRING else logging.INFO,
                "alert %s %s %s value=%s",
                alert.name,
                alert.state,
                _labels_text(alert.labels),
                alert.value,
            )
        for listener in self._listeners:
            listener(changed_copies, firing)
        return changed_copies

    def _step(self, rule: Rule, labels: Labels, value: float | None, now: float) -> Alert | None:
        key = (rule.key, labels)
        alert = self._active.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        value = float(value)
        if alert is None:
            if not rule.triggers(value):
                return None
            alert = self._new_alert(rule, labels, value, now)
            self._active[key] = alert
            if rule.for_s <= 0:
                alert.state = FIRING
                alert.fired_at = now
            return alert
        alert.value = value
        alert.last_seen_at = now
        self._annotate(alert, rule)
        if alert.state == PENDING and not rule.triggers(value):
            # Hysteresis belongs to firing -> resolved only: a pending alert needs the firing threshold held
            # for the whole `for` duration.
            del self._active[key]
            return None
        if alert.state == FIRING and rule.clears(value):
            del self._active[key]
            return self._resolve(alert, now, None)
        if alert.state == PENDING and now - alert.active_at >= rule.for_s:
            alert.state = FIRING
            alert.fired_at = now
            return alert
        return None

    def _new_alert(self, rule: Rule, labels: Labels, value: float, now: float) -> Alert:
        full = {
            **dict(labels),
            **rule.labels,
            "alertname": rule.alert,
            **routing_labels(rule.severity),
            "pipeline": PIPELINE,
        }
        alert = Alert(
            id=uuid.uuid4().hex[:16],
            rule_key=rule.key,
            labels=full,
            annotations={},
            state=PENDING,
            value=value,
            active_at=now,
            last_seen_at=now,
            action=rule.action,
        )
        self._annotate(alert, rule)
        return alert

    def _annotate(self, alert: Alert, rule: Rule) -> None:
        alert.annotations = {
            k: render(v, rule, alert.labels, alert.value, self._context_now) for k, v in rule.annotations.items()
        }

    def _resolve(self, alert: Alert, now: float, note: str | None) -> Alert:
        alert.state = RESOLVED
        alert.resolved_at = now
        alert.note = note
        self._history.appendleft(alert)
        return alert

    def _expire_stale(self, now: float) -> list[Alert]:
        expired = []
        for key, alert in list(self._active.items()):
            if now - alert.last_seen_at > self._stale_after_s:
                del self._active[key]
                if alert.state == FIRING:
                    note = f"no value for {self._stale_after_s:.0f} s"
                    expired.append(self._resolve(alert, now, note))
        return expired

    def active(self) -> list[Alert]:
        """Return copies of the pending and firing alerts, most severe and oldest first."""
        order = {"fatal": 0, "severe": 1, "warning": 2}
        with self._lock:
            alerts = [copy.deepcopy(alert) for alert in self._active.values()]
        return sorted(alerts, key=lambda a: (a.state != FIRING, order.get(a.severity, 9), a.active_at))

    def history(self, limit: int | None = None) -> list[Alert]:
        """Return copies of resolved alerts, newest first."""
        with self._lock:
            items = list(self._history)[:limit]
            return [copy.deepcopy(alert) for alert in items]

    def notifiable(self, now: float | None = None) -> list[Alert]:
        """Return what notifiers carry: firing alerts and those resolved within the retention window."""
        now = self._clock() if now is None else now
        with self._lock:
            alerts = [copy.deepcopy(a) for a in self._active.values() if a.state == FIRING]
            alerts += [
                copy.deepcopy(a)
                for a in self._history
                if a.resolved_at is not None and now - a.resolved_at <= self._resolved_retention_s
            ]
        return alerts

    def is_firing(self, alert_id: str) -> bool:
        """Return whether the alert with this id is firing now (actions check before they act)."""
        with self._lock:
            return any(a.id == alert_id and a.state == FIRING for a in self._active.values())

    def firing_with_action(self, action: str) -> bool:
        """Return whether any firing alert carries this action (e.g. an OOM streak asking for a restart)."""
        with self._lock:
            return any(a.state == FIRING and a.action == action for a in self._active.values())

    def get(self, alert_id: str) -> Alert | None:
        """Return a copy of the active or past alert with this id, or None."""
        with self._lock:
            for alert in [*self._active.values(), *self._history]:
                if alert.id == alert_id:
                    return copy.deepcopy(alert)
        return None

    def ack(
        self,
        alert_id: str,
        by: str,
        now: float | None = None,
        *,
        note: str | None = None,
        silence_id: str | None = None,
    ) -> Alert | None:
        """Add an acknowledgement by `by` (every one is kept, with its note); return the alert, or None if unknown."""
        now = self._clock() if now is None else now
        with self._lock:
            for alert in [*self._active.values(), *self._history]:
                if alert.id == alert_id:
                    alert.acked_by = by
                    alert.acked_at = now
                    alert.acks.append({"by": by, "note": note, "at": now, "silence_id": silence_id})
                    self._save()
                    return copy.deepcopy(alert)
        return None

    def _save(self) -> None:
        if not self._state:
            return
        try:
            self._state.save(list(self._active.values()), list(self._history))
        except OSError as exc:
            if not self._save_failed:
                log.error(  # noqa: TRY400 - the reason is in the line; a traceback per failure adds nothing
                    "cannot save alert state to %s (%s); alerts go on in memory", self._state.path, exc
                )
            self._save_failed = True
        else:
            if self._save_failed:
                log.info("alert state saved to %s again", self._state.path)
            self._save_failed = False

    def _restore(self) -> None:
        assert self._state is not None
        active, history = self._state.load()
        now = self._clock()
        for alert in active:
            if alert.rule_key not in self._rules_by_key:
                log.info("dropping restored alert %s: its rule %s is gone", alert.id, alert.rule_key)
                continue
            rule = self._rules_by_key[alert.rule_key]
            labels = tuple(
                sorted((k, v) for k, v in alert.labels.items() if k not in ROUTING_LABELS and k not in rule.labels)
            )
            alert.last_seen_at = now
            alert.labels.setdefault("pipeline", PIPELINE)  # state saved before alerts carried it
            if "tier" not in alert.labels:  # saved before alerts carried routing labels: severity was the tier
                alert.labels.update(routing_labels(rule.severity))
            self._active[(alert.rule_key, labels)] = alert
        self._history.extend(history)
        if active or history:
            log.info("restored %d active alert(s) and %d from history", len(self._active), len(self._history))


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ROUTING_LABELS)
