"""Security: tokens on every mutating endpoint (compared in constant time), loopback-only without tokens, no
secret in logs, answers or error messages, no stack trace in an error page, and no CORS.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask

from generator.config import GeneratorConfig
from monitor.config import ConfigError, MonitorConfig
from monitor.storage.influx import InfluxStore
from tests.api.conftest import TOKEN, make_generator_app, make_monitor_app
from tests.faults.procs import GeneratorProcess, MonitorProcess
from tests.servers import InfluxServer, free_port

ROOT = Path(__file__).resolve().parents[2]
WRONG = ["", "Bearer", "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"]


def _events() -> dict:
    from tests.faults.conftest import make_events

    return {"events": make_events(1)}


# ---- tokens ------------------------------------------------------------------------------------------------


def _cancel_path(app: Flask) -> str:
    client = app.test_client()
    from tests.generator.conftest import png_bytes

    data = {"prompt": "a fox", "image": (__import__("io").BytesIO(png_bytes()), "a.png", "image/png")}
    job = client.post("/api/jobs", data=data, content_type="multipart/form-data").get_json()
    return f"/api/jobs/{job['job_id']}/cancel"


MUTATING: list[tuple[str, Callable[[Flask], str], Callable[[], dict] | None]] = [
    ("generator", _cancel_path, None),
    ("monitor", lambda app: "/monitor/api/events", _events),
    ("monitor", lambda app: "/monitor/api/alerts/some-alert/ack", lambda: {"by": "me"}),
]


@pytest.mark.parametrize(("service", "path", "body"), MUTATING, ids=["cancel", "ingest", "ack"])
def test_mutating_endpoints_refuse_a_missing_or_wrong_token(
    service: str, path: Callable[[Flask], str], body: Callable[[], dict] | None, request: pytest.FixtureRequest
) -> None:
    app: Flask = request.getfixturevalue(f"{service}_app")
    client, url = app.test_client(), path(app)
    for header in WRONG:
        answer = client.post(url, json=body() if body else None, headers={"Authorization": header} if header else {})
        assert answer.status_code == 401, f"{header!r}: {answer.status_code}"
        assert answer.get_json()["error"], "a 401 says what to send"
    right = client.post(url, json=body() if body else None, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code != 401


def test_rating_refuses_a_missing_token(monitor_app: Flask) -> None:
    answer = monitor_app.test_client().post("/monitor/api/jobs/any/rating", json={"stars": 5})
    assert answer.status_code == 401


SECRET_NAME = re.compile(r"(^|_)(token|password|secret)$")


def _token_comparisons(path: Path) -> list[str]:
    """Return `==`/`!=` comparisons in a module where either side names a token, password or secret."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            names = {
                (n.id if isinstance(n, ast.Name) else n.attr).lower()
                for side in (node.left, *node.comparators)
                for n in ast.walk(side)
                if isinstance(n, ast.Name | ast.Attribute)
            }
            if any(SECRET_NAME.search(name) for name in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_tokens_are_only_compared_in_constant_time() -> None:
    modules = [p for folder in ("generator", "monitor", "common") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert [hit for path in modules for hit in _token_comparisons(path)] == []
    checks = {p.relative_to(ROOT).as_posix() for p in modules if "compare_digest" in p.read_text()}
    assert checks == {"common/auth.py"}
    users = {p.relative_to(ROOT).as_posix() for p in modules if "bearer_allows(" in p.read_text()}
    assert users >= {"generator/app.py", "monitor/web/ingest.py", "monitor/web/alerts.py", "monitor/web/quality.py"}


# ---- loopback only without tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_without_tokens_neither_service_binds_beyond_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="ADMIN_TOKEN"):
        GeneratorConfig(host=host).validate()
    with pytest.raises(ConfigError, match="INGEST_TOKEN"):
        MonitorConfig(host=host).validate()
    GeneratorConfig(host=host, admin_token="t", viewer_token="v").validate()
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        MonitorConfig(host=host, ingest_token="t").validate()
    with pytest.raises(ConfigError, match="VIEWER_TOKEN"):
        MonitorConfig(host=host, ingest_token="t", admin_token="t").validate()
    MonitorConfig(host=host, ingest_token="t", admin_token="t", viewer_token="v").validate()
    for loopback in ("127.0.0.1", "localhost", "::1"):
        GeneratorConfig(host=loopback).validate()
        MonitorConfig(host=loopback).validate()


@pytest.mark.parametrize("module", ["generator", "monitor"])
def test_python_m_refuses_a_public_bind_without_a_token(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_TOKEN", "INGEST_TOKEN")}
    result = subprocess.run(
        [sys.executable, "-m", module, "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "TOKEN" in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line that says what to change


def test_a_public_monitor_needs_the_admin_token_too() -> None:
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        MonitorConfig(host="0.0.0.0", ingest_token="t").validate()


# ---- no secret in logs, answers or error messages -----------------------------------------------------------

PASSWORD = "pw-9f3c1e"


@pytest.mark.parametrize(
    "url",
    [
        f"influxdb://user:{PASSWORD}@host:bad/db",
        f"influxdb://user:{PASSWORD}@host:8086/",
        f"mysql://user:{PASSWORD}@host/db",
    ],
)
def test_the_stores_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="InfluxDB URL") as caught:
        InfluxStore.from_url(url)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [f"influxdb://user:{PASSWORD}@host:bad/db", f"influxdb://user:{PASSWORD}@host:8086/", f"pg://u:{PASSWORD}@h/d"],
)
def test_the_monitors_config_errors_never_show_the_store_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MonitorConfig(store_url=url).validate()
    assert PASSWORD not in str(caught.value)


def test_a_webhook_secret_is_not_shown_by_the_alerts_api(tmp_path: Path) -> None:
    secret_url = "https://hooks.example.org/services/T000/B000/XyZsecret?token=abc123"
    app = make_monitor_app(tmp_path, alert_webhook_urls=(secret_url,))
    body = app.test_client().get("/monitor/api/alerts").get_data(as_text=True)
    assert "XyZsecret" not in body
    assert "abc123" not in body


def test_secrets_reach_no_log_and_no_answer_of_the_running_services(influxd: InfluxServer, tmp_path: Path) -> None:
    secrets = {"ADMIN_TOKEN": "admin-6d1f0b", "INGEST_TOKEN": "ingest-0a7e55"}
    monitor_port = free_port()
    generator = GeneratorProcess(tmp_path / "generator", monitor_url=f"http://127.0.0.1:{monitor_port}", env=secrets)
    store_url = f"influxdb://i2v:{PASSWORD}@127.0.0.1:{influxd.http_port}/secrets"  # influxd ignores it (no auth)
    monitor = MonitorProcess(
        tmp_path / "monitor", store_url=store_url, generator_url=generator.url, port=monitor_port, env=secrets
    )
    bodies = []
    try:
        monitor.start()
        generator.start()
        for url in (
            f"{generator.url}/health",
            f"{generator.url}/metrics",
            f"{generator.url}/openapi.json",
            f"{generator.url}/",
            f"{monitor.url}/monitor/api/status",
            f"{monitor.url}/monitor/api/alerts",
            f"{monitor.url}/metrics",
            f"{monitor.url}/monitor/",
        ):
            bodies.append(requests.get(url, timeout=10).text)
        bodies.append(requests.post(f"{generator.url}/api/jobs/x/cancel", timeout=10).text)
        bodies.append(requests.post(f"{monitor.url}/monitor/api/events", json={"events": []}, timeout=10).text)
        assert requests.get(f"{monitor.url}/monitor/api/status", timeout=10).json()["store_url"] == (
            f"influxdb://i2v:***@127.0.0.1:{influxd.http_port}/secrets"
        )
    finally:
        generator.stop()
        monitor.stop()
    texts = [*bodies, generator.log_text(), monitor.log_text()]
    for secret in (*secrets.values(), PASSWORD):
        assert not any(secret in text for text in texts), f"{secret} leaked"


# ---- error pages and CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["generator", "monitor"])
def test_error_pages_are_json_without_a_stack_trace(service: str, tmp_path: Path) -> None:
    app = make_generator_app(tmp_path) if service == "generator" else make_monitor_app(tmp_path)

    def boom() -> str:
        raise RuntimeError(f"internal detail {ROOT}")

    app.add_url_rule("/boom", "boom", boom)
    client = app.test_client()
    try:
        for path, method, status in (("/boom", "GET", 500), ("/nowhere", "GET", 404), ("/openapi.json", "POST", 405)):
            answer = client.open(path, method=method)
            assert answer.status_code == status
            assert answer.content_type == "application/json"
            text = answer.get_data(as_text=True)
            assert answer.get_json()["error"]
            for leak in ("Traceback", 'File "', str(ROOT), "internal detail"):
                assert leak not in text, f"{status} page shows {leak!r}"
    finally:
        if service == "generator":
            app.extensions["generator"].close()


@pytest.mark.parametrize("service", ["generator", "monitor"])
def test_cors_is_off(service: str, request: pytest.FixtureRequest) -> None:
    app: Flask = request.getfixturevalue(f"{service}_app")
    client = app.test_client()
    origin = {"Origin": "https://evil.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    paths = ["/api/jobs", "/health"] if service == "generator" else ["/monitor/api/events", "/monitor/api/status"]
    for path in paths:
        for answer in (client.get(path, headers=origin), client.options(path, headers=preflight)):
            assert not [h for h, _ in answer.headers.items() if h.lower().startswith("access-control-")], path
