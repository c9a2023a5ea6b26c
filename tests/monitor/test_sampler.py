"""The sampler: ticks into points, failures at the tick boundary, overruns counted, the generator's PID."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor.collection.host import HostSnapshot
from monitor.collection.nvml import CallStats, GpuProcess, GpuProcessUtilization, GpuSnapshot, XidEvent
from monitor.collection.sampler import GeneratorPidProvider, Sampler, Snapshot
from monitor.storage.base import Point

GENERATOR_PID = 4242

H100 = GpuSnapshot(
    index=0,
    uuid="GPU-0",
    name="NVIDIA H100 80GB HBM3",
    up=True,
    utilization_ratio=0.97,
    memory_used_bytes=14_000_000_000,
    memory_total_bytes=85_520_809_984,
    temperature_c=52.0,
    power_w=412.3,
    sm_clock_mhz=1980,
    throttle_reasons=0x4,
    ecc_errors_corrected=0,
    ecc_errors_uncorrected=0,
    energy_j=1234.5,
    energy_age_s=0.0,
    processes=(GpuProcess(777, 500), GpuProcess(GENERATOR_PID, 13_000), GpuProcess(888, None)),
    processes_age_s=2.0,
)
LOST = GpuSnapshot(index=1, uuid="GPU-1", name="NVIDIA H100 80GB HBM3", up=False, lost_reason="GPU is lost")
HOST = HostSnapshot(
    cpu_ratio=0.25,
    memory_used_bytes=8_000,
    memory_total_bytes=32_000,
    generator_pid=GENERATOR_PID,
    generator_rss_bytes=None,
    outputs_disk_free_bytes=1_000_000,
)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `condition()` holds, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


class StubGpus:
    """A GPU reader that returns whatever the test queues (the NVML mapping is test_nvml's business)."""

    def __init__(self, *answers: tuple[GpuSnapshot, ...] | Exception, available: bool = True) -> None:
        self.answers = list(answers) or [(H100,)]
        self.available = available
        self.reason = None if available else "NVML found no GPU"
        self.reads = 0
        self.shut = False

    def read(self) -> tuple[GpuSnapshot, ...]:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def call_stats(self) -> dict[str, CallStats]:
        return {"nvmlDeviceGetMemoryInfo": CallStats(3, 9e-6, 4e-6, (2, 1, 0, 0, 0, 0, 0, 0, 0))}

    def error_counts(self) -> dict[tuple[str, str], int]:
        return {("nvmlDeviceGetTotalEccErrors", "NotSupported"): 2}

    def shutdown(self) -> None:
        self.shut = True


class StubHost:
    """A host reader returning a fixed snapshot and remembering the PIDs it was given."""

    def __init__(self) -> None:
        self.pids: list[int | None] = []

    def read(self, generator_pid: int | None = None) -> HostSnapshot:
        self.pids.append(generator_pid)
        return HOST


def make_sampler(gpus: Any = None, **kwargs: Any) -> tuple[Sampler, list[Point]]:
    """Build a sampler over stubs, writing into a list."""
    points: list[Point] = []
    kwargs.setdefault("host", StubHost())
    kwargs.setdefault("generator_pid", lambda: GENERATOR_PID)
    sampler = Sampler(
        interval_s=2.0,
        host_name="h1",
        write=points.extend,
        gpus=gpus or StubGpus(),
        wall_clock=lambda: 1_700_000_000_000_000_000,
        **kwargs,
    )
    return sampler, points


def test_a_tick_writes_one_point_per_gpu_and_one_for_the_host() -> None:
    host = StubHost()
    sampler, points = make_sampler(StubGpus((H100, LOST)), host=host)

    snapshot = sampler.tick()

    assert sampler.latest is snapshot
    assert host.pids == [GENERATOR_PID]
    gpu0, gpu1, host_point = points
    assert gpu0 == Point(
        measurement="gpu_sample",
        tags={"host": "h1", "gpu": "0", "uuid": "GPU-0"},
        fields={
            "name": "NVIDIA H100 80GB HBM3",
            "up": True,
            "utilization_ratio": 0.97,
            "memory_used_bytes": 14_000_000_000,
            "memory_total_bytes": 85_520_809_984,
            "temperature_c": 52.0,
            "power_w": 412.3,
            "sm_clock_mhz": 1980,
            "throttle_reasons": 4,
            "ecc_errors_corrected": 0,
            "ecc_errors_uncorrected": 0,
            "energy_j": 1234.5,
            "generator_memory_bytes": 13_000,
            "other_processes_memory_bytes": 500,
            "process_count": 3,
        },
        time_ns=1_700_000_000_000_000_000,
    )
    assert gpu1.tags == {"host": "h1", "gpu": "1", "uuid": "GPU-1"}
    assert gpu1.fields == {"name": "NVIDIA H100 80GB HBM3", "up": False}  # None fields are left out
    assert host_point == Point(
        measurement="host_sample",
        tags={"host": "h1"},
        fields={
            "cpu_ratio": 0.25,
            "memory_used_bytes": 8_000,
            "memory_total_bytes": 32_000,
            "outputs_disk_free_bytes": 1_000_000,
        },
        time_ns=1_700_000_000_000_000_000,
    )


def test_a_carried_energy_reading_is_not_written_again_and_an_unknown_pid_attributes_nothing() -> None:
    carried = GpuSnapshot(**{**H100.__dict__, "energy_age_s": 4.0})
    sampler, points = make_sampler(StubGpus((carried,)), generator_pid=lambda: None)

    sampler.tick()

    fields = points[0].fields
    assert "energy_j" not in fields
    assert "generator_memory_bytes" not in fields
    assert fields["other_processes_memory_bytes"] == 500 + 13_000


HEALTHY = GpuSnapshot(
    **{
        **H100.__dict__,
        "pci_bus_id": "00000000:19:00.0",
        "process_utilization": (GpuProcessUtilization(GENERATOR_PID, 0.9, 0.4), GpuProcessUtilization(777, 0.3, 0.1)),
        "process_utilization_age_s": 0.0,
        "remapped_rows_correctable": 2,
        "remapped_rows_uncorrectable": 0,
        "remapped_rows_pending": True,
        "remapped_rows_failed": False,
        "pcie_replay_total": 5,
        "power_throttle_s": 1.25,
        "thermal_throttle_s": 0.0,
        "health_age_s": 0.0,
        "xid_events": (XidEvent(79, 1_700_000_000_000_000_123), XidEvent(13, 1_700_000_000_000_000_123)),
        "xid_total": 2,
    }
)


def test_health_identity_and_per_process_share_are_written_and_each_xid_becomes_a_point() -> None:
    sampler, points = make_sampler(StubGpus((HEALTHY,)))

    sampler.tick()

    sample, xid79, xid13, _host = points
    assert sample.tags == {"host": "h1", "gpu": "0", "uuid": "GPU-0"}
    fields = sample.fields
    assert fields["pci_bus_id"] == "00000000:19:00.0"
    assert fields["generator_utilization_ratio"] == 0.9
    assert fields["other_processes_utilization_ratio"] == 0.3
    assert fields["remapped_rows_correctable"] == 2
    assert fields["remapped_rows_pending"] is True
    assert fields["pcie_replay_total"] == 5
    assert fields["power_throttle_s"] == 1.25
    assert fields["xid_errors_total"] == 2
    assert "retired_pages_sbe" not in fields  # unsupported (Hopper): absent, never 0
    assert (xid79.measurement, xid79.tags, xid79.fields) == (
        "gpu_xid",
        {"host": "h1", "gpu": "0", "uuid": "GPU-0"},
        {"xid": 79, "reset_required": True, "tier": "fatal"},
    )
    assert xid13.fields == {"xid": 13, "reset_required": False, "tier": "warning"}
    assert xid13.time_ns == xid79.time_ns + 1  # heard in one nanosecond, kept as two points


def test_carried_health_counters_are_not_written_again_and_an_unknown_pid_splits_no_share() -> None:
    carried = GpuSnapshot(**{**HEALTHY.__dict__, "health_age_s": 4.0, "xid_events": ()})
    sampler, points = make_sampler(StubGpus((carried,)), generator_pid=lambda: None)

    sampler.tick()

    (sample, _host) = points
    for counter in ("remapped_rows_correctable", "pcie_replay_total", "power_throttle_s", "thermal_throttle_s"):
        assert counter not in sample.fields
    assert "generator_utilization_ratio" not in sample.fields
    assert "other_processes_utilization_ratio" not in sample.fields


def test_without_nvml_the_host_is_still_sampled() -> None:
    sampler, points = make_sampler(StubGpus((), available=False))

    snapshot = sampler.tick()

    assert [p.measurement for p in points] == ["host_sample"]
    assert not snapshot.nvml_available
    assert sampler.health()["nvml_reason"] == "NVML found no GPU"


def test_a_failing_stage_is_counted_logged_once_and_the_tick_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = RuntimeError("driver hiccup")
    sampler, points = make_sampler(StubGpus(broken, broken, broken, (H100,)))

    for _ in range(4):
        sampler.tick()

    assert [p.measurement for p in points] == ["host_sample"] * 3 + ["gpu_sample", "host_sample"]
    health = sampler.health()
    assert health["ticks_total"] == 4
    assert health["errors_total"] == 3
    assert health["errors_by_stage"] == {"gpu": 3}
    assert len([r for r in caplog.records if "sampler gpu failed" in r.getMessage()]) == 1
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_subscribers_get_each_snapshot_and_a_lost_gpu_once() -> None:
    just_lost = GpuSnapshot(**{**LOST.__dict__, "just_lost": True})
    seen: list[Snapshot] = []
    lost: list[GpuSnapshot] = []

    def failing_subscriber(snapshot: Snapshot) -> None:
        seen.append(snapshot)
        raise ValueError("alert engine bug")

    sampler, points = make_sampler(
        StubGpus((H100, just_lost), (H100, LOST)), on_snapshot=failing_subscriber, on_gpu_lost=lost.append
    )

    sampler.tick()
    sampler.tick()

    assert len(seen) == 2
    assert lost == [just_lost]
    assert len(points) == 6  # the subscriber's failure did not stop the writes
    assert sampler.health()["errors_by_stage"] == {"on_snapshot": 2}


def test_health_reports_the_last_sample_and_its_lag() -> None:
    now = [100.0]
    sampler, _ = make_sampler(clock=lambda: now[0])
    assert sampler.health()["last_sample_time_s"] is None

    sampler.tick()
    now[0] += 3.0
    health = sampler.health()

    assert health["last_sample_time_s"] == 1_700_000_000.0
    assert health["lag_s"] == pytest.approx(3.0)
    assert health["gpu_count"] == 1
    assert health["gpus_up"] == 1
    assert health["nvml_available"] is True
    assert health["last_tick_duration_s"] == 0.0


class SlowGpus(StubGpus):
    """A GPU reader whose reads block until released, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def read(self) -> tuple[GpuSnapshot, ...]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(10)
            return super().read()
        finally:
            with self._lock:
                self.running -= 1


def test_an_overrunning_tick_is_counted_never_stacked() -> None:
    gpus = SlowGpus()
    points: list[Point] = []
    sampler = Sampler(interval_s=0.02, host_name="h1", write=points.extend, gpus=gpus, host=StubHost())
    sampler.start()
    try:
        wait_for(lambda: sampler.health()["overruns_total"] >= 2)
        assert gpus.most_at_once == 1
        assert sampler.health()["running"]
    finally:
        gpus.release.set()
        sampler.shutdown()
    assert gpus.most_at_once == 1
    assert gpus.shut
    assert sampler.health()["ticks_total"] >= 1
    assert not sampler.health()["running"]


def test_a_started_sampler_ticks_on_its_interval() -> None:
    points: list[Point] = []
    sampler = Sampler(interval_s=0.02, host_name="h1", write=points.extend, gpus=StubGpus(), host=StubHost())
    sampler.start()
    try:
        wait_for(lambda: sampler.health()["ticks_total"] >= 3)
    finally:
        sampler.shutdown()
    assert sampler.health()["overruns_total"] == 0
    assert len(points) >= 6


# ----- GeneratorPidProvider ------------------------------------------------------------------------------


class FakeFetch:
    """Answers the generator's /health with a queue of bodies or errors."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []

    def __call__(self, url: str, timeout_s: float) -> Any:
        self.urls.append(url)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_pid_is_cached_and_refreshed_on_its_slow_cadence() -> None:
    now = [0.0]
    fetch = FakeFetch({"pid": 11}, {"pid": 12})
    provider = GeneratorPidProvider(
        "http://gen:7860/", refresh_s=30, fetch=fetch, pid_alive=lambda pid: True, clock=lambda: now[0]
    )

    assert provider() is None  # the first call starts a refresh in the background and does not wait
    wait_for(lambda: provider() == 11)
    assert fetch.urls == ["http://gen:7860/health"]
    now[0] = 10.0
    assert provider() == 11  # not due: no request
    assert len(fetch.urls) == 1
    now[0] = 31.0
    provider()
    wait_for(lambda: provider() == 12)
    assert len(fetch.urls) == 2


def test_a_dead_generator_gives_none_and_an_early_refresh() -> None:
    now = [0.0]
    alive = {21: True}
    fetch = FakeFetch({"pid": 21}, ConnectionRefusedError("down"), {"pid": 22})
    provider = GeneratorPidProvider(
        "http://gen:7860",
        refresh_s=30,
        retry_s=2,
        fetch=fetch,
        pid_alive=lambda p: alive.get(p, True),
        clock=lambda: now[0],
    )
    assert provider.refresh() == 21

    alive[21] = False
    now[0] = 5.0
    assert provider() is None  # gone: None at once, and a refresh starts early (not at 30 s)
    wait_for(lambda: len(fetch.urls) == 2)  # ... which fails: retried after retry_s
    wait_for(lambda: not provider._in_flight)
    now[0] = 7.5
    provider()
    wait_for(lambda: provider() == 22)


def test_no_generator_url_means_no_pid() -> None:
    assert GeneratorPidProvider(None)() is None


@pytest.fixture
def generator_health() -> Iterator[str]:
    """Serve a generator-like /health on a loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_pid_comes_from_the_generators_health_over_http(generator_health: str) -> None:
    provider = GeneratorPidProvider(generator_health)

    assert provider.refresh() == os.getpid()
    assert provider() == os.getpid()


def test_an_unreachable_generator_is_none_quickly() -> None:
    provider = GeneratorPidProvider("http://127.0.0.1:9", timeout_s=0.2)  # the discard port: nothing listens

    started = time.monotonic()
    assert provider.refresh() is None
    assert time.monotonic() - started < 1.0
