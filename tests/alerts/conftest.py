"""Fixtures for the alerting tests: a settable clock, tiny HTTP servers (receiver, fake generator), Alertmanager."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from monitor.alerts.rules import Rule, load_rules
from monitor.alerts.settings import DEFAULT_RULES


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], deadline_s: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)  # the poll interval of a wait with a deadline, not a guess at a duration


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def default_rules() -> list[Rule]:
    return load_rules(DEFAULT_RULES)


class _Server:
    """A ThreadingHTTPServer on a free loopback port whose handler calls `self.handle(method, path, body)`."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, content_type, payload = owner.handle(method, self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(_Server):
    """Record every JSON document POSTed, by path (Alertmanager's webhook, our webhook notifier)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.times: list[float] = []  # time.monotonic() of each received document
        self.lock = threading.Lock()
        self.status = 200
        super().__init__()

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        with self.lock:
            if self.status == 200:
                self.received.append((path, json.loads(body)))
                self.times.append(time.monotonic())
        return self.status, "application/json", b"{}"

    def alerts(self, path: str | None = None) -> list[dict[str, Any]]:
        """Return every alert received (Alertmanager webhook shape), optionally only on one path."""
        with self.lock:
            docs = [doc for p, doc in self.received if path is None or p == path]
        return [alert for doc in docs for alert in doc.get("alerts", [])]


class FakeGenerator(_Server):
    """The generator's seams the alerting uses: /health, /metrics, GET /api/jobs, POST /api/jobs/<id>/cancel."""

    def __init__(self, token: str = "s3cret") -> None:
        self.token = token
        self.healthy = True
        self.jobs: dict[str, dict[str, Any]] = {}
        self.cancel_calls: list[str] = []
        self.registry = CollectorRegistry()
        self.requests = Counter("i2v_requests", "", ["status"], registry=self.registry)
        self.duration = Histogram(
            "i2v_request_duration_seconds", "", buckets=(10, 30, 60, 90, 120, 300), registry=self.registry
        )
        self.queue = Gauge("i2v_queue_pending", "", registry=self.registry)
        self.ooms = Gauge("i2v_consecutive_oom_failures", "", registry=self.registry)
        self._compiles: Counter | None = None
        super().__init__()

    def compiles(self) -> Counter:
        """Start exporting i2v_compiles_total{module, phase}, as a generator with a compiled UNet does."""
        if self._compiles is None:
            self._compiles = Counter("i2v_compiles", "", ["module", "phase"], registry=self.registry)
            self._compiles.labels("unet", "job")
        return self._compiles

    def restart_compiles(self) -> None:
        """Start the compile counters from zero again, as a restarted generator does."""
        if self._compiles is not None:
            self.registry.unregister(self._compiles)
        self._compiles = None
        self.compiles()

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        url = urlparse(path)
        if url.path == "/health":
            return (200 if self.healthy else 503), "application/json", b'{"status": "ok"}'
        if url.path == "/metrics":
            return 200, "text/plain; version=0.0.4", generate_latest(self.registry)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "application/json", b'{"error": "unauthorized"}'
        if method == "GET" and url.path == "/api/jobs":
            state = parse_qs(url.query).get("state", [None])[0]
            jobs = [job for job in self.jobs.values() if state is None or job["state"] == state]
            return 200, "application/json", json.dumps({"jobs": jobs}).encode()
        if method == "POST" and url.path.startswith("/api/jobs/") and url.path.endswith("/cancel"):
            job_id = url.path.split("/")[3]
            self.cancel_calls.append(job_id)
            job = self.jobs.get(job_id)
            if job is None:
                return 404, "application/json", b"{}"
            if job["state"] != "running":
                return 409, "application/json", b"{}"
            job["state"] = "cancelled"
            return 202, "application/json", json.dumps(job).encode()
        return 404, "application/json", b"{}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def fake_generator() -> Iterator[FakeGenerator]:
    server = FakeGenerator()
    yield server
    server.close()


def alertmanager_binary() -> str:
    """Return Debian's Alertmanager binary (prometheus-alertmanager) or upstream's (alertmanager)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError("Alertmanager is missing: run scripts/install-system-deps.sh")
    return binary


class Alertmanager:
    """A real Alertmanager on free loopback ports, clustering off, storage in a temporary folder."""

    def __init__(self, root: Path, config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "alertmanager.yml").write_text(config)
        self.log = (root / "alertmanager.log").open("wb")
        self.process = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={root / 'alertmanager.yml'}",
                f"--storage.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 20, "Alertmanager to answer /-/ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Alertmanager exited with {self.process.returncode}; see {self.log.name}")
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()
