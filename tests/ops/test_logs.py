"""Logs a shipper can parse and standard metrics: both services as real processes, JSON lines only."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.logs import LogConfigError, configure_logging, extra, log_settings, set_log_host
from common.version import VERSION
from tests.faults.procs import GeneratorProcess, MonitorProcess

FIELDS = {"time", "level", "logger", "message", "service", "host"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every line the service wrote (the harness's own "---- start" lines aside); fail on any other."""
    records = []
    for line in text.splitlines():
        if line.startswith("---- start"):
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return records


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger after a test reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_both_services_write_every_line_as_json_with_the_fields_shippers_index(tmp_path: Path) -> None:
    monitor = MonitorProcess(tmp_path / "monitor", env={"LOG_LEVEL": "DEBUG"})
    generator = GeneratorProcess(tmp_path / "generator")
    # A model folder that is not there: its load fails at once (no warm-up to wait for) and logs a traceback.
    generator.args += ["--model", str(tmp_path / "no-such-model")]
    generator.ready_path = "/health"
    try:
        with ThreadPoolExecutor(2) as pool:  # both import at once: the generator's torch import is most of the time
            for started in [pool.submit(monitor.start), pool.submit(generator.start)]:
                started.result()
        # A refused request and a scrape: Flask's and waitress' paths log too.
        assert requests.post(f"{generator.url}/api/jobs", data={}, timeout=10).status_code == 400
        scrapes = {
            "generator": requests.get(f"{generator.url}/metrics", timeout=10).text,
            "monitor": requests.get(f"{monitor.url}/metrics", timeout=10).text,
        }
    finally:
        assert generator.stop() == 0
        assert monitor.stop() == 0

    monitor_records = json_lines(monitor.log_text())
    generator_records = json_lines(generator.log_text())
    assert monitor_records
    assert generator_records
    for service, records in (("monitor", monitor_records), ("generator", generator_records)):
        for record in records:
            assert set(record) >= FIELDS, record
            assert record["service"] == service
            assert record["time"].endswith("Z")
    assert {r["host"] for r in monitor_records} >= {"fault-host"}  # the configured host name, once read
    assert any(r["level"] == "DEBUG" for r in monitor_records)  # LOG_LEVEL reaches the monitor
    assert any(r["logger"] == "waitress" for r in generator_records)
    # Standard metrics, from the same real processes: process and platform collectors, build info, routes.
    for service, text in scrapes.items():
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {"process_resident_memory_bytes", "process_cpu_seconds", "python_info"} <= set(families), service
        (build,) = families[f"i2v_{service}_build_info"].samples
        assert build.labels == {"version": VERSION}
        assert "i2v_http_requests" in families, service
    refused = 'i2v_http_requests_total{method="POST",route="/api/jobs",status="400"} 1.0'
    assert refused in scrapes["generator"]
    assert 'route="/monitor/api/status"' in scrapes["monitor"]  # the harness's readiness polls
    (failed_load,) = [r for r in generator_records if "failed to load" in r["message"]]
    assert failed_load["level"] == "ERROR"
    assert "Traceback" in failed_load["exc_info"]  # a multi-line traceback stays inside its one JSON line


def test_a_generator_event_is_one_record_carrying_the_event_its_job_and_gpu(root_logging: None) -> None:
    from common.events import Event
    from generator.events import EventSender

    stream = io.StringIO()
    configure_logging("generator", environ={}, stream=stream, host="h1")
    event = Event.from_dict(
        {
            "event_id": "5d0c6a53-6b1f-4a0e-8f43-1d2c3b4a5968",
            "job_id": "j1",
            "host": "h1",
            "gpu": "0",
            "kind": "stage",
            "stage": "decode_video",
            "started_at": "2026-01-01T00:00:00.000000Z",
            "duration_s": 0.5,
        }
    )

    EventSender(None, Path("unused"), spool_max_bytes=1).emit(event)  # no monitor: logged only

    (record,) = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (record["logger"], record["job_id"], record["gpu"]) == ("generator.event", "j1", "0")
    assert record["event"] == event.to_dict()


def test_log_level_and_text_format_are_honoured_by_the_monitor(tmp_path: Path) -> None:
    monitor = MonitorProcess(tmp_path, env={"LOG_LEVEL": "WARNING", "LOG_FORMAT": "text"})
    try:
        monitor.start()
    finally:
        monitor.stop()

    lines = [line for line in monitor.log_text().splitlines() if line and not line.startswith("---- start")]
    assert all(" INFO " not in line and " DEBUG " not in line for line in lines), lines
    assert not any(line.startswith("{") for line in lines)


@pytest.mark.parametrize(
    ("environ", "wrong"),
    [({"LOG_LEVEL": "loud"}, "LOG_LEVEL"), ({"LOG_FORMAT": "xml"}, "LOG_FORMAT")],
)
def test_a_bad_log_setting_is_refused_naming_what_is_allowed(environ: dict[str, str], wrong: str) -> None:
    with pytest.raises(LogConfigError, match=wrong):
        log_settings(environ)


def test_records_carry_service_host_extras_and_exceptions(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("generator", environ={"LOG_LEVEL": "warn"}, stream=stream, host="boot-name")
    set_log_host("gpu-host-1")
    log = logging.getLogger("generator.worker")

    log.info("not shown at WARNING")
    log.warning("job %s failed", "j1", extra=extra(job_id="j1", gpu="0", state=None))
    try:
        {}["missing"]
    except KeyError:
        log.exception("with a traceback")

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "time": first["time"],
        "level": "WARNING",
        "logger": "generator.worker",
        "message": "job j1 failed",
        "service": "generator",
        "host": "gpu-host-1",
        "job_id": "j1",
        "gpu": "0",
    }
    assert "KeyError: 'missing'" in second["exc_info"]
