"""Load and validate the alert rule file: every mistake is refused with its line and reason."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEVERITIES = ("warning", "severe", "fatal")
#: The labels each tier gives its alerts, so that common routes work: Alertmanager routes and pagers key on
#: severity="critical" (and kube-prometheus' warning/critical), while the tier stays in its own label and
#: page="true" marks what must wake someone (docs/alerting.md).
ROUTING: dict[str, dict[str, str]] = {
    "warning": {"severity": "warning", "tier": "warning"},
    "severe": {"severity": "critical", "tier": "severe"},
    "fatal": {"severity": "critical", "tier": "fatal", "page": "true"},
}
OPS = (">", ">=", "<", "<=")
ACTIONS = ("none", "cancel_job", "restart_generator")

# The values the engine is fed, by name: the whole vocabulary a rule's `expr` may name. The scope says which
# labels the value carries: "gpu" values come per (host, gpu), "host" values per host.
VOCABULARY: dict[str, tuple[str, str]] = {
    "gpu_memory_ratio": ("gpu", "GPU memory used / total, 0 to 1 (NVML)"),
    "gpu_temperature_c": ("gpu", "GPU core temperature in degrees Celsius (NVML)"),
    "gpu_up": ("gpu", "1 while NVML answers for the GPU, 0 once it fails or the GPU is lost"),
    "gpu_xid_reset_required": ("gpu", "Xid errors needing a GPU reset or reboot heard in the last 15 minutes"),
    "gpu_xid_severe": ("gpu", "Xid errors of the severe tier (92: high single-bit ECC rate) in the last 15 min"),
    "gpu_xid_other": ("gpu", "other Xid errors (mostly application faults) heard in the last 15 minutes"),
    "gpu_memory_rows_pending": ("gpu", "1 while a remapped row or retired page waits for a GPU reset"),
    "gpu_memory_rows_failed": ("gpu", "1 once a memory row remap failed"),
    "gpu_pcie_replays_per_min": ("gpu", "PCIe replays per minute between the last two health reads"),
    "gpu_power_throttle_ratio": ("gpu", "share of time clocks were held down by the power cap (0-1)"),
    "gpu_thermal_throttle_ratio": ("gpu", "share of time clocks were held down for heat (0-1)"),
    "gpu_foreign_utilization_ratio": ("gpu", "SM share of every process but the generator (0-1)"),
    "sampler_age_s": ("host", "seconds since the sampler's last completed tick"),
    "store_up": ("host", "1 while the store accepts writes, 0 while it is unreachable"),
    "spool_records": ("host", "points waiting in the store's disk spool"),
    "error_ratio_5m": ("host", "failed / all generator requests over the last 5 minutes, 0 to 1"),
    "request_p95_s": ("host", "95th percentile of generator request time over the last 5 minutes, seconds"),
    "queue_pending": ("host", "jobs waiting in the generator's queue"),
    "consecutive_ooms": ("host", "OOM failures in a row (the generator's gauge, reset by a success)"),
    "job_compiles_1h": ("host", "torch.compile compiles inside jobs over the last hour (jobs that waited)"),
    "packages_quarantined": (
        "host",
        "warm-up sizes the generator runs eager because their compiled package crashed a process (quarantined)",
    ),
    "generator_up": ("host", "1 while the generator's /health answers, 0 otherwise"),
    "low_quality_streak": ("host", "low-quality clips in a row (reset by a clip that passes)"),
    "monitor_up": ("host", "always 1 while the monitor evaluates: the Watchdog's input"),
    "restarts_exhausted": (
        "host",
        "1 while generator restarts are capped and the generator is not healthy (down or OOM streak), else 0",
    ),
    "rejection_ratio_5m": (
        "host",
        "rejected / all generator submissions over the last 5 minutes, 0 to 1 (0 below 10 submissions)",
    ),
    "gpus_missing": ("host", "GPUs the host is configured to have (MONITOR_EXPECTED_GPUS) that NVML does not list"),
    "points_lost_5m": (
        "host",
        "points the store writer lost over the last 5 minutes: dropped at the spool's bound or unreadable, or "
        "refused by the store",
    ),
    "spool_fill_ratio": ("host", "the monitor's store spool: the share of its bound in use, 0 to 1"),
    "event_spool_fill_ratio": ("host", "the generator's event spool: the share of its bound in use, 0 to 1"),
    "events_lost_5m": (
        "host",
        "events the generator lost over the last 5 minutes: dropped (i2v_events_dropped_total) or refused by the "
        "monitor as invalid (i2v_events_refused_total)",
    ),
    "sampler_errors_5m": ("host", "sampler tick stages that raised over the last 5 minutes"),
    "outputs_disk_free_ratio": ("host", "free / total space of the disk holding the outputs folder, 0 to 1"),
    "quality_rejected_5m": ("host", "clips the quality scorer refused over the last 5 minutes (its queue full)"),
}

# Text an annotation may quote besides {{value}}, {{threshold}}, {{clear}} and the labels: what the monitor knows
# about the host right now, so a notification carries its context. A name with no value renders as "unknown".
CONTEXT: dict[str, str] = {
    "store": "the store's URL without credentials",
    "store_error": "the store's last write error",
    "low_quality_jobs": "the low-quality streak's jobs with their combined scores, newest last",
    "clip_note": "whether CLIP weights are configured (without them scores lack the CLIP part)",
    "gpus_expected": "GPUs the host is configured to have (MONITOR_EXPECTED_GPUS)",
    "gpus_visible": "GPUs NVML lists now",
    "nvml_reason": "why NVML is not available, as the sampler says",
    "rejections": "rejected submissions by reason over the last 5 minutes",
}

# The engine labels every alert with the pipeline that raised it, so the monitor's alerts (and its Watchdog)
# stay apart from Prometheus' copies of them in Alertmanager.
PIPELINE = "monitor"
#: Labels the engine sets on every alert; rules may not set them.
ROUTING_LABELS = ("alertname", "severity", "tier", "page", "pipeline")
RESERVED_LABELS = (*ROUTING_LABELS, "host", "gpu")
_TEMPLATE_NAMES = ("value", "threshold", "clear", "alertname", "severity", "host", "gpu", "pipeline")
PLACEHOLDER = re.compile(r"\{\{\s*\$?(?:labels\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
UNITS = ("", "ratio", "seconds", "celsius", "count")
_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_RULE_KEYS = {
    "alert",
    "severity",
    "expr",
    "op",
    "threshold",
    "clear",
    "for",
    "unit",
    "labels",
    "annotations",
    "action",
}
_REQUIRED = ("alert", "severity", "expr", "op", "threshold", "annotations")


class RuleFileError(ValueError):
    """A rule file that cannot be used; the message starts with `path:line:`."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        """Keep where (path, 1-based line) and why, for the start-up line."""
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


@dataclass(frozen=True)
class Rule:
    """One alert rule: fire when `expr op threshold` holds for `for_s`; once firing, resolve past `clear`."""

    alert: str
    severity: str
    expr: str
    op: str
    threshold: float
    clear: float
    for_s: float = 0.0
    unit: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    action: str = "none"
    line: int = 0

    @property
    def key(self) -> str:
        """Identify the rule: alert name and severity (two tiers may share a name)."""
        return f"{self.alert}/{self.severity}"

    def triggers(self, value: float) -> bool:
        """Return whether the value crosses the firing threshold."""
        return _compare(self.op, value, self.threshold)

    def clears(self, value: float) -> bool:
        """Return whether the value is back past the clear threshold (so a firing alert ends)."""
        return not _compare(self.op, value, self.clear)


def routing_labels(tier: str) -> dict[str, str]:
    """Return the labels an alert of this tier carries: severity (warning or critical), tier, and page."""
    return dict(ROUTING[tier])


def _compare(op: str, value: float, bound: float) -> bool:
    if op == ">":
        return value > bound
    if op == ">=":
        return value >= bound
    if op == "<":
        return value < bound
    return value <= bound


def parse_duration(value: Any) -> float:
    """Parse `90s`, `5m`, `1h30m` or a number of seconds into seconds; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration must be like 30s, 5m or 1h")  # noqa: TRY004 - callers catch ValueError
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration like 30s, 5m or 1h")
        hours, minutes, secs = match.groups()
        seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} must be a finite, non-negative duration")
    return seconds


class _MarkedDict(dict[Any, Any]):
    """A YAML mapping that remembers its own line and each key's line."""

    line: int
    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings keep their lines and refuse duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _MarkedDict:
    loader.flatten_mapping(node)
    result = _MarkedDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise RuleFileError("", key_node.start_mark.line + 1, f"duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_rules(path: str | Path) -> list[Rule]:
    """Read and validate a rule file; raise RuleFileError with the line and reason on the first mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError(str(path), None, f"cannot read the rule file: {exc.strerror or exc}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """Validate rule-file text; raise RuleFileError naming `source`, the line and the reason."""
    try:
        document = yaml.load(text, Loader=_Loader)
    except RuleFileError as exc:
        raise RuleFileError(source, exc.line, exc.reason) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RuleFileError(source, mark.line + 1 if mark else None, f"not valid YAML: {exc.problem}") from None
    if not isinstance(document, _MarkedDict):
        raise RuleFileError(source, 1, "the file must be a mapping with a 'rules' list")
    unknown = set(document) - {"rules"}
    if unknown:
        key = sorted(unknown, key=str)[0]
        raise RuleFileError(source, document.key_lines[key], f"unknown top-level key {key!r} (expected 'rules')")
    entries = document.get("rules")
    if not isinstance(entries, list) or not entries:
        raise RuleFileError(source, document.key_lines.get("rules", 1), "'rules' must be a non-empty list")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for entry in entries:
        rule = _parse_rule(entry, source, document.key_lines["rules"])
        if rule.key in seen:
            raise RuleFileError(
                source,
                rule.line,
                f"rule {rule.alert!r} with severity {rule.severity!r} is already defined on line {seen[rule.key]}",
            )
        seen[rule.key] = rule.line
        rules.append(rule)
    return rules


def _parse_rule(entry: Any, source: str, list_line: int) -> Rule:
    if not isinstance(entry, _MarkedDict):
        raise RuleFileError(source, list_line, "each rule must be a mapping")
    line = entry.line
    name = entry.get("alert")

    def fail(key: str | None, reason: str) -> RuleFileError:
        where = entry.key_lines.get(key, line) if key else line
        prefix = f"rule {name!r}: " if isinstance(name, str) else ""
        return RuleFileError(source, where, prefix + reason)

    for key in entry:
        if key not in _RULE_KEYS:
            raise fail(key, f"unknown key {key!r} (expected one of {', '.join(sorted(_RULE_KEYS))})")
    for key in _REQUIRED:
        if key not in entry:
            raise fail(None, f"missing required key {key!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("alert", f"'alert' must be a CamelCase name like GpuMemoryHigh, got {name!r}")
    severity = entry["severity"]
    if severity not in SEVERITIES:
        raise fail("severity", f"'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    expr = entry["expr"]
    if expr not in VOCABULARY:
        raise fail("expr", f"'expr' must name an input value ({', '.join(VOCABULARY)}), got {expr!r}")
    op = entry["op"]
    if op not in OPS:
        raise fail("op", f"'op' must be one of {' '.join(OPS)}, got {op!r}")
    threshold = _number(entry["threshold"], lambda reason: fail("threshold", f"'threshold' {reason}"))
    clear = _number(entry.get("clear", threshold), lambda reason: fail("clear", f"'clear' {reason}"))
    if op.startswith(">") and clear > threshold:
        raise fail("clear", f"'clear' ({clear:g}) must not be above 'threshold' ({threshold:g}) for {op}")
    if op.startswith("<") and clear < threshold:
        raise fail("clear", f"'clear' ({clear:g}) must not be below 'threshold' ({threshold:g}) for {op}")
    try:
        for_s = parse_duration(entry.get("for", 0))
    except ValueError as exc:
        raise fail("for", f"'for': {exc}") from None
    unit = entry.get("unit", "")
    if unit not in UNITS:
        raise fail("unit", f"'unit' must be one of {', '.join(u for u in UNITS if u)}, got {unit!r}")
    labels = _string_map(entry.get("labels", {}), lambda reason: fail("labels", f"'labels' {reason}"))
    for label in labels:
        if label in RESERVED_LABELS or not _LABEL.match(label):
            raise fail("labels", f"label {label!r} is reserved or not a valid label name")
    annotations = _string_map(entry["annotations"], lambda reason: fail("annotations", f"'annotations' {reason}"))
    for key in ("summary", "description"):
        if not annotations.get(key):
            raise fail("annotations", f"'annotations' needs a non-empty {key!r}")
    known = {*_TEMPLATE_NAMES, *labels, *CONTEXT}
    for key, text in annotations.items():
        for placeholder in PLACEHOLDER.findall(text):
            if placeholder not in known:
                raise fail(
                    "annotations",
                    f"annotation {key!r} names {{{{{placeholder}}}}}, which is neither a label nor one of "
                    f"{', '.join(sorted({*_TEMPLATE_NAMES, *CONTEXT}))}",
                )
    if not (annotations.get("runbook_url") or annotations.get("runbook")):
        raise fail("annotations", "'annotations' needs 'runbook_url' or 'runbook' (what on-call does next)")
    action = entry.get("action", "none")
    if action not in ACTIONS:
        raise fail("action", f"'action' must be one of {', '.join(ACTIONS)}, got {action!r}")
    return Rule(
        alert=name,
        severity=severity,
        expr=expr,
        op=op,
        threshold=threshold,
        clear=clear,
        for_s=for_s,
        unit=unit,
        labels=labels,
        annotations=annotations,
        action=action,
        line=line,
    )


def _number(value: Any, fail: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(f"must be a finite number, got {value!r}")
    return float(value)


def _string_map(value: Any, fail: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail("must be a mapping of names to strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise fail(f"must map names to strings, got {key!r}: {item!r}")
    return dict(value)
