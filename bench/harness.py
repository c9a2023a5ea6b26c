"""What every benchmark shares: the figure record, percentiles, the machine's state, and real processes to measure.

A benchmark is a function `run(ctx: Context) -> Result`. It measures on this machine, says for each figure the
target it must reach and how it was measured, and keeps its raw samples beside the figures in its JSON.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass
class Figure:
    """One measured figure, its target (None: reported, no target) and whether it met it."""

    figure: str
    value: float | None
    unit: str
    how: str
    target: str | None = None
    met: bool | None = None
    missed_by: str | None = None  # "3.2x the target", "+12 ms": only when missed
    where: str = "this machine"  # or "H100 (bench/results/h100_....json)"

    def display(self) -> str:
        """Return the value with its unit, rounded for a table."""
        if self.value is None:
            return "n/a"
        value = self.value
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return f"{text} {self.unit}".strip()


def at_most(figure: str, value: float | None, limit: float, unit: str, how: str, **kw: Any) -> Figure:
    """A figure whose target is `value <= limit` (`< limit` reads the same at this precision)."""
    met = None if value is None else value <= limit
    missed = None if met in (None, True) else f"{value / limit:.2f}x the target (+{value - limit:.3g} {unit})"
    return Figure(figure, value, unit, how, f"<= {limit:g} {unit}", met, missed, **kw)


def at_least(figure: str, value: float | None, floor: float, unit: str, how: str, **kw: Any) -> Figure:
    """A figure whose target is `value >= floor`."""
    met = None if value is None else value >= floor
    missed = None if met in (None, True) else f"{value / floor:.2f}x the target ({value - floor:,.0f} {unit})"
    return Figure(figure, value, unit, how, f">= {floor:,g} {unit}", met, missed, **kw)


def info(figure: str, value: float | None, unit: str, how: str, **kw: Any) -> Figure:
    """A figure reported without a target."""
    return Figure(figure, value, unit, how, **kw)


@dataclass
class Result:
    """What one benchmark returns: its figures, and everything it measured to get them."""

    figures: list[Figure]
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        return {"figures": [asdict(f) for f in self.figures], "data": self.data}


@dataclass
class Context:
    """What the runner hands every benchmark: quick or full, a scratch folder, where results go, shared servers."""

    quick: bool
    work: Path
    out: Path
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def scratch(self, name: str) -> Path:
        """Return a fresh folder under the scratch folder."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))

    def influxd(self) -> Any:
        """Start a real influxd (Debian's influxdb, as the tests do) on free loopback ports; stopped by close().

        Its write cache goes to TSM files after 2 s without writes (the default waits 10 minutes): a benchmark
        writes a day of history in seconds, and a day of history in production is in TSM files, not in the
        cache, which influxd sorts on every query.
        """
        from tests.servers import InfluxServer

        server = InfluxServer(self.scratch("influxd"))
        config = server.config.read_text()
        server.config.write_text(config.replace("[data]\n", '[data]\n  cache-snapshot-write-cold-duration = "2s"\n'))
        server.start()
        self._closers.append(server.stop)
        return server

    @staticmethod
    def settle_influxd(seconds: float = 5.0) -> None:
        """Wait for influxd to move a just-written history from its cache to TSM files (see influxd())."""
        time.sleep(seconds)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run `closer` when the benchmark ends."""
        self._closers.append(closer)

    def close(self) -> None:
        """Stop what the benchmark started, newest first."""
        while self._closers:
            self._closers.pop()()


def quantile(values: Sequence[float], q: float) -> float | None:
    """Return the q-quantile of `values` by the nearest-rank method (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))  # ceil(q*n), in 1..n
    return ordered[rank - 1]


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """Return count, p50, p99 and max of `values` times `scale`."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "p50": quantile(values, 0.5) * scale,  # type: ignore[operator]
        "p99": quantile(values, 0.99) * scale,  # type: ignore[operator]
        "max": max(values) * scale,
    }


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """Describe this machine and the code measured."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "commit": commit,
    }


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200 (TimeoutError after `deadline_s`; RuntimeError if `process` exits)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process behind {url} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_s:.0f} s")


class MonitorProcess:
    """A real `python -m monitor` on a free loopback port, its own data folder, stopped with SIGTERM."""

    def __init__(
        self,
        data_dir: Path,
        *,
        store_url: str | None = None,
        interval_s: float = 2.0,
        port: int | None = None,
        args: Sequence[str] = (),
        **env: str,
    ) -> None:
        """Prepare the command (`args` are more flags, later ones winning); `start()` runs it and waits for status.

        Pass the `port` of an earlier monitor to restart it where its clients (a generator) send.
        """
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.command = [
            sys.executable, "-m", "monitor", "--port", str(self.port), "--data-dir", str(data_dir),
            "--sample-interval", str(interval_s), "--outputs", str(data_dir / "outputs"),
        ]  # fmt: skip
        if store_url:
            self.command += ["--store", store_url]
        self.command += list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.env.setdefault("GENERATOR_URL", "http://127.0.0.1:9")  # no generator unless one is named
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 90.0) -> MonitorProcess:
        """Run the monitor and wait until its status answers."""
        with (self.data_dir / "monitor.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
            )
        try:
            wait_http(f"{self.url}/monitor/api/status", deadline_s, self.process)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """Freeze the monitor (SIGSTOP): it uses no CPU or GPU and answers nothing until resume()."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused monitor (SIGCONT)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def status(self) -> dict[str, Any]:
        """Return /monitor/api/status."""
        return requests.get(f"{self.url}/monitor/api/status", timeout=30).json()

    def clips_scored(self) -> int | None:
        """Return how many clips the monitor has scored since it started (its /metrics), None if it does not say."""
        try:
            text = requests.get(f"{self.url}/metrics", timeout=10).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith("i2v_quality_scoring_duration_seconds_count"):
                return int(float(line.rsplit(" ", 1)[1]))
        return None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the monitor flushes its writer), then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused monitor must run to act on SIGTERM
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> MonitorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_script(args: Iterable[str], timeout_s: float, log_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a Python script of this repository with the repository on the path; stderr goes to `log_path`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log_path.open("a") as log:
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
            timeout=timeout_s, check=True,
        )  # fmt: skip
