"""The alerting's own Prometheus metrics, registered on the registry the monitor serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertMetrics:
    """Counters for deliveries and remediation, and a gauge of alerts by state and severity."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics on `registry` (the service's own; tests pass a fresh one)."""
        self.notifications = Counter(
            "i2v_alert_notifications",
            "Alert deliveries by notifier and result (success, failure).",
            ["notifier", "result"],
            registry=registry,
        )
        self.actions = Counter(
            "i2v_remediation_actions",
            "Remediation actions by action and result (success, failure, gave_up).",
            ["action", "result"],
            registry=registry,
        )
        self.alerts = Gauge(
            "i2v_alerts",
            "Alerts the monitor holds now, by state (pending, firing) and severity.",
            ["state", "severity"],
            registry=registry,
        )
