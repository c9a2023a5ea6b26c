"""The alert record: one per rule and label set and activation, with one serialisation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.alerts.rules import CONTEXT, PLACEHOLDER, Rule

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"

Labels = tuple[tuple[str, str], ...]


def label_set(**labels: str) -> Labels:
    """Build the hashable label set the engine keys values by, e.g. label_set(host="h1", gpu="0")."""
    return tuple(sorted((key, str(value)) for key, value in labels.items()))


def fingerprint(labels: Mapping[str, str]) -> str:
    """Return Alertmanager's fingerprint of a label set: FNV-1a 64 over the sorted names and values, in hex.

    The same function as Prometheus' labelSetToFingerprint (each name and value followed by the byte 0xff), so
    a webhook receiver can match our alerts with Alertmanager's.
    """
    value = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8") + b"\xff":
                value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211


def iso(timestamp: float | None) -> str | None:
    """Format a Unix time as RFC 3339 UTC with milliseconds (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_value(value: float | None, unit: str) -> str:
    """Render a value for people: ratios as percent, seconds and degrees with their unit."""
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value * 100:.1f}".removesuffix(".0") + "%"
    if unit == "seconds":
        return f"{value:.1f} s"
    if unit == "celsius":
        return f"{value:.1f} °C"
    if unit == "count" or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def render(
    template: str,
    rule: Rule,
    labels: Mapping[str, str],
    value: float | None,
    context: Mapping[str, str] | None = None,
) -> str:
    """Fill {{value}}, {{threshold}}, {{clear}}, {{label}} and context placeholders (also Prometheus' {{ $value }}).

    A context name with no value now renders as "unknown" (the rule file is checked for unknown names at load).
    """
    names = {
        **{name: "unknown" for name in CONTEXT},
        **(context or {}),
        "value": format_value(value, rule.unit),
        "threshold": format_value(rule.threshold, rule.unit),
        "clear": format_value(rule.clear, rule.unit),
        **labels,
    }
    return PLACEHOLDER.sub(lambda match: names.get(match.group(1), match.group(0)), template)


@dataclass
class Alert:
    """One alert: a rule's condition on one label set, from pending to resolved. Times are Unix seconds."""

    id: str
    rule_key: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str
    value: float | None
    active_at: float
    last_seen_at: float
    action: str = "none"
    fired_at: float | None = None
    resolved_at: float | None = None
    acked_by: str | None = None  # the latest acknowledgement; `acks` keeps every one
    acked_at: float | None = None
    note: str | None = None
    acks: list[dict[str, Any]] = field(default_factory=list)  # {by, note, at, silence_id}, oldest first

    @property
    def name(self) -> str:
        """Return the alert name (the `alertname` label)."""
        return self.labels["alertname"]

    @property
    def severity(self) -> str:
        """Return the tier: warning, severe or fatal (the `tier` label; `severity` is the routing one)."""
        return self.labels.get("tier") or self.labels["severity"]

    def to_dict(self) -> dict[str, Any]:
        """Serialise for the state file (Unix times, exact)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        """Rebuild from the state file."""
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    def to_public(self) -> dict[str, Any]:
        """Serialise for the API and webhooks: RFC 3339 times, the state spelled out."""
        return {
            "id": self.id,
            "alertname": self.name,
            "severity": self.severity,
            "state": self.state,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "value": self.value,
            "action": self.action,
            "active_at": iso(self.active_at),
            "fired_at": iso(self.fired_at),
            "resolved_at": iso(self.resolved_at),
            "acked_by": self.acked_by,
            "acked_at": iso(self.acked_at),
            "acks": [{**ack, "at": iso(ack.get("at"))} for ack in self.acks],
            "note": self.note,
            "fingerprint": fingerprint(self.labels),
        }
