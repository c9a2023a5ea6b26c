"""Sample GPUs and host on a schedule, turn each tick into store points, and keep the sampler's health.

The runner owns the loop: the readers raise nothing for the conditions they know (an unsupported
field, a lost GPU, a dead generator process); anything else is caught here, at the tick boundary, counted,
logged once while it recurs, and the next tick goes on.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from monitor.collection import xid as xid_catalogue
from monitor.collection.host import HostReader, HostSnapshot
from monitor.collection.nvml import CallStats, GpuSnapshot, NvmlReader
from monitor.storage.base import FieldValue, Point

log = logging.getLogger(__name__)

GPU_MEASUREMENT = "gpu_sample"
HOST_MEASUREMENT = "host_sample"
XID_MEASUREMENT = "gpu_xid"


class GpuReader(Protocol):
    """What the sampler needs from the GPU side (NvmlReader in production)."""

    @property
    def available(self) -> bool:
        """Return whether GPUs can be read."""
        ...

    @property
    def reason(self) -> str | None:
        """Say why GPUs cannot be read."""
        ...

    @property
    def driver_version(self) -> str | None:
        """Return the GPU driver's version, when known."""
        ...

    def read(self) -> tuple[GpuSnapshot, ...]:
        """Snapshot every GPU."""
        ...

    def call_stats(self) -> Mapping[str, CallStats]:
        """Return the cost of each NVML function."""
        ...

    def error_counts(self) -> Mapping[tuple[str, str], int]:
        """Return NVML errors by (function, error)."""
        ...

    def shutdown(self) -> None:
        """Release NVML."""
        ...


class HostSampler(Protocol):
    """What the sampler needs from the host side (HostReader in production)."""

    def read(self, generator_pid: int | None = None) -> HostSnapshot:
        """Snapshot the host."""
        ...


@dataclass(frozen=True)
class Snapshot:
    """Everything one tick saw: every GPU, the host, and whether NVML could be read."""

    time_ns: int
    host_name: str
    gpus: tuple[GpuSnapshot, ...]
    host: HostSnapshot | None
    generator_pid: int | None
    nvml_available: bool
    nvml_reason: str | None
    driver_version: str | None = None


def _without_none(fields: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
    return {key: value for key, value in fields.items() if value is not None}


def gpu_tags(gpu: GpuSnapshot, host_name: str) -> dict[str, str]:
    """Return a GPU's tags: host, index and (when known) UUID, which follows the card when its index changes.

    One UUID per card is a handful of series per host: low cardinality, as InfluxDB's tags must be.
    """
    tags = {"host": host_name, "gpu": str(gpu.index)}
    if gpu.uuid:
        tags["uuid"] = gpu.uuid
    return tags


def process_utilization(gpu: GpuSnapshot, generator_pid: int | None) -> tuple[float | None, float | None]:
    """Split a GPU's per-process SM share into (the generator's, every other process's), each 0 to 1.

    Both are None when NVML cannot give per-process utilisation or the generator's PID is unknown (every
    process would then look foreign).
    """
    if gpu.process_utilization is None or generator_pid is None:
        return None, None
    ours = sum(p.sm_ratio for p in gpu.process_utilization if p.pid == generator_pid)
    theirs = sum(p.sm_ratio for p in gpu.process_utilization if p.pid != generator_pid)
    return min(1.0, ours), min(1.0, theirs)


def gpu_point(gpu: GpuSnapshot, *, host_name: str, generator_pid: int | None, time_ns: int) -> Point:
    """Turn one GPU snapshot into a `gpu_sample` point; fields NVML could not give are left out.

    Counters (energy, and the health counters: retired pages, remapped rows, PCIe replays, throttle time) are
    written only on the tick that read them: a counter's deltas must be paired with the time it was read, so
    repeating a carried value would put its whole increase into one later interval.
    """
    generator_memory: int | None = None
    other_memory: int | None = None
    if gpu.processes is not None:
        ours = [p.used_memory_bytes or 0 for p in gpu.processes if p.pid == generator_pid]
        theirs = [p.used_memory_bytes or 0 for p in gpu.processes if p.pid != generator_pid]
        generator_memory = sum(ours) if generator_pid is not None else None
        other_memory = sum(theirs)
    generator_sm, other_sm = process_utilization(gpu, generator_pid)
    fresh_health = gpu.health_age_s == 0
    return Point(
        measurement=GPU_MEASUREMENT,
        tags=gpu_tags(gpu, host_name),
        fields=_without_none(
            {
                "name": gpu.name or None,
                "pci_bus_id": gpu.pci_bus_id,
                "up": gpu.up,
                "utilization_ratio": gpu.utilization_ratio,
                "memory_used_bytes": gpu.memory_used_bytes,
                "memory_total_bytes": gpu.memory_total_bytes,
                "temperature_c": gpu.temperature_c,
                "power_w": gpu.power_w,
                "sm_clock_mhz": gpu.sm_clock_mhz,
                "throttle_reasons": gpu.throttle_reasons,
                "ecc_errors_corrected": gpu.ecc_errors_corrected,
                "ecc_errors_uncorrected": gpu.ecc_errors_uncorrected,
                "energy_j": gpu.energy_j if gpu.energy_age_s == 0 else None,
                "generator_memory_bytes": generator_memory,
                "other_processes_memory_bytes": other_memory,
                "process_count": None if gpu.processes is None else len(gpu.processes),
                "generator_utilization_ratio": generator_sm,
                "other_processes_utilization_ratio": other_sm,
                **(_health_fields(gpu) if fresh_health else {}),
                "xid_errors_total": gpu.xid_total,
            }
        ),
        time_ns=time_ns,
    )


def _health_fields(gpu: GpuSnapshot) -> dict[str, FieldValue]:
    return {
        "retired_pages_sbe": gpu.retired_pages_sbe,
        "retired_pages_dbe": gpu.retired_pages_dbe,
        "retired_pages_pending": gpu.retired_pages_pending,
        "remapped_rows_correctable": gpu.remapped_rows_correctable,
        "remapped_rows_uncorrectable": gpu.remapped_rows_uncorrectable,
        "remapped_rows_pending": gpu.remapped_rows_pending,
        "remapped_rows_failed": gpu.remapped_rows_failed,
        "pcie_replay_total": gpu.pcie_replay_total,
        "power_throttle_s": gpu.power_throttle_s,
        "thermal_throttle_s": gpu.thermal_throttle_s,
    }


def xid_points(gpu: GpuSnapshot, *, host_name: str) -> list[Point]:
    """Turn the Xids a GPU reported since the last tick into `gpu_xid` points, one each, at the time heard.

    Two Xids heard in one nanosecond would be one point: each later one is moved a nanosecond on.
    """
    points: list[Point] = []
    last_ns: int | None = None
    for event in gpu.xid_events:
        time_ns = event.time_ns if last_ns is None or event.time_ns > last_ns else last_ns + 1
        last_ns = time_ns
        fields: dict[str, FieldValue] = {
            "xid": event.xid,
            "reset_required": xid_catalogue.reset_required(event.xid),
            "tier": xid_catalogue.tier(event.xid),
        }
        points.append(Point(XID_MEASUREMENT, gpu_tags(gpu, host_name), fields, time_ns))
    return points


def host_point(host: HostSnapshot, *, host_name: str, time_ns: int) -> Point:
    """Turn one host snapshot into a `host_sample` point; readings that failed are left out."""
    return Point(
        measurement=HOST_MEASUREMENT,
        tags={"host": host_name},
        fields=_without_none(
            {
                "cpu_ratio": host.cpu_ratio,
                "memory_used_bytes": host.memory_used_bytes,
                "memory_total_bytes": host.memory_total_bytes,
                "generator_rss_bytes": host.generator_rss_bytes,
                "outputs_disk_free_bytes": host.outputs_disk_free_bytes,
            }
        ),
        time_ns=time_ns,
    )


def snapshot_points(snapshot: Snapshot) -> list[Point]:
    """Turn one tick's snapshot into its store points: one per GPU, one per Xid heard, one for the host."""
    points = [
        gpu_point(g, host_name=snapshot.host_name, generator_pid=snapshot.generator_pid, time_ns=snapshot.time_ns)
        for g in snapshot.gpus
    ]
    for gpu in snapshot.gpus:
        points += xid_points(gpu, host_name=snapshot.host_name)
    if snapshot.host is not None:
        points.append(host_point(snapshot.host, host_name=snapshot.host_name, time_ns=snapshot.time_ns))
    return points


class Sampler:
    """Sample every `interval_s` seconds on APScheduler; `tick()` takes one sample synchronously.

    An overrunning tick is never stacked: the job runs with `max_instances=1` and `coalesce=True`, and each
    run the scheduler skips or misses for it is counted in `overruns_total`.

    Args:
        interval_s: seconds between ticks.
        host_name: the `host` tag of every point.
        write: takes each tick's points (the store's batching writer).
        gpus: the GPU reader (default: NvmlReader on the real pynvml). `shutdown()` shuts it down.
        host: the host reader (default: HostReader with no outputs folder).
        generator_pid: returns the generator's PID or None; called every tick, so it must be cheap
            (GeneratorPidProvider caches it).
        clock: monotonic seconds, for durations and lag.
        wall_clock: nanoseconds since the epoch, for point times.
        on_snapshot: called with each tick's Snapshot (the alert engine's seam).
        on_gpu_lost: called with a GPU's snapshot on the tick it was found gone.
    """

    def __init__(
        self,
        *,
        interval_s: float,
        host_name: str,
        write: Callable[[Sequence[Point]], None],
        gpus: GpuReader | None = None,
        host: HostSampler | None = None,
        generator_pid: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        on_gpu_lost: Callable[[GpuSnapshot], None] | None = None,
        thread_time: Callable[[], float] = time.thread_time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.host_name = host_name
        self._write = write
        self._gpus: GpuReader = gpus if gpus is not None else NvmlReader()
        self._host: HostSampler = host if host is not None else HostReader()
        self._generator_pid = generator_pid
        self._clock = clock
        self._wall_clock = wall_clock
        self._thread_time = thread_time
        self._on_snapshot = on_snapshot
        self._on_gpu_lost = on_gpu_lost
        self._tick_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._scheduler: Any = None
        self._latest: Snapshot | None = None
        self._ticks_total = 0
        self._overruns_total = 0
        self._errors: dict[str, int] = {}
        self._failing: dict[str, str] = {}
        self._duration_sum_s = 0.0
        self._cpu_sum_s = 0.0
        self._last_duration_s: float | None = None
        self._last_cpu_s: float | None = None
        self._last_success_wall_ns: int | None = None
        self._last_success_mono: float | None = None

    # ----- one tick --------------------------------------------------------------------------------------

    @property
    def latest(self) -> Snapshot | None:
        """Return the last tick's snapshot (None before the first)."""
        return self._latest

    def _guarded(self, stage: str, func: Callable[[], Any]) -> tuple[bool, Any]:
        """Run one stage of a tick; on any error count it, log it once while it recurs, and go on."""
        try:
            result = func()
        except Exception as err:  # the tick boundary: one stage failing must not stop sampling
            message = f"{type(err).__name__}: {err}"
            with self._state_lock:
                self._errors[stage] = self._errors.get(stage, 0) + 1
                repeated = self._failing.get(stage) == message
                self._failing[stage] = message
            if not repeated:
                log.exception("sampler %s failed (logged once while it recurs; the tick goes on)", stage)
            return False, None
        if stage in self._failing:
            with self._state_lock:
                self._failing.pop(stage, None)
            log.warning("sampler %s works again", stage)
        return True, result

    def tick(self) -> Snapshot:
        """Take one sample of every GPU and the host, write its points, and tell the subscribers."""
        with self._tick_lock:
            started, cpu_started = self._clock(), self._thread_time()
            time_ns = self._wall_clock()
            gpus_ok, read = self._guarded(
                "gpu",
                lambda: (
                    self._gpus.read(),
                    self._gpus.available,
                    self._gpus.reason,
                    getattr(self._gpus, "driver_version", None),
                ),
            )
            gpus, nvml_available, nvml_reason, driver = read if gpus_ok else ((), False, "the GPU reader failed", None)
            _, pid = self._guarded("generator_pid", self._generator_pid)
            _, host = self._guarded("host", lambda: self._host.read(pid))
            snapshot = Snapshot(
                time_ns=time_ns,
                host_name=self.host_name,
                gpus=gpus,
                host=host,
                generator_pid=pid,
                nvml_available=nvml_available,
                nvml_reason=nvml_reason,
                driver_version=driver,
            )
            self._latest = snapshot
            written, _ = self._guarded("write", lambda: self._write(snapshot_points(snapshot)))
            lost_hook, snapshot_hook = self._on_gpu_lost, self._on_snapshot
            for gpu in snapshot.gpus:
                if gpu.just_lost and lost_hook is not None:
                    self._guarded("on_gpu_lost", functools.partial(lost_hook, gpu))
            if snapshot_hook is not None:
                self._guarded("on_snapshot", lambda: snapshot_hook(snapshot))
            duration, cpu = self._clock() - started, self._thread_time() - cpu_started
            with self._state_lock:
                self._ticks_total += 1
                self._duration_sum_s += duration
                self._cpu_sum_s += cpu
                self._last_duration_s, self._last_cpu_s = duration, cpu
                if written and gpus_ok and host is not None:
                    self._last_success_wall_ns, self._last_success_mono = time_ns, self._clock()
            return snapshot

    # ----- schedule --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start ticking every `interval_s` in a background thread, the first tick now."""
        # Imported here: the GPU probe drives tick() by hand on machines without APScheduler.
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        if self._scheduler is not None:
            return
        scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone=UTC)
        scheduler.add_listener(self._count_overrun, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval_s,
            id="sampler",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(self.interval_s)),
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("sampling every %.3g s as host %s", self.interval_s, self.host_name)

    def _count_overrun(self, event: Any) -> None:
        with self._state_lock:
            self._overruns_total += 1
            first = self._overruns_total == 1
        if first:
            log.warning("a sampler tick overran its %.3g s interval; the next was skipped (counted)", self.interval_s)

    def shutdown(self) -> None:
        """Stop ticking (waiting for a tick in flight) and release NVML."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self._gpus.shutdown()

    # ----- health ----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Return the sampler's own health, JSON-ready (for /monitor/api/status and /metrics)."""
        with self._state_lock:
            last_ns, last_mono = self._last_success_wall_ns, self._last_success_mono
            latest = self._latest
            return {
                "running": self._scheduler is not None,
                "interval_s": self.interval_s,
                "ticks_total": self._ticks_total,
                "overruns_total": self._overruns_total,
                "errors_total": sum(self._errors.values()),
                "errors_by_stage": dict(self._errors),
                "tick_duration_sum_s": self._duration_sum_s,
                "tick_cpu_sum_s": self._cpu_sum_s,
                "last_tick_duration_s": self._last_duration_s,
                "last_tick_cpu_s": self._last_cpu_s,
                "last_sample_time_s": None if last_ns is None else last_ns / 1e9,
                "lag_s": None if last_mono is None else max(0.0, self._clock() - last_mono),
                "gpu_count": 0 if latest is None else len(latest.gpus),
                "gpus_up": 0 if latest is None else sum(g.up for g in latest.gpus),
                "nvml_available": None if latest is None else latest.nvml_available,
                "nvml_reason": None if latest is None else latest.nvml_reason,
            }

    def nvml_call_stats(self) -> Mapping[str, CallStats]:
        """Return what each NVML function has cost so far."""
        return self._gpus.call_stats()

    def nvml_error_counts(self) -> Mapping[tuple[str, str], int]:
        """Return NVML errors by (function, error)."""
        return self._gpus.error_counts()


class GeneratorPidProvider:
    """Return the generator's PID, learned from its `GET /health` JSON (`pid`), refreshed on a slow cadence.

    Calling it never waits on the network: a due refresh runs in a short-lived background thread (timeout
    `timeout_s`) and the call returns the cached PID. A refresh is also due soon after the cached process has
    died (the generator was restarted), so attribution comes back within about `retry_s`.

    NVML reports host PIDs. The generator's `/health` reports the PID in its own PID namespace, and psutil
    reads this process's namespace: when either runs in a container, both containers need the host's PID
    namespace (`pid: host` in docker-compose), or the generator's GPU memory and RSS cannot be attributed
    (or, worse, are attributed to whatever host process has that number).

    Args:
        generator_url: the generator's base URL (e.g. `http://127.0.0.1:7860`); None: always returns None.
        refresh_s: how often to ask again while the cached PID lives.
        retry_s: how soon to ask again after a failure or once the cached process is gone.
        timeout_s: the HTTP timeout.
        fetch: returns the parsed JSON of a URL with a timeout (default: urllib), for tests.
        pid_alive: returns whether a PID exists (default: psutil.pid_exists).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        generator_url: str | None,
        *,
        refresh_s: float = 30.0,
        retry_s: float = 2.0,
        timeout_s: float = 0.5,
        fetch: Callable[[str, float], Any] | None = None,
        pid_alive: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = None if not generator_url else generator_url.rstrip("/") + "/health"
        self.refresh_s, self.retry_s, self.timeout_s = refresh_s, retry_s, timeout_s
        self._fetch = fetch or _fetch_json
        if pid_alive is None:
            import psutil  # here, so the GPU probe can run where psutil is missing

            pid_alive = psutil.pid_exists
        self._pid_alive = pid_alive
        self._clock = clock
        self._pid: int | None = None
        self._next_refresh = float("-inf")
        self._lock = threading.Lock()
        self._in_flight = False
        self._last_error: str | None = None

    def __call__(self) -> int | None:
        """Return the cached PID (None if unknown or its process is gone); start a refresh when one is due."""
        if self.url is None:
            return None
        pid = self._pid
        alive = pid is not None and self._pid_alive(pid)
        with self._lock:
            now = self._clock()
            if not alive and pid is not None:
                self._next_refresh = min(self._next_refresh, now)
            start = now >= self._next_refresh and not self._in_flight
            if start:
                self._in_flight = True
                self._next_refresh = now + self.retry_s  # pushed back again by a successful refresh
        if start:
            threading.Thread(target=self._refresh_in_flight, name="generator-pid", daemon=True).start()
        return pid if alive else None

    def _refresh_in_flight(self) -> None:
        try:
            self.refresh()
        finally:
            with self._lock:
                self._in_flight = False

    def refresh(self) -> int | None:
        """Ask the generator for its PID now (blocking up to `timeout_s`) and return it."""
        if self.url is None:
            return None
        try:
            body = self._fetch(self.url, self.timeout_s)
            pid = int(body["pid"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            message = f"{type(err).__name__}: {err}"
            if message != self._last_error:
                log.info("generator PID unknown (%s from %s); retrying every %g s", message, self.url, self.retry_s)
            self._last_error = message
            with self._lock:
                self._next_refresh = self._clock() + self.retry_s
            return None
        with self._lock:
            if pid != self._pid:
                log.info("generator PID is %d", pid)
            self._pid, self._last_error = pid, None
            self._next_refresh = self._clock() + self.refresh_s
        return pid


def _fetch_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())
