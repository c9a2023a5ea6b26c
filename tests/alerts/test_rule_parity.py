"""The two rule sets cannot drift: every alert has the same threshold, clear threshold and `for` in the monitor's
alerts/rules.yml and in Prometheus' alerts/prometheus/rules.yml, and aggregates hosts alike; every Alertmanager
inhibit rule can match a pair of shipped alerts. (tests/test_docs.py ties every runbook_url to its section.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.alerts.rules import VOCABULARY, Rule, load_rules, parse_duration, routing_labels

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
PROMETHEUS_ONLY = {"MonitorDown"}  # only something outside the monitor can say it is down
WATCHDOG = "Watchdog"  # in both, as `monitor_up >= 1` and `vector(1)`: nothing to compare

NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?"
# `X op fire` alone, or with hysteresis `X op fire or (X op clear and on (labels) ALERTS{...})`.
EXPR = re.compile(
    rf"^(?P<x>.+?) (?P<op>>=|<=|>|<) (?P<fire>{NUMBER})"
    rf"(?: or \((?P<x2>.+?) (?P<op2>>=|<=|>|<) (?P<clear>{NUMBER})"
    rf" and on \((?P<on>[^)]*)\) ALERTS\{{(?P<sel>[^}}]*)\}}\))?$"
)


def prometheus_alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((ALERTS / "prometheus" / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def recorded() -> dict[str, str]:
    groups = yaml.safe_load((ALERTS / "prometheus" / "rules.yml").read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"] if "record" in rule}


def monitor_rules() -> dict[tuple[str, str], Rule]:
    return {(rule.alert, rule.severity): rule for rule in load_rules(ALERTS / "rules.yml")}


def parse(expr: str) -> dict[str, Any]:
    """Read threshold, clear and the ALERTS join from one Prometheus alert expression."""
    flat = " ".join(expr.replace("(", "( ").replace(")", " )").split()).replace("( ", "(").replace(" )", ")")
    match = EXPR.match(flat)
    assert match, f"not in the `X op fire [or (X op clear and on (...) ALERTS{{...}})]` form: {flat}"
    parts = match.groupdict()
    selector = dict(re.findall(r'(\w+)="([^"]*)"', parts["sel"] or ""))
    return {**parts, "selector": selector}


def by_labels(x: str) -> set[str]:
    """Return the labels an expression keeps: a recorded series' level (`host:` or `gpu:`, which is per host and
    GPU), else its `by (...)`."""
    name = x.strip()
    if name in recorded():
        level = name.split(":")[0]
        return {"host", "gpu"} if level == "gpu" else {level}
    match = re.search(r"by \(([^)]*)\)", x)
    assert match, f"{x} aggregates by nothing: it keeps every label of its series (instance, job)"
    return {label.strip() for label in match.group(1).split(",")}


@pytest.mark.parametrize("name", sorted(recorded()))
def test_each_recorded_series_keeps_the_labels_its_level_names(name: str) -> None:
    labels = "host, gpu" if name.startswith("gpu:") else name.split(":")[0]
    expr = recorded()[name]
    aggregations = re.findall(r"\b(?:sum|max|min|count) by \(([^)]*)\)", expr)
    if not aggregations:  # built from other recorded series: of the same level
        used = re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", expr)
        assert used, f"{name} aggregates nothing"
        assert {u.split(":")[0] for u in used} == {name.split(":")[0]}, name
        return
    assert {a.replace(", le", "") for a in aggregations} == {labels}, name


def test_both_files_hold_the_same_alerts() -> None:
    ours = set(monitor_rules())
    theirs = {(rule["alert"], rule["labels"]["tier"]) for rule in prometheus_alerts()}
    assert {a for a, _ in theirs - ours} == PROMETHEUS_ONLY, "in Prometheus' rules only"
    assert ours - theirs == set(), "in the monitor's rules only"


@pytest.mark.parametrize(
    "rule",
    [r for r in prometheus_alerts() if r["alert"] not in PROMETHEUS_ONLY | {WATCHDOG}],
    ids=lambda r: f"{r['alert']}-{r['labels']['tier']}",
)
def test_each_alert_has_the_monitors_threshold_clear_and_for(rule: dict[str, Any]) -> None:
    ours = monitor_rules()[(rule["alert"], rule["labels"]["tier"])]
    parsed = parse(rule["expr"])
    assert (parsed["op"], float(parsed["fire"])) == (ours.op, ours.threshold)
    assert parse_duration(rule.get("for", 0)) == ours.for_s
    if ours.clear == ours.threshold:
        assert parsed["clear"] is None, "no hysteresis in the monitor's rule, so none here"
    else:
        assert parsed["clear"] is not None, f"the monitor's rule clears at {ours.clear:g}: hysteresis is missing"
        assert float(parsed["clear"]) == ours.clear
        assert (parsed["x2"], parsed["op2"]) == (parsed["x"], parsed["op"])
        # Only a firing alert is held by the clear threshold; a pending one ends below the firing threshold.
        assert parsed["selector"] == {
            "alertname": rule["alert"],
            "tier": rule["labels"]["tier"],
            "alertstate": "firing",
        }
        assert {label.strip() for label in parsed["on"].split(",")} == by_labels(parsed["x"])


@pytest.mark.parametrize("rule", prometheus_alerts(), ids=lambda r: f"{r['alert']}-{r['labels']['tier']}")
def test_each_alert_labels_hosts_as_the_monitor_does(rule: dict[str, Any]) -> None:
    assert rule["labels"]["pipeline"] == "prometheus"
    if rule["alert"] == WATCHDOG:
        return
    x = parse(rule["expr"])["x"]
    scope = {"host", "gpu"} if rule["alert"] in PROMETHEUS_ONLY else None
    if scope is None:
        expr = monitor_rules()[(rule["alert"], rule["labels"]["tier"])].expr
        scope = {"host", "gpu"} if VOCABULARY[expr][0] == "gpu" else {"host"}
    assert by_labels(x) <= scope, f"{rule['alert']} keeps labels the monitor's copy lacks (instance?)"
    assert "instance" not in rule["expr"]


def test_no_inhibit_rule_is_dead() -> None:
    """Each inhibit rule has a source and a target among the shipped alerts that share its `equal` labels."""
    config = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    alerts = []
    for rule in monitor_rules().values():
        scope = {"host", "gpu"} if VOCABULARY[rule.expr][0] == "gpu" else {"host"}
        alerts.append({**dict.fromkeys(scope, "x"), "alertname": rule.alert, **routing_labels(rule.severity)})
    assert config["inhibit_rules"]
    for inhibit in config["inhibit_rules"]:
        sources = [a for a in alerts if matches(a, inhibit["source_matchers"])]
        targets = [a for a in alerts if matches(a, inhibit["target_matchers"])]
        pairs = [
            (s, t)
            for s in sources
            for t in targets
            if s is not t
            and all((s.get(k) == t.get(k)) and (k not in ("host", "gpu") or k in s) for k in inhibit["equal"])
        ]
        assert pairs, f"inhibit rule {inhibit} can never match a shipped alert"


def matches(labels: dict[str, str], matchers: list[str]) -> bool:
    for matcher in matchers:
        name, op, value = re.match(r'^(\w+)(=~|!=|=)"(.*)"$', matcher).groups()  # type: ignore[union-attr]
        actual = labels.get(name, "")
        if (op == "=" and actual != value) or (op == "!=" and actual == value):
            return False
        if op == "=~" and not re.fullmatch(value, actual):
            return False
    return True


@pytest.mark.parametrize("rule", prometheus_alerts(), ids=lambda r: f"{r['alert']}-{r['labels']['tier']}")
def test_each_prometheus_alert_carries_the_documented_routing_labels(rule: dict[str, Any]) -> None:
    routing = {k: v for k, v in rule["labels"].items() if k in ("severity", "tier", "page")}
    assert routing == routing_labels(rule["labels"]["tier"])
