"""Queue mode on real parts: Debian's redis-server (AOF on), the API and GPU workers as `python -m generator`
processes, a real `python -m monitor` receiving every worker's events.

The workers run a smaller random-weight pipeline than `tiny`, built by the real code (`random_pipeline`) and
loaded through `--model DIR` (`save_pipeline`/`from_pretrained`): a tiny job takes 10-20 s of these two shared
cores, and these tests run about 40 jobs. What they prove is the queue's, not the model's.
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from flask import Flask

from generator.app import create_app as create_generator
from generator.config import GeneratorConfig
from generator.fleet.api_queue import redis_client
from generator.fleet.store import RedisJobStore
from generator.pipeline import MICRO, random_pipeline, save_pipeline
from monitor.compose import create_app as create_monitor
from monitor.config import MonitorConfig
from monitor.web.context import get_context
from tests.faults.procs import MonitorProcess, ServiceProcess
from tests.generator.conftest import SMALL_JOB, png_bytes
from tests.servers import AppServer, RedisServer, free_port, wait_for

HOSTS = ("host-a", "host-b", "host-c")
FINAL = ("succeeded", "failed", "cancelled")
LEASE_S = "3"


class ApiProcess(ServiceProcess):
    """`python -m generator --queue URL`: the API of queue mode (no model)."""

    def __init__(
        self, root: Path, queue_url: str, outputs: Path, monitor_url: str, env: dict[str, str], port: int | None = None
    ) -> None:
        """Take `port` (or pick one); state under `root`."""
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        args = ["--queue", queue_url, "--port", str(self.port), "--outputs", str(outputs)]
        args += ["--state-dir", str(root / "state"), "--monitor-url", monitor_url]
        super().__init__("generator", args, {"I2V_HOST_NAME": "api-host", **env}, root / "api.log", "/ready")

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"http://127.0.0.1:{self.port}"


class WorkerProcess(ServiceProcess):
    """`python -m generator worker --queue URL` on the CPU, announcing itself as `host`."""

    def __init__(
        self, root: Path, host: str, queue_url: str, model: Path, outputs: Path, monitor_url: str, env: dict[str, str]
    ) -> None:
        """Pick a probe port; own state (event spool) under `root`, clips in the shared `outputs`."""
        root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, free_port()
        args = ["worker", "--queue", queue_url, "--port", str(self.port), "--model", str(model)]
        args += ["--outputs", str(outputs), "--state-dir", str(root / "state"), "--monitor-url", monitor_url]
        super().__init__("generator", args, {"I2V_HOST_NAME": host, **env}, root / f"{host}.log", "/ready")

    @property
    def url(self) -> str:
        """Return the probe server's base URL."""
        return f"http://127.0.0.1:{self.port}"


class Fleet:
    """Redis, the API, three workers on three host names and a monitor, with helpers to drive them."""

    def __init__(self, root: Path, model: Path) -> None:
        """Prepare every process; `start()` runs them."""
        self.redis = RedisServer(root / "redis")
        api_port = free_port()  # the monitor reads the API's workers and queue (its fleet panel)
        self.monitor = MonitorProcess(root / "monitor", interval_s=2.0, generator_url=f"http://127.0.0.1:{api_port}")
        outputs = root / "outputs"  # the shared clip folder (a ReadWriteMany volume on Kubernetes)
        # One torch thread per process on two shared cores; short leases so a dead worker is noticed in seconds.
        env = {"OMP_NUM_THREADS": "1", "GENERATOR_QUEUE_SIZE": "32", "GENERATOR_LEASE_S": LEASE_S, "LOG_LEVEL": "INFO"}
        self.api = ApiProcess(root / "api", self.redis.url, outputs, self.monitor.url, env, port=api_port)
        self.workers = {
            host: WorkerProcess(root / host, host, self.redis.url, model, outputs, self.monitor.url, env)
            for host in HOSTS
        }

    def start(self) -> Fleet:
        """Start Redis and the monitor, then the API and the workers (each waits for its readiness)."""
        self.redis.start()
        self.monitor.start()
        self.api.start()
        # Together: each spends most of its start importing torch, and the waits for readiness overlap.
        with ThreadPoolExecutor(len(self.workers)) as pool:
            list(pool.map(lambda worker: worker.start(deadline_s=180), self.workers.values()))
        wait_for(lambda: len(self.health()["workers"]) == len(HOSTS), 30, "every worker to announce itself")
        return self

    def stop(self) -> None:
        """Stop every process: all are asked at once (a worker's warm shutdown takes a few seconds), then awaited."""
        processes = [*self.workers.values(), self.api, self.monitor]
        for process in processes:
            if process.alive() and process.process is not None:
                process.process.send_signal(signal.SIGTERM)
        for process in processes:
            process.stop()
        self.redis.stop()

    def submit(self, **fields: str) -> requests.Response:
        """POST the smallest job (fields override it)."""
        files = {"image": ("input.png", io.BytesIO(png_bytes()), "image/png")}
        data = {**SMALL_JOB, "guidance_scale": "1", **fields}
        return requests.post(f"{self.api.url}/api/jobs", data=data, files=files, timeout=30)

    def submit_ok(self, **fields: str) -> str:
        """Submit and return the job id, failing on anything but 202."""
        response = self.submit(**fields)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        """Return one job's status."""
        return requests.get(f"{self.api.url}/api/jobs/{job_id}", timeout=10).json()

    def health(self) -> dict[str, Any]:
        """Return the API's /health."""
        return requests.get(f"{self.api.url}/health", timeout=10).json()

    def metrics(self) -> str:
        """Return the API's /metrics text."""
        return requests.get(f"{self.api.url}/metrics", timeout=10).text

    def wait_states(self, job_ids: list[str], states: tuple[str, ...], deadline_s: float) -> list[dict[str, Any]]:
        """Wait until every job is in one of `states`; return their statuses."""
        wait_for(
            lambda: all(self.job(j)["state"] in states for j in job_ids),
            deadline_s,
            f"{len(job_ids)} jobs to reach {states}",
            interval_s=0.25,
        )
        return [self.job(j) for j in job_ids]

    def logs(self) -> str:
        """Return the tails of every log, for failure messages."""
        parts = [f"== {p.log_path.name}\n{p.log_tail(1500)}" for p in [self.api, *self.workers.values()]]
        return "\n".join(parts)


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Save the micro pipeline once; workers load it with `--model DIR`."""
    root = tmp_path_factory.mktemp("micro-model")
    pipe = random_pipeline(MICRO, torch.device("cpu"), torch.float32, root / "cache")
    save_pipeline(pipe, root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, micro_model: Path) -> Iterator[Fleet]:
    """One fleet for the module's tests (their jobs are told apart by id)."""
    running = Fleet(tmp_path_factory.mktemp("fleet"), micro_model)
    try:
        yield running.start()
    finally:
        running.stop()


@dataclass
class Served:
    """A Flask app served by waitress on a loopback port, in this process."""

    app: Flask
    url: str


@contextlib.contextmanager
def serve(app: Flask) -> Iterator[Served]:
    """Serve `app` on a free port until the block ends."""
    server = AppServer(app).start()
    try:
        yield Served(app, server.url)
    finally:
        server.stop()


@contextlib.contextmanager
def queue_api(root: Path, queue_url: str, monitor_url: str | None = None, lease_s: float = 3.0) -> Iterator[Served]:
    """Serve queue mode's API in this process (it runs no model, so it starts at once), as `python -m generator
    --queue` builds it."""
    config = GeneratorConfig(
        port=free_port(),
        outputs=root / "outputs",
        state_dir=root / "state",
        host_name="api-host",
        queue_url=queue_url,
        monitor_url=monitor_url,
        lease_s=lease_s,
    )
    app = create_generator(config)
    try:
        with serve(app) as served:
            yield served
    finally:
        app.extensions["generator"].close()


@contextlib.contextmanager
def monitor_for(root: Path, generator_url: str | None) -> Iterator[Served]:
    """Serve a monitor (SQLite, no sampler) whose `--generator-url` is `generator_url`."""
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{root / 'monitor.db'}",
        data_dir=root,
        spool_dir=root / "spool",
        alert_state_path=None,
        generator_url=generator_url,
        host_name="monitor-host",
    )
    app = create_monitor(config)
    try:
        with serve(app) as served:
            yield served
    finally:
        get_context(app).close()


def announce(queue_url: str, name: str, **info: Any) -> None:
    """Write a worker's announcement as its housekeeping does (`RedisJobStore.register_worker`), for 60 s."""
    store = RedisJobStore(redis_client(queue_url))
    defaults = {"host": "gpu-host", "gpu": "0", "model": "tiny", "pid": 1, "port": 0, "usable_bytes": None,
                "ready": True, "error": None, "gpu_name": None, "gpu_uuid": None, "job_id": None,
                "seen_at": time.time()}  # fmt: skip
    store.register_worker(name, {**defaults, **info}, ttl_s=60)
    store.r.close()
