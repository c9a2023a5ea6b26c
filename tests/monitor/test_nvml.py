"""NvmlReader's mapping of NVML answers, fed by a tiny fake that replays recorded answers.

The fake stands in only where no GPU exists (CI); the real path is proven on an H100 by bench/nvml_probe.py,
whose `--record` writes the same format this fake replays (tests/data/nvml/*.json):

    {"format": "i2v-nvml-answers/1", "system": {"nvmlInit": null, "nvmlDeviceGetCount": N, ...},
     "devices": [{"ticks": [{"nvmlDeviceGetMemoryInfo": {...}, "nvmlDeviceGetTemperature:0": 52, ...}, ...]}]}

A device call's key is its function name, then ":" and its arguments after the handle (the "since"
timestamp of nvmlDeviceGetProcessUtilization and the event set of nvmlDeviceRegisterEvents are left out).
An answer is a value, an object (a dict of attributes), a list of objects, or {"nvml_error": CODE} to raise
pynvml's error. Tick k answers each key as the latest tick <= k that lists it, or that has a "*" answer for
the keys it does not list; a recording's optional "unrecorded" answer stands for every call it lacks (a
capture older than the calls the reader makes now). Xid events are {"tick": k, "gpu": i, "xid": N} in
"xid_events": nvmlEventSetWait hands out, in order, those whose tick has come, then times out.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from monitor.collection.nvml import (
    DURATION_BUCKETS_S,
    GpuLost,
    GpuProcess,
    GpuProcessUtilization,
    GpuSnapshot,
    NvmlReader,
    XidEvent,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "nvml"
#: Calls whose arguments after the handle are left out of their key (they change every call).
UNKEYED = frozenset({"nvmlDeviceGetProcessUtilization"})
ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    """Read one recording from tests/data/nvml."""
    return json.loads((DATA / f"{name}.json").read_text())


class FakeHandle:
    """A device handle the fake hands out: it only knows its index."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeHandle) and other.index == self.index

    def __hash__(self) -> int:
        return hash(self.index)


class FakeNvml:
    """Replay recorded NVML answers the way pynvml gives them (objects, lists, raised NVMLError)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, recording: dict[str, Any]) -> None:
        self.recording = recording
        self.tick = 0
        self.calls: list[str] = []
        self.xids_delivered = 0
        self._woken = threading.Event()

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int, event_set: Any) -> None:
        """Register a GPU for events: answered by its recorded `nvmlDeviceRegisterEvents`."""
        self.calls.append("nvmlDeviceRegisterEvents")
        self._answer("nvmlDeviceRegisterEvents", (handle,))

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> SimpleNamespace:
        """Hand out the next recorded Xid whose tick has come, or time out (waiting, as NVML does)."""
        self.calls.append("nvmlEventSetWait")
        pending = [e for e in self.recording.get("xid_events", []) if e["tick"] <= self.tick]
        if self.xids_delivered >= len(pending):
            self._woken.wait(timeout_ms / 1000)
            self._woken.clear()
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        event = pending[self.xids_delivered]
        self.xids_delivered += 1
        return SimpleNamespace(
            device=FakeHandle(event["gpu"]),
            eventType=pynvml.nvmlEventTypeXidCriticalError,
            eventData=event["xid"],
            gpuInstanceId=0,
            computeInstanceId=0,
        )

    def nvmlEventSetFree(self, event_set: Any) -> None:
        """Free the event set, waking a waiting listener."""
        self.calls.append("nvmlEventSetFree")
        self._woken.set()

    def advance(self, tick: int) -> None:
        """Move to `tick`, waking a listener that waits for events."""
        self.tick = tick
        self._woken.set()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("NVML"):
            return getattr(pynvml, name)
        if not name.startswith("nvml"):
            raise AttributeError(name)

        def replay(*args: Any) -> Any:
            self.calls.append(name)
            return self._answer(name, args)

        replay.__name__ = name
        return replay

    def _answer(self, name: str, args: tuple[Any, ...]) -> Any:
        system = self.recording["system"]
        if name == "nvmlShutdown" or (name == "nvmlInit" and name not in system):
            return None
        if name in system:
            return _materialise(system[name])
        if name == "nvmlDeviceGetHandleByIndex":
            index, key = args[0], name
        elif not args or not isinstance(args[0], FakeHandle):  # a system call this recording lacks
            if "unrecorded" in self.recording:
                return _materialise(self.recording["unrecorded"])
            raise LookupError(f"no recorded answer for {name}")
        else:
            handle, *rest = args
            if name in UNKEYED:
                rest = []
            index, key = handle.index, ":".join([name, ",".join(map(str, rest))]) if rest else name
        found, answer = self._lookup(self.recording["devices"][index]["ticks"], key)
        if not found and "unrecorded" in self.recording and name != "nvmlDeviceGetHandleByIndex":
            found, answer = True, self.recording["unrecorded"]
        if name == "nvmlDeviceGetHandleByIndex":
            if found and answer is not None:
                _materialise(answer)
            return FakeHandle(index)
        if not found:
            raise LookupError(f"no recorded answer for {key} on GPU {index} at tick {self.tick}")
        return _materialise(answer)

    def _lookup(self, ticks: list[dict[str, Any]], key: str) -> tuple[bool, Any]:
        for tick in reversed(ticks[: self.tick + 1]):
            if key in tick:
                return True, tick[key]
            if "*" in tick:
                return True, tick["*"]
        return False, None


def _materialise(answer: Any) -> Any:
    if isinstance(answer, dict):
        if "nvml_error" in answer:
            raise pynvml.NVMLError(answer["nvml_error"])
        return SimpleNamespace(**answer)
    if isinstance(answer, list):
        return [_materialise(item) for item in answer]
    return answer


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reader_for(recording: str, **kwargs: Any) -> tuple[NvmlReader, FakeNvml, Clock]:
    """Build a reader over a replayed recording, with a hand-moved clock."""
    fake, clock = FakeNvml(load(recording)), Clock()
    kwargs.setdefault("xid_thread", False)  # the tests poll for Xids themselves
    return NvmlReader(fake, clock=clock, **kwargs), fake, clock


def test_h100_answers_map_to_every_snapshot_field() -> None:
    reader, _, _ = reader_for("h100")

    (gpu,) = reader.read()

    assert reader.available
    assert reader.reason is None
    assert reader.driver_version == "580.159.04"
    assert gpu == GpuSnapshot(
        index=0,
        uuid="GPU-5e0c9a53-6b1f-2a0e-8f43-1d2c3b4a5968",
        name="NVIDIA H100 80GB HBM3",
        up=True,
        utilization_ratio=0.97,
        memory_used_bytes=14637367296,
        memory_total_bytes=85520809984,
        temperature_c=52.0,
        power_w=412.345,
        sm_clock_mhz=1980,
        throttle_reasons=0,
        ecc_errors_corrected=0,
        ecc_errors_uncorrected=0,
        energy_j=1234567.89,
        energy_age_s=0.0,
        processes=(GpuProcess(777, 536870912), GpuProcess(4242, 13958643712)),
        processes_age_s=0.0,
        pci_bus_id="00000000:19:00.0",
        process_utilization=(GpuProcessUtilization(777, 0.03, 0.01), GpuProcessUtilization(4242, 0.94, 0.4)),
        process_utilization_age_s=0.0,
        retired_pages_sbe=None,  # Hopper remaps rows instead of retiring pages
        retired_pages_dbe=None,
        retired_pages_pending=None,
        remapped_rows_correctable=2,
        remapped_rows_uncorrectable=0,
        remapped_rows_pending=False,
        remapped_rows_failed=False,
        pcie_replay_total=0,
        power_throttle_s=1.25,
        thermal_throttle_s=0.0,
        health_age_s=0.0,
        xid_events=(),
        xid_total=0,
    )
    assert gpu.throttle_reason_names == ()


def test_unsupported_fields_become_none_fall_back_and_are_not_asked_again() -> None:
    reader, fake, clock = reader_for(
        "not_supported", processes_interval_s=0, energy_interval_s=0, health_interval_s=0
    )

    first = reader.read()
    clock.now += 2
    (gpu,) = reader.read()

    assert first == (gpu,)  # same answers; carried values are fresh again (age 0) because cadence is 0
    assert gpu.up
    assert gpu.utilization_ratio is None
    assert gpu.ecc_errors_corrected is None
    assert gpu.ecc_errors_uncorrected is None
    assert gpu.energy_j is None
    assert gpu.energy_age_s is None
    assert gpu.memory_used_bytes == 8589934592
    assert gpu.throttle_reasons == 68  # from the older throttle-reasons function
    assert gpu.throttle_reason_names == ("sw_power_cap", "hw_thermal_slowdown")
    assert gpu.processes == (GpuProcess(999, None), GpuProcess(4242, 8053063680))  # from the _v2 function
    assert gpu.pci_bus_id == "00000000:01:00.0"
    for unsupported in (
        "process_utilization",
        "retired_pages_sbe",
        "retired_pages_dbe",
        "retired_pages_pending",
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "remapped_rows_pending",
        "remapped_rows_failed",
        "pcie_replay_total",
        "power_throttle_s",
        "thermal_throttle_s",
        "xid_total",  # the card refused to register for events
    ):
        assert getattr(gpu, unsupported) is None, unsupported
    assert not reader.xid_listening
    for never_again in (
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetRetiredPagesPendingStatus",
    ):
        assert fake.calls.count(never_again) == 1, never_again
    assert fake.calls.count("nvmlDeviceGetRetiredPages") == 2  # by single-bit and by double-bit errors, once each
    assert fake.calls.count("nvmlDeviceGetViolationStatus") == 1  # "function not found": thermal is not asked
    assert fake.calls.count("nvmlDeviceGetTotalEccErrors") == 2  # corrected and uncorrected, once each
    assert fake.calls.count("nvmlDeviceGetMemoryInfo") == 2
    errors = reader.error_counts()
    assert errors[("nvmlDeviceGetTotalEccErrors", "NotSupported")] == 2
    assert errors[("nvmlDeviceGetCurrentClocksEventReasons", "FunctionNotFound")] == 1
    assert errors[("nvmlDeviceGetTotalEnergyConsumption", "NoPermission")] == 1


def test_a_vanished_gpu_is_reported_down_once_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    reader, fake, clock = reader_for("vanish", rediscover_interval_s=4)
    caplog.set_level(logging.INFO, logger="monitor.collection.nvml")
    ticks = []
    for tick in range(6):
        fake.tick = tick
        while reader.poll_xid(0):
            pass
        ticks.append(reader.read())
        clock.now += 2

    assert [t[0].up for t in ticks] == [True] * 6
    assert [t[1].up for t in ticks] == [True, True, False, False, False, True]
    assert [t[1].just_lost for t in ticks] == [False, False, True, False, False, False]
    assert "GPU is lost" in (ticks[2][1].lost_reason or "")
    assert ticks[2][1].uuid == "GPU-11111111-1111-1111-1111-111111111111"
    assert ticks[2][1].memory_used_bytes is None
    # The card's identity outlives its index: the lost GPU keeps its UUID and bus id, and its Xid arrives.
    assert ticks[2][1].pci_bus_id == "00000000:3B:00.0"
    assert [e.xid for e in ticks[2][1].xid_events] == [79]
    assert ticks[2][1].xid_total == 1
    assert [t[1].xid_events for t in ticks[3:]] == [(), (), ()]
    assert ticks[0][0].process_utilization == ()  # "not found": no process ran since the last read
    assert ticks[0][1].process_utilization == (GpuProcessUtilization(4242, 0.99, 0.6),)
    # At tick 5 another card answers at index 1: it is a new GPU, its unanswered fields are None.
    assert ticks[5][1].uuid == "GPU-22222222-2222-2222-2222-222222222222"
    assert ticks[5][1].temperature_c == 30.0
    assert ticks[5][1].utilization_ratio is None
    assert ticks[5][1].remapped_rows_correctable is None
    assert ticks[5][1].xid_total == 0  # the new card registered for Xid events afresh
    gone = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1
    assert gone[0].levelno == logging.ERROR
    assert any("was replaced" in r.getMessage() for r in caplog.records)
    assert reader.error_counts()[("nvmlDeviceGetUtilizationRates", "GpuIsLost")] == 1


def test_no_nvml_library_means_not_available_said_once(caplog: pytest.LogCaptureFixture) -> None:
    recording = load("h100")
    recording["system"]["nvmlInit"] = {"nvml_error": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND}
    reader = NvmlReader(FakeNvml(recording))

    assert reader.read() == ()
    assert reader.read() == ()
    assert not reader.available
    assert "NVML Shared Library Not Found" in (reader.reason or "")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_no_gpu_means_not_available() -> None:
    recording = load("h100")
    recording["system"]["nvmlDeviceGetCount"] = 0
    reader = NvmlReader(FakeNvml(recording))

    assert reader.read() == ()
    assert reader.reason == "NVML found no GPU"


def test_the_real_pynvml_on_a_machine_without_a_gpu_is_not_available() -> None:
    reader = NvmlReader()  # the production default: the real pynvml
    if reader.available:
        pytest.skip("this machine has a GPU: bench/nvml_probe.py covers the real path")
    assert reader.read() == ()
    assert reader.reason


def test_costly_calls_run_on_their_own_cadence_and_carry_their_age() -> None:
    reader, fake, clock = reader_for("h100", processes_interval_s=5, energy_interval_s=10)
    snapshots = []
    for _ in range(6):  # t = 0, 2, 4, 6, 8, 10
        snapshots.append(reader.read()[0])
        clock.now += 2

    assert [s.processes_age_s for s in snapshots] == [0, 2, 4, 0, 2, 4]
    assert [s.energy_age_s for s in snapshots] == [0, 2, 4, 6, 8, 0]
    assert all(s.processes and s.energy_j for s in snapshots)
    assert fake.calls.count("nvmlDeviceGetComputeRunningProcesses") == 2
    assert fake.calls.count("nvmlDeviceGetTotalEnergyConsumption") == 2
    assert fake.calls.count("nvmlDeviceGetMemoryInfo") == 6


def test_each_call_kind_cost_is_measured() -> None:
    ticks = itertools.count(0, 3000)  # every call appears to take 3 us
    reader = NvmlReader(FakeNvml(load("h100")), perf_counter_ns=lambda: next(ticks), xid_thread=False)

    reader.read()
    reader.read()

    stats = reader.call_stats()
    memory = stats["nvmlDeviceGetMemoryInfo"]
    assert memory.count == 2
    assert memory.total_s == pytest.approx(6e-6)
    assert memory.max_s == pytest.approx(3e-6)
    assert len(memory.bucket_counts) == len(DURATION_BUCKETS_S) + 1
    assert memory.bucket_counts[0] == 2  # 3 us <= the first bound (5 us)
    assert stats["nvmlDeviceGetTotalEccErrors"].count == 4
    assert "nvmlInit" not in stats


def test_query_turns_unsupported_into_the_default_and_lost_into_gpu_lost() -> None:
    reader, fake, _ = reader_for("h100")
    assert reader.available

    def unsupported() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def lost() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    assert reader.query(unsupported, default="n/a") == "n/a"
    assert reader.query(fake.nvmlSystemGetDriverVersion) == "580.159.04"
    with pytest.raises(GpuLost):
        reader.query(lost)
    assert reader.error_counts() == {("unsupported", "NotSupported"): 1, ("lost", "GpuIsLost"): 1}


def test_shutdown_shuts_nvml_down_once() -> None:
    reader, fake, _ = reader_for("h100")
    reader.read()

    reader.shutdown()
    reader.shutdown()

    assert fake.calls.count("nvmlShutdown") == 1
    assert reader.read() == ()


def _load_probe() -> Any:
    spec = importlib.util.spec_from_file_location("nvml_probe", ROOT / "bench" / "nvml_probe.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nvml_probe"] = module
    spec.loader.exec_module(module)
    return module


def test_the_probe_records_answers_in_the_format_the_fake_replays(tmp_path: Path) -> None:
    probe = _load_probe()
    original = NvmlReader(FakeNvml(load("h100")), xid_thread=False).read()
    path = tmp_path / "capture.json"

    probe.record(FakeNvml(load("h100")), path)

    replayed = NvmlReader(FakeNvml(json.loads(path.read_text())), xid_thread=False).read()
    assert replayed == original


def test_the_probe_runs_end_to_end_on_recorded_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _load_probe()
    monkeypatch.setattr(probe, "real_nvml", lambda: FakeNvml(load("h100")))
    out, recorded = tmp_path / "probe.json", tmp_path / "answers.json"

    assert probe.main(["--ticks", "3", "--interval", "0.001", "--out", str(out), "--record", str(recorded)]) == 0

    result = json.loads(out.read_text())
    assert result["available"] is True
    assert result["tick"]["wall"]["count"] == 3
    assert result["calls"]["nvmlDeviceGetMemoryInfo"]["count"] == 3
    assert result["snapshot"]["gpus"][0]["memory_used_bytes"] == 14637367296
    assert {p["pid"] for p in result["snapshot"]["gpus"][0]["processes"]} == {777, 4242}
    assert result["snapshot"]["points"][0]["measurement"] == "gpu_sample"
    assert json.loads(recorded.read_text())["devices"][0]["ticks"][0]["nvmlDeviceGetTemperature:0"] == 52


def test_xids_heard_by_the_listener_thread_reach_the_next_snapshot_once(caplog: pytest.LogCaptureFixture) -> None:
    reader, fake, _ = reader_for("h100", xid_thread=True, xid_wait_ms=20, wall_clock_ns=lambda: 7)
    caplog.set_level(logging.WARNING, logger="monitor.collection.nvml")
    assert reader.read()[0].xid_events == ()
    assert reader.xid_listening

    fake.advance(1)  # the recording's two Xids (79, then 13) become due
    deadline = time.monotonic() + 5
    while fake.xids_delivered < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    (gpu,) = reader.read()
    (again,) = reader.read()
    reader.shutdown()

    assert gpu.xid_events == (XidEvent(79, 7), XidEvent(13, 7))
    assert gpu.xid_total == 2
    assert gpu.xid_counts == ((13, 1), (79, 1))
    assert again.xid_events == ()
    assert again.xid_total == 2
    assert "nvmlEventSetFree" in fake.calls
    assert "nvmlEventSetFree" not in fake.calls[fake.calls.index("nvmlShutdown") :]
    heard = [r for r in caplog.records if "reported Xid" in r.getMessage()]
    assert [(getattr(r, "xid", None), r.levelname) for r in heard] == [(79, "ERROR"), (13, "WARNING")]
    assert "fallen off the bus" in heard[0].getMessage()
    assert heard[0].gpu_uuid == "GPU-5e0c9a53-6b1f-2a0e-8f43-1d2c3b4a5968"


def test_a_capture_older_than_the_health_calls_reports_them_unsupported() -> None:
    reader, _, _ = reader_for("h100_captured")

    (gpu,) = reader.read()

    assert gpu.up
    assert gpu.memory_used_bytes == 503316480
    assert gpu.pci_bus_id is None
    assert gpu.process_utilization is None
    assert gpu.power_throttle_s is None
    assert gpu.pcie_replay_total is None
    assert gpu.xid_total is None  # no event set: Xids cannot be heard, which is not "no Xid"
    assert not reader.xid_listening


def test_the_health_proof_reports_each_field_or_unsupported_and_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import nvml_health

    monkeypatch.setattr(nvml_health, "real_nvml", lambda: FakeNvml(load("h100")))
    out = tmp_path / "health.json"

    assert nvml_health.main(["--reads", "3", "--interval", "0.01", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert result["xid"]["event_set"] is True
    assert result["xid"]["registered"] == {"0": True}
    assert result["xid"]["supported_event_types"]["0"]["xid_supported"] is True
    assert result["listener_stopped_on_shutdown"] is True
    fields = result["gpus"][0]["fields"]
    assert fields["retired_pages_sbe"] == "unsupported"
    assert fields["remapped_rows_correctable"] == 2
    assert fields["power_throttle_s"] == 1.25
    assert fields["pci_bus_id"] == "00000000:19:00.0"
    assert result["calls"]["nvmlDeviceGetViolationStatus"]["count"] == 6  # power and thermal, 3 reads
    assert "nvmlEventSetWait" not in result["calls"]  # its time is the wait, not a cost
    assert "nvmlDeviceGetRetiredPages NotSupported" in result["errors"]
