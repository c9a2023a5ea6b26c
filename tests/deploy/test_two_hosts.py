"""Two hosts, one InfluxDB: two real `python -m monitor` processes, run with the compose service's own command
(with local ports, data dirs and host names), write to one real influxd. Their series stay apart, the API
filters by host (series, jobs, the CSV report), and neither loses a point while the other restarts."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from common.events import Event, utc_now_iso
from tests.deploy.compose import ROOT, load_compose
from tests.servers import InfluxServer, free_port, wait_for

DATABASE = "two_hosts"
INTERVAL_S = 0.2
TOKEN = "two-hosts-ingest-token"
# Variables a developer's shell may hold that would change what the processes under test do.
FOREIGN = ("MONITOR_", "INFLUX_URL", "GENERATOR_", "ALERTMANAGER_URLS", "ALERT_WEBHOOK_URLS", "I2V_", "CLIP_MODEL_DIR")


class Monitor:
    """One host's monitor: the compose service's command, on a local port, data dir and host name."""

    def __init__(self, host_name: str, root: Path, store_url: str) -> None:
        self.host_name = host_name
        self.data_dir = root / host_name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/monitor/api"
        self.store_url = store_url
        self.process: subprocess.Popen[str] | None = None

    def argv(self) -> list[str]:
        """Return the container's command with this host's settings after it (argparse: the last flag wins)."""
        command = [str(part) for part in load_compose()["services"]["monitor"]["command"]]
        assert command[:3] == ["python", "-m", "monitor"]
        local = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        local += ["--outputs", str(self.data_dir), "--host-name", self.host_name]
        local += ["--generator-url", f"http://127.0.0.1:{free_port()}", "--sample-interval", str(INTERVAL_S)]
        return [sys.executable, *command[1:], *local]

    def start(self) -> None:
        """Start the process and wait until its API answers."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process (it takes a second or two to answer: `wait_ready`)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
        environ |= {"MONITOR_STORE": self.store_url, "INGEST_TOKEN": TOKEN, "ADMIN_TOKEN": "two-hosts-admin"}
        self.process = subprocess.Popen(
            self.argv(), cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def wait_ready(self) -> None:
        """Wait until the API answers; fail with the process's stderr if it exited instead."""
        process = self.process
        assert process is not None

        def answers() -> bool:
            try:
                return requests.get(f"{self.url}/status", timeout=1).status_code == 200
            except requests.ConnectionError:
                return process.poll() is not None

        wait_for(answers, 60, f"the {self.host_name} monitor to serve /status")
        assert process.poll() is None, process.communicate()[1][-2000:]

    def stop(self) -> None:
        """SIGTERM (the monitor flushes its writer) and check it exited cleanly."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr[-2000:]

    def kill(self) -> None:
        """Stop by force (cleanup after a failure)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)

    def ingest(self, job_id: str, states: tuple[str, ...] = ("queued", "running", "succeeded")) -> int:
        """Send one job's events as this host's generator does; return how many were sent."""
        events = [
            Event(job_id=job_id, host=self.host_name, gpu="0", kind="job", status=s, started_at=utc_now_iso())
            for s in states
        ]
        events.insert(2, Event(job_id=job_id, host=self.host_name, gpu="0", kind="stage", stage="denoising",
                               started_at=utc_now_iso(), duration_s=0.5))  # fmt: skip
        answer = requests.post(
            f"{self.url}/events",
            json=[e.to_dict() for e in events],
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert answer.status_code in (200, 202), answer.text
        assert answer.json()["accepted"] == len(events)
        return len(events)

    def report_jobs(self, host: str) -> list[tuple[str, str]]:
        """Return (job_id, host) of each row of the per-job CSV report filtered by `host`."""
        answer = requests.get(f"{self.url}/reports/jobs.csv", params={"since": "1h", "host": host}, timeout=10)
        assert answer.status_code == 200, answer.text
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        return sorted((row["job_id"], row["host"]) for row in rows)

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET a read API route as JSON."""
        answer = requests.get(f"{self.url}/{path}", params=params, timeout=10)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture
def hosts(influxd: InfluxServer, tmp_path: Path) -> Iterator[tuple[Monitor, Monitor]]:
    """Two monitors, host-a and host-b, writing to one database on the session's influxd."""
    influxd.query(f'DROP DATABASE "{DATABASE}"')
    monitors = (
        Monitor("host-a", tmp_path, influxd.store_url(DATABASE)),
        Monitor("host-b", tmp_path, influxd.store_url(DATABASE)),
    )
    try:
        for monitor in monitors:
            monitor.launch()  # both at once, as two hosts would
        for monitor in monitors:
            monitor.wait_ready()
        yield monitors
    finally:
        for monitor in monitors:
            monitor.kill()


def _times(influxd: InfluxServer, host: str) -> list[int]:
    """Return the host's sample times (ns) as the database holds them, read directly with InfluxQL."""
    query = f"SELECT memory_total_bytes FROM host_sample WHERE host = '{host}'"
    series = [s for r in influxd.query(query, DATABASE)["results"] for s in r.get("series", [])]
    return [row[0] for s in series for row in s["values"]]


def _count(influxd: InfluxServer, query: str) -> int:
    series = [s for r in influxd.query(query, DATABASE)["results"] for s in r.get("series", [])]
    return sum(row[1] for s in series for row in s["values"])


def test_two_hosts_write_apart_filter_by_host_and_lose_nothing_across_a_restart(
    influxd: InfluxServer, hosts: tuple[Monitor, Monitor]
) -> None:
    a, b = hosts
    sent = {"host-a": a.ingest("host-a-job-1"), "host-b": b.ingest("host-b-job-1")}
    for host in ("host-a", "host-b"):
        wait_for(lambda h=host: len(_times(influxd, h)) >= 5, 30, f"{host}'s samples in InfluxDB")

    # host-b restarts; host-a keeps sampling and ingesting meanwhile.
    b.stop()
    stopped_ns = time.time_ns()
    b_before = _times(influxd, "host-b")
    a_at_stop = len(_times(influxd, "host-a"))
    sent["host-a"] += a.ingest("host-a-job-2")
    wait_for(lambda: len(_times(influxd, "host-a")) >= a_at_stop + 10, 30, "host-a's samples while host-b is down")
    restarted_ns = time.time_ns()
    b.start()
    sent["host-b"] += b.ingest("host-b-job-2")
    wait_for(lambda: len(_times(influxd, "host-b")) >= len(b_before) + 5, 30, "host-b's samples after its restart")

    # The API of either host serves every host, filtered by the host asked for.
    for monitor in (a, b):
        for host in ("host-a", "host-b"):
            series = monitor.get("series", measurement="host_sample", window="5m", host=host)["series"]
            assert [s["tags"]["host"] for s in series] == [host]
            assert series[0]["points"]
            jobs = monitor.get("jobs", window="1h", host=host)["jobs"]
            assert sorted((j["id"], j["host"]) for j in jobs) == [(f"{host}-job-{n}", host) for n in (1, 2)]
        unfiltered = monitor.get("series", measurement="host_sample", window="5m")["series"]
        assert sorted(s["tags"]["host"] for s in unfiltered) == ["host-a", "host-b"]
    # The per-job CSV report filters by host too (each job's summary is written as it ends).
    for host in ("host-a", "host-b"):
        expected = [(f"{host}-job-{n}", host) for n in (1, 2)]
        wait_for(lambda h=host, e=expected: a.report_jobs(h) == e, 30, f"{host}'s jobs in the CSV report")
    a.stop()
    b.stop()

    # Read back with InfluxQL, bypassing the code under test.
    tags = influxd.query('SHOW TAG VALUES FROM "host_sample" WITH KEY = "host"', DATABASE)["results"][0]["series"]
    assert sorted(v[1] for v in tags[0]["values"]) == ["host-a", "host-b"]
    for host, count in sent.items():
        assert _count(influxd, f"SELECT count(job_id) FROM job_event WHERE host = '{host}'") == count, host
        assert (
            _count(influxd, f"SELECT count(job_id) FROM job_event WHERE host = '{host}' AND job_id !~ /^{host}-/") == 0
        )
    # host-b: every point written before the stop is still there, once; it resumed after the restart.
    b_after = _times(influxd, "host-b")
    assert [t for t in b_after if t <= stopped_ns] == b_before
    assert any(t > restarted_ns for t in b_after)
    # host-a: sampled on through host-b's restart without a hole.
    a_times = _times(influxd, "host-a")
    gaps_s = [(later - earlier) / 1e9 for earlier, later in pairwise(a_times)]
    assert max(gaps_s) < 2.5, f"host-a has a {max(gaps_s):.1f} s hole in its samples"
    down_s = (restarted_ns - stopped_ns) / 1e9
    during = [t for t in a_times if stopped_ns <= t <= restarted_ns]
    assert len(during) >= down_s / INTERVAL_S / 3, (len(during), down_s)
