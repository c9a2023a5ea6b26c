"""Prove the NVML path on a real GPU: call costs, tick CPU cost, a snapshot, process attribution, overhead.

Runs the monitor's own code (monitor.collection.nvml.NvmlReader, monitor.collection.sampler.Sampler.tick)
against the real pynvml and prints one JSON document:

- `calls`: each NVML function's cost, p50/p99/max in microseconds (timed around the real call);
- `tick`: a full sampler tick (every GPU + the host + point conversion): wall, thread CPU and process CPU
  time, p50/p99 in microseconds, over `--ticks` ticks at `--interval` seconds;
- `snapshot`: the last tick's GPUs (utilisation, memory, temperature, power, clocks, throttle reasons, ECC,
  energy, processes with PIDs) and the `gpu_sample` points it became;
- with `--load`: a child process runs a bf16 matmul loop on GPU 0 (needs torch); the snapshot shows its PID
  and the memory attributed to it, and `load` compares its throughput without sampling against sampling at
  100 Hz (every call every tick), 100 Hz (default cadences), 2 s and 0.5 s, interleaved with unsampled phases.

`--record FILE` also writes one real tick's NVML answers in the format tests/monitor/test_nvml.py replays,
so the hand-written test data can be replaced by a capture.

    python bench/nvml_probe.py --ticks 200 --interval 0.05 --load --out probe.json --record h100.json

Needs nvidia-ml-py (and psutil for the host part, torch for --load); not APScheduler, Flask or pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.collection.nvml import GpuSnapshot, NvmlReader, real_nvml
from monitor.collection.sampler import Sampler, Snapshot, snapshot_points

FORMAT = "i2v-nvml-answers/1"
#: Calls recorded under their name alone: their later arguments change every call (a timestamp, an event set).
UNKEYED = frozenset({"nvmlDeviceGetProcessUtilization", "nvmlDeviceRegisterEvents"})
SYSTEM_CALLS = ("nvmlInit", "nvmlDeviceGetCount", "nvmlSystemGetDriverVersion")


def _jsonable(value: Any) -> Any:
    """Turn an NVML answer (ctypes struct, pynvml friendly object, bytes, list) into plain JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "_fields_"):
        return {name: _jsonable(getattr(value, name)) for name, *_ in value._fields_}
    if hasattr(value, "__dict__"):
        return {key: _jsonable(item) for key, item in vars(value).items() if not key.startswith("_")}
    if hasattr(value, "value"):
        return _jsonable(value.value)
    return str(value)


class Instrumented:
    """Wrap an NVML module: time every call (for percentiles) and, when recording, keep every answer."""

    def __init__(self, nvml: Any, *, record: bool = False) -> None:
        self._nvml = nvml
        self._record = record
        self._wrapped: dict[str, Callable[..., Any]] = {}
        self._handles: dict[int, tuple[int, Any]] = {}
        self.durations_ns: dict[str, list[int]] = {}
        self.system: dict[str, Any] = {}
        self.devices: dict[int, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._nvml, name)
        if not (callable(attribute) and name.startswith("nvml")):
            return attribute
        if name not in self._wrapped:
            self._wrapped[name] = self._wrap(name, attribute)
        return self._wrapped[name]

    def _wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        error_types = (
            self._nvml.NVMLError,
            getattr(self._nvml, "NVMLLibraryMismatchError", self._nvml.NVMLError),
        )

        def call(*args: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                value = func(*args)
            except error_types as err:
                self.durations_ns.setdefault(name, []).append(time.perf_counter_ns() - started)
                code = getattr(err, "value", 13)  # a library mismatch reads as "function not found"
                self._keep(name, args, {"nvml_error": code, "error": type(err).__name__.removeprefix("NVMLError_")})
                raise
            self.durations_ns.setdefault(name, []).append(time.perf_counter_ns() - started)
            if name == "nvmlDeviceGetHandleByIndex":
                self._handles[id(value)] = (args[0], value)  # the value is kept so its id stays its own
            else:
                self._keep(name, args, _jsonable(value))
            return value

        call.__name__ = name
        return call

    def _keep(self, name: str, args: tuple[Any, ...], answer: Any) -> None:
        if not self._record or name in ("nvmlShutdown", "nvmlEventSetFree", "nvmlEventSetWait"):
            return
        if name == "nvmlEventSetCreate":
            answer = "event-set"  # an opaque pointer: the replay needs only that one was made
        if args and id(args[0]) in self._handles:
            index = self._handles[id(args[0])][0]
            rest = () if name in UNKEYED else args[1:]
            key = f"{name}:{','.join(map(str, rest))}" if rest else name
            self.devices.setdefault(index, {})[key] = answer
        elif name == "nvmlDeviceGetHandleByIndex":
            self.devices.setdefault(args[0], {})[name] = answer
        else:
            self.system[name] = answer

    def recording(self, source: str) -> dict[str, Any]:
        """Return the answers kept so far as one recorded tick."""
        return {
            "format": FORMAT,
            "source": source,
            "system": {"nvmlInit": None, **self.system},
            "devices": [{"ticks": [self.devices.get(i, {})]} for i in range(max(self.devices, default=-1) + 1)],
        }


def record(nvml: Any, path: Path) -> dict[str, Any]:
    """Read every GPU once through NvmlReader (every call, slow ones too) and save the answers NVML gave."""
    instrumented = Instrumented(nvml, record=True)
    reader = NvmlReader(
        instrumented, processes_interval_s=0, energy_interval_s=0, health_interval_s=0, xid_thread=False
    )
    reader.read()
    reader.shutdown()
    source = f"nvml_probe.py --record on {socket.gethostname()}, driver {reader.driver_version}, {time.ctime()}"
    recording = instrumented.recording(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recording, indent=2) + "\n")
    return recording


def percentiles_us(values_ns: Iterable[float]) -> dict[str, float | int]:
    """Return count, p50, p99 and max of nanosecond values, in microseconds."""
    ordered = sorted(values_ns)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2)

    return {
        "count": len(ordered),
        "p50_us": at(0.50),
        "p99_us": at(0.99),
        "max_us": round(ordered[-1] / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
    }


def gpu_json(gpu: GpuSnapshot, load_pid: int | None) -> dict[str, Any]:
    """Return one GPU snapshot as JSON, processes as objects marking the load child."""
    out = asdict(gpu)
    out["throttle_reason_names"] = list(gpu.throttle_reason_names)
    out["processes"] = None
    if gpu.processes is not None:
        out["processes"] = [
            {"pid": p.pid, "used_memory_bytes": p.used_memory_bytes, "is_load_child": p.pid == load_pid}
            for p in gpu.processes
        ]
    return out


# ----- the CUDA load ---------------------------------------------------------------------------------------

LOAD_CODE = r"""
import sys, time, torch
size, seconds, device = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(5):
    a @ b
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
print("ready", flush=True)
count, stop_at = 0, time.monotonic() + seconds
while time.monotonic() < stop_at:
    for _ in range(10):
        c = a @ b
    sync()
    count += 10
    print(f"{time.monotonic():.6f} {count}", flush=True)
"""


class Load:
    """A child process running a bf16 matmul loop on GPU 0, reporting (monotonic time, matmuls done)."""

    def __init__(self, size: int, seconds: float, device: str = "cuda") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOAD_CODE, str(size), str(seconds), device],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")},
        )
        self.size = size
        self.progress: list[tuple[float, int]] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()
            else:
                stamp, count = line.split()
                self.progress.append((float(stamp), int(count)))
        self.ready.set()

    def rate(self, start: float, end: float) -> float | None:
        """Return matmuls per second between two monotonic times."""
        inside = [(t, n) for t, n in list(self.progress) if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def stop(self) -> None:
        """End the child."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_phase(sampler: Sampler | None, interval_s: float | None, seconds: float) -> tuple[float, float, int]:
    """Sample at `interval_s` (or not at all) for `seconds`; return (start, end, ticks)."""
    start = time.monotonic()
    end, ticks = start + seconds, 0
    if sampler is None or interval_s is None:
        time.sleep(seconds)
        return start, time.monotonic(), 0
    deadline = start
    while deadline < end:
        sampler.tick()
        ticks += 1
        deadline += interval_s
        time.sleep(max(0.0, min(deadline, end) - time.monotonic()))
    return start, time.monotonic(), ticks


def compare_throughput(load: Load, sampler: Sampler, reader: NvmlReader, seconds: float, rounds: int) -> dict[str, Any]:
    """Interleave unsampled phases with sampled ones and report each sampled phase's throughput ratio."""
    defaults = (reader.processes_interval_s, reader.energy_interval_s)
    modes: list[tuple[str, float, tuple[float, float]]] = [
        ("100Hz_every_call_every_tick", 0.01, (0.0, 0.0)),
        ("100Hz_default_cadence", 0.01, defaults),
        ("2s", 2.0, defaults),
        ("0.5s", 0.5, defaults),
    ]
    phases: list[dict[str, Any]] = []
    for _ in range(rounds):
        for name, interval, (processes_s, energy_s) in modes:
            off_start, off_end, _ = run_phase(None, None, seconds)
            reader.processes_interval_s, reader.energy_interval_s = processes_s, energy_s
            on_start, on_end, ticks = run_phase(sampler, interval, seconds)
            phases.append({"mode": "off", "matmul_per_s": load.rate(off_start, off_end)})
            phases.append({"mode": name, "matmul_per_s": load.rate(on_start, on_end), "ticks": ticks})
    off_start, off_end, _ = run_phase(None, None, seconds)
    phases.append({"mode": "off", "matmul_per_s": load.rate(off_start, off_end)})
    reader.processes_interval_s, reader.energy_interval_s = defaults
    summary: dict[str, Any] = {}
    for name, *_ in modes:
        ratios = []
        for i, phase in enumerate(phases):
            if phase["mode"] != name:
                continue
            neighbours = [phases[j]["matmul_per_s"] for j in (i - 1, i + 1) if phases[j]["matmul_per_s"]]
            if phase["matmul_per_s"] and neighbours:
                ratios.append(phase["matmul_per_s"] / statistics.fmean(neighbours))
        summary[name] = {
            "throughput_ratio_vs_unsampled": ratios,
            "mean": statistics.fmean(ratios) if ratios else None,
        }
    return {"matrix_size": load.size, "phase_seconds": seconds, "phases": phases, "summary": summary}


# ----- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the probe; print (or write) its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200, help="ticks to time (default 200)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between timed ticks (default 0.05)")
    parser.add_argument("--processes-interval", type=float, default=5.0, help="process-list cadence, s")
    parser.add_argument("--energy-interval", type=float, default=10.0, help="energy-counter cadence, s")
    parser.add_argument("--load", action="store_true", help="run a CUDA matmul child and compare throughput")
    parser.add_argument("--load-size", type=int, default=8192, help="matrix size of the load (default 8192)")
    parser.add_argument("--phase-seconds", type=float, default=8.0, help="length of each load phase (default 8)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the throughput comparison (default 1)")
    parser.add_argument("--load-device", default="cuda", help="torch device of the load (cpu: a dry run)")
    parser.add_argument("--record", type=Path, help="also save one tick's raw NVML answers here (test data)")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)

    nvml = real_nvml()
    result: dict[str, Any] = {"host": socket.gethostname(), "argv": sys.argv[1:]}
    if args.record:
        recording = record(nvml, args.record)
        result["recorded"] = {"path": str(args.record), "gpus": len(recording["devices"])}

    instrumented = Instrumented(nvml)
    reader = NvmlReader(
        instrumented, processes_interval_s=args.processes_interval, energy_interval_s=args.energy_interval
    )
    result.update(available=reader.available, reason=reader.reason, driver_version=reader.driver_version)
    load: Load | None = None
    if args.load and reader.available:
        load = Load(args.load_size, seconds=3600, device=args.load_device)
        if not load.ready.wait(300) or load.proc.poll() is not None:
            result["load_error"] = f"the load child did not start (exit code {load.proc.poll()})"
            load = None
    load_pid = None if load is None else load.proc.pid
    result["load_pid"] = load_pid

    try:
        from monitor.collection.host import HostReader

        host: Any = HostReader(outputs_dir=Path.cwd())
    except ImportError:  # no psutil: time the GPU part alone
        host = None
    points: list[Any] = []
    sampler = Sampler(
        interval_s=args.interval,
        host_name=socket.gethostname(),
        write=lambda batch: points.__setitem__(slice(None), batch),
        gpus=reader,
        host=host if host is not None else _NoHost(),
        generator_pid=lambda: load_pid if load_pid is not None else os.getpid(),
    )
    wall, thread_cpu, process_cpu = [], [], []
    snapshot: Snapshot | None = None
    deadline = time.monotonic()
    for _ in range(args.ticks):
        w0, t0, p0 = time.perf_counter_ns(), time.thread_time_ns(), time.process_time_ns()
        snapshot = sampler.tick()
        wall.append(time.perf_counter_ns() - w0)
        thread_cpu.append(time.thread_time_ns() - t0)
        process_cpu.append(time.process_time_ns() - p0)
        deadline += args.interval
        time.sleep(max(0.0, deadline - time.monotonic()))
    result["tick"] = {
        "ticks": args.ticks,
        "interval_s": args.interval,
        "processes_interval_s": args.processes_interval,
        "energy_interval_s": args.energy_interval,
        "wall": percentiles_us(wall),
        "thread_cpu": percentiles_us(thread_cpu),
        "process_cpu": percentiles_us(process_cpu),
        "sampler_health": sampler.health(),
    }
    result["calls"] = {name: percentiles_us(d) for name, d in sorted(instrumented.durations_ns.items())}
    result["nvml_errors"] = {f"{call}/{error}": n for (call, error), n in sorted(reader.error_counts().items())}
    if snapshot is not None:
        result["snapshot"] = {
            "gpus": [gpu_json(g, load_pid) for g in snapshot.gpus],
            "host": None if snapshot.host is None else asdict(snapshot.host),
            "generator_pid_used": snapshot.generator_pid,
            "points": [asdict(p) for p in snapshot_points(snapshot)],
        }
    if load is not None:
        try:
            result["load"] = compare_throughput(load, sampler, reader, args.phase_seconds, args.rounds)
        finally:
            load.stop()
    reader.shutdown()

    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


class _NoHost:
    """Stands in for the host reader where psutil is missing."""

    def read(self, generator_pid: int | None = None) -> Any:
        return None


if __name__ == "__main__":
    sys.exit(main())
