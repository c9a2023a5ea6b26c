"""The rule file: the shipped defaults load, and every mistake is refused with its line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.alerts.rules import Rule, RuleFileError, load_rules, parse_duration, parse_rules

GOOD = """\
rules:
  - alert: GpuMemoryHigh
    severity: warning
    expr: gpu_memory_ratio
    op: ">"
    threshold: 0.85
    clear: 0.80
    for: 30s
    annotations:
      summary: "memory high"
      description: "at {{value}}"
      runbook_url: "docs/runbooks.md#gpumemoryhigh"
"""


def test_default_rules_carry_the_seed_tiers(default_rules: list[Rule]) -> None:
    by_key = {rule.key: rule for rule in default_rules}
    warning, severe = by_key["GpuMemoryHigh/warning"], by_key["GpuMemoryHigh/severe"]
    assert (warning.op, warning.threshold, severe.threshold) == (">", 0.85, 0.95)
    assert warning.clear < warning.threshold
    assert severe.clear < severe.threshold
    assert severe.action == "cancel_job"
    temperature = by_key["GpuTemperatureHigh/severe"]
    assert (temperature.threshold, temperature.action) == (85, "cancel_job")
    oom = by_key["GeneratorOomStreak/fatal"]
    assert (oom.expr, oom.op, oom.threshold, oom.action) == ("consecutive_ooms", ">=", 3, "restart_generator")
    names = {rule.alert for rule in default_rules}
    assert {
        "GpuLost",
        "SamplerStalled",
        "StoreUnreachable",
        "SpoolGrowing",
        "GeneratorErrorRateHigh",
        "GeneratorSlowRequests",
        "GeneratorQueueBacklog",
        "LowQualityStreak",
        "GeneratorUnreachable",
        "Watchdog",
    } <= names
    assert by_key["GeneratorErrorRateHigh/warning"].threshold == 0.05
    assert by_key["GeneratorSlowRequests/warning"].threshold == 90
    assert by_key["GeneratorQueueBacklog/warning"].threshold == 5
    for rule in default_rules:
        assert rule.annotations["summary"]
        assert rule.annotations["description"]


def test_a_good_file_parses() -> None:
    (rule,) = parse_rules(GOOD)
    assert rule.for_s == 30
    assert rule.clear == 0.80
    assert rule.action == "none"
    assert rule.line == 2


@pytest.mark.parametrize(
    ("old", "new", "line", "reason"),
    [
        ('    op: ">"\n', '    op: "=>"\n', 5, "'op' must be one of"),
        ("    threshold: 0.85\n", "    threshold: high\n", 6, "'threshold' must be a finite number"),
        ("    clear: 0.80\n", "    clear: 0.90\n", 7, "'clear' (0.9) must not be above 'threshold'"),
        ("    for: 30s\n", "    for: 30 seconds\n", 8, "not a duration"),
        ("    expr: gpu_memory_ratio\n", "    expr: gpu_memory\n", 4, "'expr' must name an input value"),
        ("    severity: warning\n", "    severity: critical\n", 3, "'severity' must be one of warning"),
        ("  - alert: GpuMemoryHigh\n", "  - alert: gpu_memory_high\n", 2, "CamelCase"),
        ("    for: 30s\n", "    for: 30s\n    fro: 1m\n", 9, "unknown key 'fro'"),
        ("    for: 30s\n", "    for: 30s\n    for: 1m\n", 9, "duplicate key 'for'"),
        ("    for: 30s\n", "    for: 30s\n    action: reboot\n", 9, "'action' must be one of"),
        ("    for: 30s\n", "    for: 30s\n    labels: {severity: x}\n", 9, "reserved"),
        ('      summary: "memory high"\n', "", 9, "needs a non-empty 'summary'"),
        ('      runbook_url: "docs/runbooks.md#gpumemoryhigh"\n', "", 9, "needs 'runbook_url' or 'runbook'"),
        ("    threshold: 0.85\n", "", 2, "missing required key 'threshold'"),
        ('    op: ">"\n', "    op: [\n", 7, "not valid YAML"),
    ],
)
def test_a_bad_rule_is_refused_with_its_line_and_reason(old: str, new: str, line: int, reason: str) -> None:
    assert old in GOOD
    with pytest.raises(RuleFileError) as caught:
        parse_rules(GOOD.replace(old, new, 1), "rules.yml")
    assert caught.value.line == line, str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"rules.yml:{line}: ")


def test_a_duplicate_rule_names_both_lines() -> None:
    text = GOOD + GOOD.split("rules:\n", 1)[1]
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, "rules.yml")
    assert caught.value.line == 13
    assert "already defined on line 2" in caught.value.reason


def test_a_file_without_rules_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"rules.yml:1: 'rules' must be a non-empty list"):
        parse_rules("rules: []\n", "rules.yml")
    with pytest.raises(RuleFileError, match="unknown top-level key 'groups'"):
        parse_rules("groups: []\n", "rules.yml")
    with pytest.raises(RuleFileError, match="cannot read the rule file"):
        load_rules(tmp_path / "absent.yml")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), (0, 0), ("0.5s", 0.5)])
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
