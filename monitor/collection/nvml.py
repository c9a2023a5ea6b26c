"""Read every GPU through NVML, the only module that talks to it, into one typed snapshot per GPU per tick.

Modelled on nvitop's `libnvml`: NVML is initialised lazily under a lock and shut down at exit; device handles
are made once; `NvmlReader.query` turns "not supported", "no permission" and "function not found" into None
(a function missing from the driver, or a field a card lacks, is reported once and not asked again); a GPU
that falls off the bus (`GPU is lost`, `Unknown Error`, ...) yields an `up=False` snapshot and sampling
goes on.
With no NVML library, no driver or no GPU the reader says so once (`available=False` with the reason) and
returns no snapshots, so the caller keeps sampling the host.

Besides load, each snapshot carries the card's identity (UUID, PCI bus id: an index changes when cards move
between slots, these do not) and its health: retired pages (before Ampere) or remapped rows (Ampere and
later), the PCIe replay counter, the time throttled for power and for heat (NVML's violation counters), and
each process's share of the SM (so a foreign process competing with the generator shows). Xid errors arrive
through NVML's event API: a listener thread waits on an event set with a short timeout and hands every Xid
to the next snapshot of its GPU. A field a card or driver lacks is None, never 0.

NVML calls differ in cost by three orders of magnitude (on an H100: most 1-8 us, per-process enumeration
7-40 us, the total-energy counter 3 ms median and 15-18 ms p99; per-process enumeration 4.5 ms on other
drivers, holding the driver's lock against the workload). So per-process enumeration, the energy counter and
the health counters run on their own, slower cadences and their last values are carried with their age, and
every call's cost is measured (`call_stats`) for the monitor's own metrics.

The NVML module is an argument (default: the real `pynvml`, imported on first use) so tests pass a small
fake that replays recorded answers; the real path is proven on a GPU by `bench/nvml_probe.py`.
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import importlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

from monitor.collection import xid as xid_catalogue

log = logging.getLogger(__name__)

# NVML return codes (nvml.h); stable across driver versions.
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_FUNCTION_NOT_FOUND = 13
_NOT_FOUND = 6
_TIMEOUT = 10
_ARGUMENT_VERSION_MISMATCH = 25
_DEPRECATED = 26
#: Codes after which the same question to the same GPU will never be answered: not asked again.
_PERMANENT_CODES = frozenset(
    {_NOT_SUPPORTED, _NO_PERMISSION, _FUNCTION_NOT_FOUND, _ARGUMENT_VERSION_MISMATCH, _DEPRECATED}
)
#: Codes that mean the GPU (or the driver under it) is gone: uninitialized, driver not loaded, GPU is lost,
#: reset required, RM version mismatch (driver upgraded underneath), GPU not found, unknown error.
_LOST_CODES = frozenset({1, 9, 15, 16, 18, 28, 999})

#: Throttle ("clocks event") reason bits, from nvml.h, in bit order.
THROTTLE_REASONS: Mapping[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

#: NVML's event type for Xid errors (nvml.h `nvmlEventTypeXidCriticalError`).
XID_EVENT_TYPE = 0x8
#: How many Xids a GPU keeps for its next snapshot; beyond it the oldest go (still counted in `xid_total`).
XID_BACKLOG = 256

#: Upper bounds (seconds) of the call-duration histogram: from a 1-8 us call to a 15 ms energy read, and past.
DURATION_BUCKETS_S: tuple[float, ...] = (5e-6, 25e-6, 100e-6, 500e-6, 2.5e-3, 10e-3, 50e-3, 250e-3)


# Each tuple: the function to ask, then the older one to fall back on where the driver lacks it.
_THROTTLE_FUNCS = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
_COMPUTE_PROCESS_FUNCS = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")
_GRAPHICS_PROCESS_FUNCS = (
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
)
#: Functions whose later arguments change every call (a "since" timestamp): what a GPU never answers is
#: remembered by the function alone.
_UNKEYED_ARGUMENTS = frozenset({"nvmlDeviceGetProcessUtilization"})
# nvml.h's nvmlPageRetirementCause_t and nvmlPerfPolicyType_t values.
_RETIRED_BY_SBE, _RETIRED_BY_DBE = 0, 1
_POLICY_POWER, _POLICY_THERMAL = 0, 1


class GpuLost(Exception):
    """The GPU stopped answering (fell off the bus, needs a reset, or its driver went away)."""


class _NotAnswered(Exception):
    """NVML did not answer this question; `permanent` when asking again would not help."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class GpuProcess(NamedTuple):
    """One process holding memory on a GPU; `pid` is in the host's PID namespace."""

    pid: int
    used_memory_bytes: int | None


class GpuProcessUtilization(NamedTuple):
    """One process's share of a GPU since the last read: SM and memory-controller busy, 0 to 1."""

    pid: int
    sm_ratio: float
    memory_ratio: float | None


class XidEvent(NamedTuple):
    """One Xid error NVML reported for a GPU, with the wall-clock time it was heard."""

    xid: int
    time_ns: int


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one tick. Every reading is None when the card or driver cannot give it.

    `processes`, `process_utilization`, `energy_j` and the health counters (`health_age_s`) come from slow
    cadences: they are the last values read, `*_age_s` seconds old (0.0 on the tick that read them).
    `just_lost` is True only on the tick the GPU was found gone. `xid_events` are the Xids heard since the
    last snapshot; `xid_total` counts every Xid heard since the monitor started (None: this GPU cannot report
    them, or the listener is off) and `xid_counts` splits it by code, (xid, count) in code order.
    """

    index: int
    uuid: str
    name: str
    up: bool
    pci_bus_id: str | None = None
    utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    sm_clock_mhz: int | None = None
    throttle_reasons: int | None = None
    ecc_errors_corrected: int | None = None
    ecc_errors_uncorrected: int | None = None
    energy_j: float | None = None
    energy_age_s: float | None = None
    processes: tuple[GpuProcess, ...] | None = None
    processes_age_s: float | None = None
    process_utilization: tuple[GpuProcessUtilization, ...] | None = None
    process_utilization_age_s: float | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failed: bool | None = None
    pcie_replay_total: int | None = None
    power_throttle_s: float | None = None
    thermal_throttle_s: float | None = None
    health_age_s: float | None = None
    xid_events: tuple[XidEvent, ...] = ()
    xid_total: int | None = None
    xid_counts: tuple[tuple[int, int], ...] = ()
    just_lost: bool = False
    lost_reason: str | None = None

    @property
    def throttle_reason_names(self) -> tuple[str, ...]:
        """Name the throttle reasons set in the bitmask (empty when none or unknown)."""
        if not self.throttle_reasons:
            return ()
        return tuple(name for bit, name in THROTTLE_REASONS.items() if self.throttle_reasons & bit)


@dataclass(frozen=True)
class CallStats:
    """What one NVML function has cost so far: calls, total and longest seconds, per-bucket counts."""

    count: int
    total_s: float
    max_s: float
    bucket_counts: tuple[int, ...]  # one per DURATION_BUCKETS_S bound, then one for +Inf; not cumulative


@dataclass
class _CallAccumulator:
    count: int = 0
    total_ns: int = 0
    max_ns: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))

    def add(self, duration_ns: int) -> None:
        self.count += 1
        self.total_ns += duration_ns
        self.max_ns = max(self.max_ns, duration_ns)
        self.buckets[bisect.bisect_left(DURATION_BUCKETS_S, duration_ns / 1e9)] += 1


@dataclass(frozen=True)
class GpuHealth:
    """The slow-changing health counters of one GPU, read together on the health cadence."""

    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failed: bool | None = None
    pcie_replay_total: int | None = None
    power_throttle_s: float | None = None
    thermal_throttle_s: float | None = None


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str
    name: str
    pci_bus_id: str | None = None
    lost_reason: str | None = None
    unanswered: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    energy_j: float | None = None
    energy_read_at: float | None = None  # when the carried value was read
    energy_tried_at: float | None = None  # when it was last asked (the cadence)
    processes: tuple[GpuProcess, ...] | None = None
    processes_read_at: float | None = None
    processes_tried_at: float | None = None
    utilization: tuple[GpuProcessUtilization, ...] | None = None
    utilization_read_at: float | None = None
    utilization_seen_us: int = 0  # NVML's timestamp of the newest per-process sample read
    health: GpuHealth | None = None
    health_read_at: float | None = None
    health_tried_at: float | None = None
    xid_registered: bool = False
    xid_total: int = 0
    xid_counts: dict[int, int] = field(default_factory=dict)
    xid_pending: deque[XidEvent] = field(default_factory=lambda: deque(maxlen=XID_BACKLOG))


def real_nvml() -> ModuleType:
    """Import the real NVML bindings (`pynvml` from nvidia-ml-py); raise ImportError when not installed."""
    return importlib.import_module("pynvml")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _handle_key(handle: Any) -> Any:
    """Return what identifies a device handle: its address for pynvml's ctypes pointers, else the handle."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle


def _due(read_at: float | None, now: float, interval_s: float) -> bool:
    # 10% slack so a tick that fires a hair early does not push the read a whole tick later.
    return read_at is None or now - read_at >= interval_s * 0.9


class NvmlReader:
    """Read all GPUs through NVML, one `GpuSnapshot` each per `read()`.

    Args:
        nvml: the NVML module (default: `pynvml`, imported on first use).
        processes_interval_s: how often to enumerate the processes on each GPU (their memory and SM share).
        energy_interval_s: how often to read the total-energy counter.
        health_interval_s: how often to read the health counters (retired pages, remapped rows, PCIe
            replays, throttle time): they change rarely and some cost two driver calls.
        rediscover_interval_s: how often to look again at a GPU that was lost (back, or replaced).
        xid_events: register every GPU for Xid events.
        xid_thread: listen for them in a thread (without it the caller polls with `poll_xid`).
        xid_wait_ms: how long one wait on the event set may block; also how long shutdown may wait for it.
        clock: monotonic seconds, for the slow cadences and the age of carried values.
        wall_clock_ns: nanoseconds since the epoch, the time an Xid was heard.
        perf_counter_ns: the timer around each NVML call.
    """

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        *,
        processes_interval_s: float = 5.0,
        energy_interval_s: float = 10.0,
        health_interval_s: float = 10.0,
        rediscover_interval_s: float = 30.0,
        xid_events: bool = True,
        xid_thread: bool = True,
        xid_wait_ms: int = 500,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        perf_counter_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._nvml_arg = nvml
        self._nvml: Any = None
        self.processes_interval_s = processes_interval_s
        self.energy_interval_s = energy_interval_s
        self.health_interval_s = health_interval_s
        self.rediscover_interval_s = rediscover_interval_s
        self._xid_wanted = xid_events
        self._xid_thread_wanted = xid_thread
        self.xid_wait_ms = xid_wait_ms
        self._event_set: Any = None
        self._xid_thread: threading.Thread | None = None
        self._xid_stop = threading.Event()
        self._xid_lock = threading.Lock()
        self._wall_clock_ns = wall_clock_ns
        self._clock = clock
        self._perf_counter_ns = perf_counter_ns
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._initialised = False
        self._available = False
        self._reason: str | None = None
        self._driver_version: str | None = None
        self._devices: list[_Device] = []
        self._missing_functions: set[str] = set()
        self._said: set[tuple[Any, ...]] = set()
        self._calls: dict[str, _CallAccumulator] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._rediscovered_at: float | None = None
        self._lost_errors: tuple[type[BaseException], ...] = ()
        self._started = False

    # ----- state -----------------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Return whether NVML started and found at least one GPU (starting it on first use)."""
        self._ensure_init()
        return self._available

    @property
    def reason(self) -> str | None:
        """Say why NVML is not available (None when it is)."""
        self._ensure_init()
        return self._reason

    @property
    def driver_version(self) -> str | None:
        """Return the driver's version string, when NVML gave it."""
        self._ensure_init()
        return self._driver_version

    def call_stats(self) -> dict[str, CallStats]:
        """Return the cost of each NVML function called so far, by function name."""
        with self._stats_lock:
            return {
                name: CallStats(acc.count, acc.total_ns / 1e9, acc.max_ns / 1e9, tuple(acc.buckets))
                for name, acc in self._calls.items()
            }

    def error_counts(self) -> dict[tuple[str, str], int]:
        """Return how many times each (function name, error name) happened."""
        with self._stats_lock:
            return dict(self._errors)

    # ----- life cycle ------------------------------------------------------------------------------------

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        with self._lock:
            if self._initialised:
                return
            self._initialised = True
            self._init()

    def _unavailable(self, reason: str) -> None:
        self._available = False
        self._reason = reason
        log.warning("GPU sampling off: %s; sampling the host only", reason)

    def _init(self) -> None:
        if self._nvml_arg is not None:
            nvml = self._nvml_arg
        else:
            try:
                nvml = real_nvml()
            except ImportError:
                self._unavailable("the NVML bindings (nvidia-ml-py) are not installed")
                return
        self._nvml = nvml
        lost = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._lost_errors = (lost,) if isinstance(lost, type) else ()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            self._unavailable(f"NVML did not start: {err}")
            return
        self._started = True
        atexit.register(self.shutdown)
        try:
            count = int(self._call(nvml.nvmlDeviceGetCount))
        except (GpuLost, _NotAnswered) as err:
            self._unavailable(f"NVML could not count the GPUs: {err}")
            return
        if count == 0:
            self._unavailable("NVML found no GPU")
            return
        version = self.query(nvml.nvmlSystemGetDriverVersion)
        self._driver_version = None if version is None else _text(version)
        self._devices = [self._open(index) for index in range(count)]
        self._available = True
        self._reason = None
        log.info(
            "NVML %s: %s",
            self._driver_version or "(driver version unknown)",
            ", ".join(f"GPU {d.index} {d.name} {d.uuid} at {d.pci_bus_id or '?'}" for d in self._devices),
        )
        if self._xid_wanted:
            self._listen_for_xids()

    def _open(self, index: int) -> _Device:
        nvml = self._nvml
        try:
            handle = self._call(nvml.nvmlDeviceGetHandleByIndex, index)
            uuid = _text(self._call(nvml.nvmlDeviceGetUUID, handle))
        except (GpuLost, _NotAnswered) as err:
            log.warning("GPU %d cannot be opened: %s", index, err)
            return _Device(index, None, "", "", lost_reason=str(err))
        name = self.query(nvml.nvmlDeviceGetName, handle)
        device = _Device(index, handle, uuid, "" if name is None else _text(name))
        pci = self._ask(device, "nvmlDeviceGetPciInfo")
        bus_id = None if pci is None else getattr(pci, "busId", None)
        device.pci_bus_id = None if bus_id is None else _text(bus_id)
        return device

    def shutdown(self) -> None:
        """Stop the Xid listener and shut NVML down (once; safe to call again, and called at exit)."""
        self._xid_stop.set()
        thread = self._xid_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.xid_wait_ms / 1000 + 5)
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self._event_set is not None:
                try:
                    self._nvml.nvmlEventSetFree(self._event_set)
                except self._nvml.NVMLError as err:
                    log.debug("nvmlEventSetFree: %s", err)
                self._event_set = None
            if self._available:
                self._available, self._reason = False, "NVML was shut down"
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as err:
                log.debug("nvmlShutdown: %s", err)
            atexit.unregister(self.shutdown)

    # ----- calling NVML ----------------------------------------------------------------------------------

    def _count_error(self, name: str, error: str) -> None:
        with self._stats_lock:
            self._errors[(name, error)] = self._errors.get((name, error), 0) + 1

    def _say_once(self, key: tuple[Any, ...], level: int, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)

    def _call(self, func: Callable[..., Any], *args: Any, expected: frozenset[int] = frozenset()) -> Any:
        """Call one NVML function, timed; raise GpuLost or _NotAnswered for its errors.

        A code in `expected` is an answer, not an error (e.g. "not found": no sample since the last read):
        it raises _NotAnswered with its code and is neither counted nor logged.
        """
        name = getattr(func, "__name__", repr(func))
        if name in self._missing_functions:
            raise _NotAnswered(f"{name} is missing from the driver", permanent=True)
        started = self._perf_counter_ns()
        try:
            value = func(*args)
        except self._nvml.NVMLError as err:
            error, code = type(err).__name__.removeprefix("NVMLError_"), getattr(err, "value", None)
            if error == "NVMLError":
                error = f"Code{code}"
            self._timed(name, started)
            if code in expected:
                raise _NotAnswered(f"{name}: {err}", permanent=False, code=code) from None
            self._count_error(name, error)
            if code in _LOST_CODES:
                raise GpuLost(f"{name}: {err}") from None
            if code == _FUNCTION_NOT_FOUND:
                self._missing_functions.add(name)
                log.info("NVML function %s is missing from this driver; its field stays empty", name)
            elif code not in _PERMANENT_CODES:
                self._say_once((name, error), logging.WARNING, "NVML %s failed: %s (said once)", name, err)
            raise _NotAnswered(f"{name}: {err}", permanent=code in _PERMANENT_CODES, code=code) from None
        except self._lost_errors as err:  # pynvml's "unversioned function missing from this NVML library"
            self._timed(name, started)
            self._count_error(name, "LibraryMismatch")
            self._missing_functions.add(name)
            log.info("NVML function %s does not match this driver (%s); its field stays empty", name, err)
            raise _NotAnswered(f"{name}: {err}", permanent=True) from None
        self._timed(name, started)
        return value

    def _timed(self, name: str, started_ns: int) -> None:
        elapsed = self._perf_counter_ns() - started_ns
        with self._stats_lock:
            acc = self._calls.get(name)
            if acc is None:
                acc = self._calls[name] = _CallAccumulator()
            acc.add(elapsed)

    def query(self, func: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Call `func(*args)`; return `default` when NVML cannot answer; raise GpuLost if the GPU is gone."""
        try:
            return self._call(func, *args)
        except _NotAnswered:
            return default

    def _ask(
        self, device: _Device, names: str | tuple[str, ...], *args: Any, expected: frozenset[int] = frozenset()
    ) -> Any:
        """Ask the first of the functions `names` this GPU answers; remember what it will never answer.

        Returns None when unanswered; raises _NotAnswered for a code in `expected` (the caller's answer).
        """
        for name in (names,) if isinstance(names, str) else names:
            key = (name, () if name in _UNKEYED_ARGUMENTS else args)
            func = getattr(self._nvml, name, None)
            if key in device.unanswered or func is None:
                continue
            try:
                return self._call(func, device.handle, *args, expected=expected)
            except _NotAnswered as err:
                if err.code in expected:
                    raise
                if not err.permanent:
                    return None
                device.unanswered.add(key)
                self._say_once(
                    ("unanswered", device.uuid, key),
                    logging.INFO,
                    "GPU %d does not answer %s; that field stays empty",
                    device.index,
                    err,
                )
        return None

    # ----- reading ---------------------------------------------------------------------------------------

    def read(self) -> tuple[GpuSnapshot, ...]:
        """Take one snapshot of every GPU (empty when NVML is not available). Never raises for NVML errors."""
        self._ensure_init()
        with self._lock:
            if not self._available:
                return ()
            now = self._clock()
            if any(d.lost_reason for d in self._devices) and _due(
                self._rediscovered_at, now, self.rediscover_interval_s
            ):
                self._rediscovered_at = now
                self._rediscover()
            return tuple(self._read_device(device, now) for device in self._devices)

    def _rediscover(self) -> None:
        for position, device in enumerate(self._devices):
            if not device.lost_reason:
                continue
            fresh = self._open(device.index)
            if fresh.lost_reason:
                continue
            try:
                self._call(self._nvml.nvmlDeviceGetMemoryInfo, fresh.handle)
            except (GpuLost, _NotAnswered):
                continue
            if device.uuid and fresh.uuid != device.uuid:
                log.warning(
                    "GPU %d was replaced: %s is now %s (%s)",
                    device.index,
                    device.uuid,
                    fresh.uuid,
                    fresh.name,
                )
                self._devices[position] = fresh
                if self._event_set is not None:
                    self._register_xid(fresh)
            else:
                log.warning("GPU %d (%s) answers again", device.index, fresh.uuid)
                device.handle, device.lost_reason = fresh.handle, None
                device.uuid, device.name = fresh.uuid, fresh.name or device.name
                device.pci_bus_id = fresh.pci_bus_id or device.pci_bus_id
                if self._event_set is not None:
                    self._register_xid(device)
            self._said = {key for key in self._said if key[:2] != ("lost", device.index)}

    def _read_device(self, device: _Device, now: float) -> GpuSnapshot:
        xids, xid_counts = self._drain_xids(device)
        xid_total = device.xid_total if device.xid_registered else None
        if device.lost_reason:
            return GpuSnapshot(
                device.index,
                device.uuid,
                device.name,
                up=False,
                pci_bus_id=device.pci_bus_id,
                xid_events=xids,
                xid_total=xid_total,
                xid_counts=xid_counts,
                lost_reason=device.lost_reason,
            )
        nvml = self._nvml
        try:
            util = self._ask(device, "nvmlDeviceGetUtilizationRates")
            memory = self._ask(device, "nvmlDeviceGetMemoryInfo")
            temperature = self._ask(device, "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
            power_mw = self._ask(device, "nvmlDeviceGetPowerUsage")
            sm_clock = self._ask(device, "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
            throttle = self._ask(device, _THROTTLE_FUNCS)
            ecc = [
                self._ask(device, "nvmlDeviceGetTotalEccErrors", kind, nvml.NVML_VOLATILE_ECC)
                for kind in (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
            ]
            if _due(device.energy_tried_at, now, self.energy_interval_s):
                device.energy_tried_at = now
                energy_mj = self._ask(device, "nvmlDeviceGetTotalEnergyConsumption")
                if energy_mj is not None:
                    device.energy_j, device.energy_read_at = energy_mj / 1000.0, now
            if _due(device.processes_tried_at, now, self.processes_interval_s):
                device.processes_tried_at = now
                processes = self._processes(device)
                if processes is not None:
                    device.processes, device.processes_read_at = processes, now
                utilization = self._process_utilization(device)
                if utilization is not None:
                    device.utilization, device.utilization_read_at = utilization, now
            if _due(device.health_tried_at, now, self.health_interval_s):
                device.health_tried_at = now
                device.health, device.health_read_at = self._health(device), now
        except GpuLost as err:
            device.lost_reason = str(err)
            self._say_once(
                ("lost", device.index, device.uuid),
                logging.ERROR,
                "GPU %d (%s) is gone: %s; reporting it down and sampling on",
                device.index,
                device.uuid,
                err,
            )
            return GpuSnapshot(
                device.index,
                device.uuid,
                device.name,
                up=False,
                pci_bus_id=device.pci_bus_id,
                xid_events=xids,
                xid_total=xid_total,
                xid_counts=xid_counts,
                just_lost=True,
                lost_reason=device.lost_reason,
            )
        health = device.health or GpuHealth()
        return GpuSnapshot(
            device.index,
            device.uuid,
            device.name,
            up=True,
            pci_bus_id=device.pci_bus_id,
            utilization_ratio=None if util is None else util.gpu / 100.0,
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_c=None if temperature is None else float(temperature),
            power_w=None if power_mw is None else power_mw / 1000.0,
            sm_clock_mhz=None if sm_clock is None else int(sm_clock),
            throttle_reasons=None if throttle is None else int(throttle),
            ecc_errors_corrected=None if ecc[0] is None else int(ecc[0]),
            ecc_errors_uncorrected=None if ecc[1] is None else int(ecc[1]),
            energy_j=device.energy_j,
            energy_age_s=None if device.energy_read_at is None else now - device.energy_read_at,
            processes=device.processes,
            processes_age_s=None if device.processes_read_at is None else now - device.processes_read_at,
            process_utilization=device.utilization,
            process_utilization_age_s=None if device.utilization_read_at is None else now - device.utilization_read_at,
            retired_pages_sbe=health.retired_pages_sbe,
            retired_pages_dbe=health.retired_pages_dbe,
            retired_pages_pending=health.retired_pages_pending,
            remapped_rows_correctable=health.remapped_rows_correctable,
            remapped_rows_uncorrectable=health.remapped_rows_uncorrectable,
            remapped_rows_pending=health.remapped_rows_pending,
            remapped_rows_failed=health.remapped_rows_failed,
            pcie_replay_total=health.pcie_replay_total,
            power_throttle_s=health.power_throttle_s,
            thermal_throttle_s=health.thermal_throttle_s,
            health_age_s=None if device.health_read_at is None else now - device.health_read_at,
            xid_events=xids,
            xid_total=xid_total,
            xid_counts=xid_counts,
        )

    def _processes(self, device: _Device) -> tuple[GpuProcess, ...] | None:
        lists = [
            self._ask(device, _COMPUTE_PROCESS_FUNCS),
            self._ask(device, _GRAPHICS_PROCESS_FUNCS),
        ]
        if all(entries is None for entries in lists):
            return None
        # A process with both a compute and a graphics context is listed twice with the same memory.
        by_pid: dict[int, int | None] = {}
        for entries in lists:
            for entry in entries or ():
                pid, used = int(entry.pid), entry.usedGpuMemory
                previous = by_pid.get(pid)
                by_pid[pid] = used if previous is None else max(previous, used or 0)
        return tuple(GpuProcess(pid, None if used is None else int(used)) for pid, used in sorted(by_pid.items()))

    def _process_utilization(self, device: _Device) -> tuple[GpuProcessUtilization, ...] | None:
        """Read each process's SM and memory share since the last read (mean of NVML's samples per PID).

        NVML answers "not found" when no process ran since the given timestamp: that is an empty answer (no
        process busy), not a missing one.
        """
        try:
            samples = self._ask(
                device,
                "nvmlDeviceGetProcessUtilization",
                device.utilization_seen_us,
                expected=frozenset({_NOT_FOUND}),
            )
        except _NotAnswered:
            return ()
        if samples is None:
            return None
        sums: dict[int, list[float]] = {}
        for sample in samples:
            device.utilization_seen_us = max(device.utilization_seen_us, int(sample.timeStamp))
            entry = sums.setdefault(int(sample.pid), [0.0, 0.0, 0.0])
            entry[0] += float(sample.smUtil)
            entry[1] += float(sample.memUtil)
            entry[2] += 1
        return tuple(
            GpuProcessUtilization(pid, min(1.0, sm / count / 100.0), min(1.0, memory / count / 100.0))
            for pid, (sm, memory, count) in sorted(sums.items())
        )

    def _health(self, device: _Device) -> GpuHealth:
        """Read the health counters; each one the card lacks stays None."""
        sbe = self._ask(device, "nvmlDeviceGetRetiredPages", _RETIRED_BY_SBE)
        dbe = self._ask(device, "nvmlDeviceGetRetiredPages", _RETIRED_BY_DBE)
        pending = self._ask(device, "nvmlDeviceGetRetiredPagesPendingStatus")
        rows = self._ask(device, "nvmlDeviceGetRemappedRows")
        replays = self._ask(device, "nvmlDeviceGetPcieReplayCounter")
        power = self._ask(device, "nvmlDeviceGetViolationStatus", _POLICY_POWER)
        thermal = self._ask(device, "nvmlDeviceGetViolationStatus", _POLICY_THERMAL)
        correctable, uncorrectable, rows_pending, rows_failed = rows if rows is not None else (None,) * 4
        return GpuHealth(
            retired_pages_sbe=None if sbe is None else len(sbe),
            retired_pages_dbe=None if dbe is None else len(dbe),
            retired_pages_pending=None if pending is None else bool(pending),
            remapped_rows_correctable=None if correctable is None else int(correctable),
            remapped_rows_uncorrectable=None if uncorrectable is None else int(uncorrectable),
            remapped_rows_pending=None if rows_pending is None else bool(rows_pending),
            remapped_rows_failed=None if rows_failed is None else bool(rows_failed),
            pcie_replay_total=None if replays is None else int(replays),
            # violationTime is nanoseconds spent below the requested clocks for that reason since the driver loaded.
            power_throttle_s=None if power is None else int(power.violationTime) / 1e9,
            thermal_throttle_s=None if thermal is None else int(thermal.violationTime) / 1e9,
        )

    # ----- Xid events ------------------------------------------------------------------------------------

    @property
    def xid_listening(self) -> bool:
        """Return whether an event set exists with at least one GPU registered for Xid events."""
        return self._event_set is not None

    def _listen_for_xids(self) -> None:
        nvml = self._nvml
        try:
            self._event_set = self._call(nvml.nvmlEventSetCreate)
        except (GpuLost, _NotAnswered) as err:
            log.warning("Xid errors will not be reported: NVML could not create an event set (%s)", err)
            return
        for device in self._devices:
            if not device.lost_reason:
                self._register_xid(device)
        if not any(d.xid_registered for d in self._devices):
            try:
                nvml.nvmlEventSetFree(self._event_set)
            except nvml.NVMLError as err:
                log.debug("nvmlEventSetFree: %s", err)
            self._event_set = None
            return
        if not self._xid_thread_wanted:
            return
        self._xid_thread = threading.Thread(target=self._xid_loop, name="nvml-xid", daemon=True)
        self._xid_thread.start()

    def _register_xid(self, device: _Device) -> None:
        try:
            self._call(self._nvml.nvmlDeviceRegisterEvents, device.handle, XID_EVENT_TYPE, self._event_set)
        except (GpuLost, _NotAnswered) as err:
            device.xid_registered = False
            self._say_once(
                ("xid", device.uuid),
                logging.WARNING,
                "GPU %d (%s) cannot report Xid errors: %s",
                device.index,
                device.uuid,
                err,
            )
            return
        device.xid_registered = True
        log.info("listening for Xid errors on GPU %d (%s)", device.index, device.uuid)

    def poll_xid(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for one NVML event and file it under its GPU; return how many were filed.

        The listener thread calls this in a loop; tests call it directly. Raises GpuLost when the event set
        itself fails (the driver went away): the loop then backs off.
        """
        event_set = self._event_set
        if event_set is None:
            return 0
        nvml = self._nvml
        try:
            data = nvml.nvmlEventSetWait(event_set, timeout_ms)
        except nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == _TIMEOUT:
                return 0
            self._count_error("nvmlEventSetWait", type(err).__name__.removeprefix("NVMLError_"))
            raise GpuLost(f"nvmlEventSetWait: {err}") from None
        if not int(data.eventType) & XID_EVENT_TYPE:
            return 0
        xid, heard_ns = int(data.eventData), self._wall_clock_ns()
        # By handle first: after an Xid such as 79 the GPU no longer answers, not even for its UUID.
        key = _handle_key(data.device)
        device = next((d for d in self._devices if d.handle is not None and _handle_key(d.handle) == key), None)
        if device is None:
            try:
                uuid = _text(self._call(nvml.nvmlDeviceGetUUID, data.device))
            except (GpuLost, _NotAnswered):
                uuid = None
            device = next((d for d in self._devices if uuid is not None and d.uuid == uuid), None)
        if device is None:
            log.error("an unknown GPU reported Xid %d", xid, extra={"xid": xid})
            return 0
        with self._xid_lock:
            device.xid_pending.append(XidEvent(xid, heard_ns))
            device.xid_total += 1
            device.xid_counts[xid] = device.xid_counts.get(xid, 0) + 1
        log.log(
            logging.ERROR if xid_catalogue.tier(xid) != "warning" else logging.WARNING,
            "GPU %d (%s) reported %s",
            device.index,
            device.uuid,
            xid_catalogue.describe(xid),
            extra={"gpu": str(device.index), "gpu_uuid": device.uuid, "xid": xid},
        )
        return 1

    def _drain_xids(self, device: _Device) -> tuple[tuple[XidEvent, ...], tuple[tuple[int, int], ...]]:
        with self._xid_lock:
            events = tuple(device.xid_pending)
            device.xid_pending.clear()
            counts = tuple(sorted(device.xid_counts.items()))
        return events, counts

    def _xid_loop(self) -> None:
        backoff_s = 5.0
        while not self._xid_stop.is_set():
            try:
                self.poll_xid(self.xid_wait_ms)
            except GpuLost as err:
                self._say_once(
                    ("xid-wait",),
                    logging.ERROR,
                    "waiting for Xid events failed: %s; retrying every %g s",
                    err,
                    backoff_s,
                )
                self._xid_stop.wait(backoff_s)
            except Exception:  # the listener's boundary: an unexpected answer must not end Xid reporting
                log.exception("the Xid listener failed on an event (logged; listening goes on)")
                self._xid_stop.wait(backoff_s)
