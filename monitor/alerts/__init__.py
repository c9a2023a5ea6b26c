"""Tiered alerts: rules from alerts/rules.yml, a Prometheus-like engine, notifiers and actions."""

from monitor.alerts.engine import AlertEngine
from monitor.alerts.record import Alert, label_set
from monitor.alerts.rules import Rule, RuleFileError, load_rules
from monitor.alerts.service import AlertService, snapshot_values
from monitor.alerts.settings import AlertSettings

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertService",
    "AlertSettings",
    "Rule",
    "RuleFileError",
    "label_set",
    "load_rules",
    "snapshot_values",
]
