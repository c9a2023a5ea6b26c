"""The alerting's own Prometheus metrics, registered on the registry the monitor serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertMetrics:
    """Counters for deliveries and remediation, a gauge of alerts by state and severity, and the rule inputs
    that only the monitor holds, so that Prometheus' copies of its rules read the same values.
    """

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
        self.low_quality_streak = Gauge(
            "i2v_low_quality_streak",
            "Low-quality clips in a row (reset by a clip that passes).",
            ["host"],
            registry=registry,
        )
        self.restarts_exhausted = Gauge(
            "i2v_generator_restarts_exhausted",
            "1 while generator restarts are capped and the generator is not healthy.",
            ["host"],
            registry=registry,
        )
        self.store_spool_fill = Gauge(
            "i2v_store_spool_fill_ratio",
            "The store spool's share of its bound in use (0-1); at 1 its oldest points are dropped.",
            ["host"],
            registry=registry,
        )
        self.gpus_expected = Gauge(
            "i2v_gpus_expected",
            "GPUs this host is configured to have (MONITOR_EXPECTED_GPUS; 0: not said).",
            ["host"],
            registry=registry,
        )
