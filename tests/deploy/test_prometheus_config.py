"""The compose stack's Prometheus config: promtool accepts it (and the rules it loads), and it scrapes the jobs
the rules watch at the addresses the compose services listen on."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.compose import ROOT, load_compose

PROMETHEUS_DIR = ROOT / "alerts" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"


def test_promtool_check_config_passes_with_the_rules_it_loads() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)")
    result = subprocess.run(
        ["promtool", "check", "config", str(CONFIG)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output, output
    assert "rules found" in output, output


def _targets(section: dict) -> list[str]:
    return [target for static in section["static_configs"] for target in static["targets"]]


def test_prometheus_scrapes_the_jobs_the_rules_watch_at_the_compose_services() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    targets = {job["job_name"]: _targets(job) for job in config["scrape_configs"]}
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    watched = set(re.findall(r'up\{job="([^"]+)"\}', rules))
    assert watched == {"i2v-generator", "i2v-monitor"}
    assert watched <= set(targets), f"rules watch {watched}, config scrapes {set(targets)}"

    services = load_compose()["services"]

    def port(service: str) -> str:
        command = services[service]["command"]
        return str(command[command.index("--port") + 1])

    assert targets["i2v-generator"] == [f"generator:{port('generator')}"]
    assert targets["i2v-monitor"] == [f"monitor:{port('monitor')}"]
    alertmanagers = [t for am in config["alerting"]["alertmanagers"] for t in _targets(am)]
    assert alertmanagers == ["alertmanager:9093"]
    # The compose service mounts this folder and points Prometheus at this file inside it.
    prometheus = services["prometheus"]
    assert "./alerts/prometheus:/etc/prometheus/i2v:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/i2v/prometheus.yml" in prometheus["command"]
    # The external `host` label is expanded from the container's environment, which compose sets.
    assert config["global"]["external_labels"]["host"] == "${I2V_HOST_NAME}"
    assert "--enable-feature=expand-external-labels" in prometheus["command"]
    assert "I2V_HOST_NAME" in prometheus["environment"]


def test_alertmanager_service_loads_the_repository_config() -> None:
    alertmanager = load_compose()["services"]["alertmanager"]
    assert "./alerts/alertmanager.yml:/etc/alertmanager/i2v/alertmanager.yml:ro" in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/i2v/alertmanager.yml" in alertmanager["command"]
