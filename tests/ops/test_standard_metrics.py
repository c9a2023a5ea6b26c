"""Standard metrics in process: route templates as labels, the GPU label on peak memory, --version."""

from __future__ import annotations

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from common.http_metrics import add_standard_metrics, instrument
from common.version import VERSION
from generator.config import GeneratorConfig
from generator.metrics import GeneratorMetrics
from monitor.config import MonitorConfig


def test_requests_are_labelled_by_route_template_never_by_raw_path() -> None:
    registry = CollectorRegistry()
    app = Flask(__name__)
    instrument(app, registry)
    app.add_url_rule("/api/jobs/<job_id>", "job", lambda job_id: ("", 204))
    client = app.test_client()

    for job_id in ("a1", "b2", "c3"):
        client.get(f"/api/jobs/{job_id}")
    client.get("/no/such/path")

    value = registry.get_sample_value
    assert value("i2v_http_requests_total", {"method": "GET", "route": "/api/jobs/<job_id>", "status": "204"}) == 3
    assert value("i2v_http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}) == 1
    assert value("i2v_http_request_duration_seconds_count", {"method": "GET", "route": "/api/jobs/<job_id>"}) == 3
    series = {s.labels.get("route") for m in registry.collect() for s in m.samples}
    assert "/api/jobs/a1" not in series


def test_build_info_and_process_metrics_are_registered() -> None:
    registry = CollectorRegistry()
    add_standard_metrics(registry, "monitor")

    assert registry.get_sample_value("i2v_monitor_build_info", {"version": VERSION}) == 1
    assert registry.get_sample_value("process_resident_memory_bytes") is not None


def test_peak_memory_carries_the_gpu_label() -> None:
    metrics = GeneratorMetrics()
    metrics.peak_memory.labels("1").set(7.9e9)

    assert metrics.registry.get_sample_value("i2v_job_peak_memory_bytes", {"gpu": "1"}) == 7.9e9


@pytest.mark.parametrize(
    ("parse", "program"), [(GeneratorConfig.from_sources, "generator"), (MonitorConfig.from_sources, "monitor")]
)
def test_both_command_lines_print_their_version(parse, program: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["--version"], {})

    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"{program} {VERSION} ")


def test_the_version_is_pyprojects() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == VERSION
