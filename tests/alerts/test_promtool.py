"""The Prometheus side: rules check and pass their unit tests; the Alertmanager config checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ALERTS = Path(__file__).resolve().parents[2] / "alerts"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is missing: run scripts/install-system-deps.sh")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=ALERTS)


@pytest.mark.parametrize(
    "argv",
    [
        ("promtool", "check", "rules", "prometheus/rules.yml"),
        ("promtool", "test", "rules", "prometheus/tests.yml"),
        ("amtool", "check-config", "alertmanager.yml"),
    ],
    ids=["promtool-check-rules", "promtool-test-rules", "amtool-check-config"],
)
def test_prometheus_side_checks(argv: tuple[str, ...]) -> None:
    result = run(*argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
