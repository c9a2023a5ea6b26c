"""The two services as real processes (`python -m generator`, `python -m monitor`) that the fault tests kill.

Each runs on a loopback port of its own with its state under a temporary folder; `kill()` is a SIGKILL (no
clean-up runs, as in a crash or the OOM killer) and `start()` again reuses the same port and state, as a
supervisor's restart would. Their output goes to a log file whose tail failure messages quote.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.generator.conftest import SMALL_JOB, png_bytes
from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One `python -m <module>` on a fixed port: start, wait until ready, SIGKILL, restart, stop."""

    def __init__(self, module: str, args: list[str], env: Mapping[str, str], log_path: Path, ready_path: str) -> None:
        """Prepare the command; `start()` runs it."""
        self.module = module
        self.args = args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, deadline_s: float = 120.0) -> ServiceProcess:
        """Run the process and wait (with a deadline) until `ready_path` answers 200."""
        log = self.log_path.open("ab")
        try:
            log.write(f"---- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.starts += 1
        try:
            wait_for(self._ready_or_exited, deadline_s, f"python -m {self.module} to answer {self.ready_path}")
        except TimeoutError:
            self.kill()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"python -m {self.module} exited with {self.process.returncode}: {self.log_tail()}")
        return self

    def _ready_or_exited(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        try:
            return requests.get(self.url + self.ready_path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def url(self) -> str:
        """Return the base URL."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """Return the running process' PID."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Return whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (nothing flushed, nothing closed) and reap it."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it answers nothing, though the kernel still accepts connections."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused process (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> int | None:
        """SIGTERM, wait for a clean exit (SIGKILL after 30 s); return the exit status."""
        if not self.alive():
            return None if self.process is None else self.process.returncode
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)  # a paused process must run to act on SIGTERM
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def resources(self) -> dict[str, int]:
        """Return the process' resident memory and open file descriptors."""
        process = psutil.Process(self.pid)
        return {"rss_bytes": process.memory_info().rss, "open_fds": process.num_fds()}

    def log_text(self) -> str:
        """Return the whole log."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the log, for failure messages."""
        return self.log_text()[-chars:]


class GeneratorProcess(ServiceProcess):
    """`python -m generator --model tiny` with its outputs and state under `root`."""

    def __init__(self, root: Path, *, monitor_url: str | None = None, env: Mapping[str, str] | None = None) -> None:
        """Pick a port and folders under `root`."""
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.root = root
        args = ["--port", str(self.port), "--model", "tiny", "--outputs", str(root / "outputs")]
        args += ["--state-dir", str(root / "state")]
        if monitor_url:
            args += ["--monitor-url", monitor_url]
        # One torch thread: on a shared 2-core machine, two spinning OpenMP threads per process slow every job badly.
        base_env = {
            "I2V_HOST_NAME": "fault-host",
            "GENERATOR_QUEUE_SIZE": "4",
            "LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
        }
        super().__init__("generator", args, {**base_env, **(env or {})}, root / "generator.log", "/ready")

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"http://127.0.0.1:{self.port}"

    def submit(self, **fields: str) -> dict[str, Any]:
        """Submit the smallest job (fields override it) and return the 202 answer."""
        files = {"image": ("input.png", io.BytesIO(png_bytes()), "image/png")}
        response = requests.post(f"{self.url}/api/jobs", data={**SMALL_JOB, **fields}, files=files, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        """Return one job's status."""
        return requests.get(f"{self.url}/api/jobs/{job_id}", timeout=10).json()

    def wait_job(self, job_id: str, states: tuple[str, ...], deadline_s: float = 300) -> dict[str, Any]:
        """Wait until the job is in one of `states`; return its status."""
        wait_for(lambda: self.job(job_id)["state"] in states, deadline_s, f"job {job_id} to reach {states}")
        return self.job(job_id)

    def health(self) -> dict[str, Any]:
        """Return GET /health."""
        return requests.get(f"{self.url}/health", timeout=10).json()

    def logged_events(self) -> list[dict[str, Any]]:
        """Return every event the generator emitted, from its JSON log lines (all runs)."""
        events = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue  # this harness's "---- start" lines
            record = json.loads(line)
            if record.get("logger") == "generator.event":
                events.append(record["event"])
        return events


class MonitorProcess(ServiceProcess):
    """`python -m monitor` with its data under `root`, sampling every `interval_s`."""

    def __init__(
        self,
        root: Path,
        *,
        store_url: str | None = None,
        generator_url: str | None = None,
        interval_s: float = 0.5,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: list[str] | None = None,
        outputs: Path | None = None,
    ) -> None:
        """Pick a port (or take `port`) and folders under `root`; `outputs`: the generator's clips, to score them."""
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.root = root
        outputs = outputs or root / "outputs"
        args = ["--port", str(self.port), "--data-dir", str(root / "data"), "--outputs", str(outputs)]
        args += ["--sample-interval", str(interval_s), "--host-name", "fault-host", "--store-wait", "10"]
        args += ["--generator-url", generator_url or f"http://127.0.0.1:{free_port()}"]
        if store_url:
            args += ["--store", store_url]
        args += extra_args or []
        super().__init__("monitor", args, dict(env or {}), root / "monitor.log", "/monitor/api/status")

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        """Return GET /monitor/api/status."""
        return requests.get(f"{self.url}/monitor/api/status", timeout=10).json()

    def alerts(self) -> dict[str, Any]:
        """Return GET /monitor/api/alerts."""
        return requests.get(f"{self.url}/monitor/api/alerts", timeout=10).json()
