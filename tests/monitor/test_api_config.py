"""The monitor's configuration and `python -m monitor`'s start-up: defaults, env, flags, one-line failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from common.events import Event, utc_now_iso
from monitor.config import ConfigError, MonitorConfig
from monitor.storage.schema import HOST_SAMPLE, JOB_EVENT
from monitor.storage.sqlite import SqliteStore
from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_no_configuration() -> None:
    config = MonitorConfig.from_sources([], {}).validate()
    assert (config.host, config.port, config.sample_interval_s) == ("127.0.0.1", 7861, 2.0)
    assert config.store_url == "sqlite:///var/monitor/monitor.db"
    assert config.spool_dir == Path("var/monitor/spool")
    assert config.generator_url == "http://127.0.0.1:7860"


def test_flags_override_the_environment_which_overrides_defaults() -> None:
    env = {"MONITOR_PORT": "9000", "MONITOR_SAMPLE_INTERVAL": "0.5", "MONITOR_DATA_DIR": "/tmp/m", "INGEST_TOKEN": "t"}
    config = MonitorConfig.from_sources(["--port", "9100", "--host-name", "gpu-7"], env).validate()
    assert config.port == 9100
    assert config.sample_interval_s == 0.5
    assert config.host_name == "gpu-7"
    assert config.ingest_token == "t"
    assert config.store_url == "sqlite:////tmp/m/monitor.db"
    assert config.spool_dir == Path("/tmp/m/spool")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"INFLUX_URL": "http://influx:8086/i2v"}, "influxdb://influx:8086/i2v"),
        ({"INFLUX_URL": "https://u:p@cloud:443/i2v"}, "influxdbs://u:p@cloud:443/i2v"),
        ({"INFLUX_URL": "http://x:8086/a", "MONITOR_STORE": "sqlite:///b.db"}, "sqlite:///b.db"),
    ],
)
def test_influx_url_is_read_as_an_influxdb_store(env: dict, expected: str) -> None:
    assert MonitorConfig.from_sources([], env).validate().store_url == expected


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--port", "0"], {}, "--port must be 1-65535"),
        (["--port", "http"], {}, "--port must be a number"),
        ([], {"MONITOR_SAMPLE_INTERVAL": "fast"}, "MONITOR_SAMPLE_INTERVAL must be a number"),
        (["--store", "mysql://x/y"], {}, "--store must be"),
        (["--store", "influxdb://host:8086/"], {}, "influxdb://"),
        (["--sample-interval", "0"], {}, "--sample-interval"),
        (["--generator-url", "localhost:7860"], {}, "--generator-url must start with http"),
        (["--host", "0.0.0.0"], {}, "INGEST_TOKEN"),
    ],
)
def test_bad_settings_fail_with_one_line_that_says_what_to_change(argv: list, env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        MonitorConfig.from_sources(argv, env).validate()
    assert "\n" not in str(caught.value)


def startup_failure(stderr: str) -> str:
    """Return the message of the one log record a failed start writes (JSON, as every log line)."""
    record = json.loads(stderr)
    assert record["level"] == "CRITICAL"
    return record["message"]


def test_python_m_monitor_fails_fast_on_a_bad_store_url() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--store", "postgres://db/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert startup_failure(result.stderr).startswith("monitor: --store must be")


@pytest.mark.parametrize(
    ("argv", "env", "start"),
    [
        (["--alert-rules", "{tmp}/rules.yml"], {}, "monitor: {tmp}/rules.yml:2: rule 'X'"),
        (["--clip-model", "{tmp}/no-clip"], {}, "monitor: CLIP model folder {tmp}/no-clip does not exist"),
        (
            [],
            {"MONITOR_ALERT_WEBHOOK_URLS": "hooks.example/x"},
            "monitor: MONITOR_ALERT_WEBHOOK_URLS takes http(s) URLs",
        ),
    ],
)
def test_python_m_monitor_fails_fast_on_bad_alerting_or_quality_settings(
    tmp_path: Path, argv: list[str], env: dict[str, str], start: str
) -> None:
    (tmp_path / "rules.yml").write_text("rules:\n  - alert: X\n    severity: loud\n")
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--data-dir", str(tmp_path), *(a.format(tmp=tmp_path) for a in argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert startup_failure(result.stderr).startswith(start.format(tmp=tmp_path)), result.stderr


def test_python_m_monitor_serves_ingests_and_flushes_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--port", str(port), "--data-dir", str(tmp_path), "--outputs", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GENERATOR_URL": f"http://127.0.0.1:{free_port()}"},
    )
    try:
        url = f"http://127.0.0.1:{port}/monitor/api"

        def answers() -> bool:
            try:
                return requests.get(f"{url}/status", timeout=1).status_code == 200
            except requests.ConnectionError:
                return process.poll() is not None  # exited: the assertion below says why

        wait_for(answers, 60, "python -m monitor to serve /status")
        assert process.poll() is None
        event = Event(job_id="j", host="h", gpu="0", kind="job", status="queued", started_at=utc_now_iso())
        answer = requests.post(f"{url}/events", json=[event.to_dict()], timeout=10)
        assert answer.json() == {"accepted": 1, "duplicates": 0}
        wait_for(lambda: requests.get(f"{url}/status", timeout=5).json()["sampler"]["ticks_total"] >= 1, 30, "a tick")
        # Alerting and quality are wired in: the Watchdog fires, and quality answers for jobs it knows.
        alerts = requests.get(f"{url}/alerts", timeout=5).json()
        assert "Watchdog" in {alert["alertname"] for alert in alerts["active"]}
        assert requests.get(f"{url}/jobs/j/quality", timeout=5).status_code == 404
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "i2v_alerts{" in metrics
        assert "i2v_quality_queue_pending" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    store = SqliteStore(tmp_path / "monitor.db")  # flushed on SIGTERM: the event and a host sample are there
    try:
        assert [p.fields["job_id"] for p in store.query_points(JOB_EVENT, 0, 2**62)] == ["j"]
        assert store.query_points(HOST_SAMPLE, 0, 2**62)
    finally:
        store.close()
    assert (tmp_path / "alerts-state.json").is_file()  # beside the data, not in the working directory
