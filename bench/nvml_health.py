"""Prove the NVML health path on a real GPU: the Xid listener registered, every health field read, their costs.

Runs the monitor's own reader (monitor.collection.nvml.NvmlReader, Xid listener thread on) against the real
pynvml, with every call timed, and writes one JSON document:

- `gpus`: per GPU its identity (index, UUID, name, PCI bus id) and every health field the monitor keeps,
  each with its value or "unsupported" (NVML could not answer: never reported as 0): retired pages, remapped
  rows, PCIe replays, power and thermal throttle time, per-process SM share, the Xid counters;
- `xid`: whether the event set exists, which GPUs registered for Xid events (with the event types NVML says
  each supports), whether the listener thread is alive, and how many waits it completed (each a timeout while
  the card is healthy: an Xid cannot be caused safely, so this proves the wait loop, not an event);
- `calls`: each NVML function's cost (p50/p99/max in microseconds), the waits apart;
- `errors`: NVML errors by (function, error), i.e. what each card does not support;
- with `--load`: a bf16 matmul child on GPU 0 so that per-process utilisation shows a PID with an SM share.

    python -m bench.nvml_health --out bench/results/h200_nvml_health.json [--reads 30] [--load]

Needs nvidia-ml-py (torch for --load). Takes about `--reads` x `--interval` seconds (6 s by default).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.nvml_probe import Instrumented, Load, percentiles_us
from monitor.collection import xid as xid_catalogue
from monitor.collection.nvml import XID_EVENT_TYPE, GpuSnapshot, NvmlReader, real_nvml

#: The health fields of a snapshot, reported one by one as value or "unsupported".
HEALTH_FIELDS = (
    "pci_bus_id",
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
    "process_utilization",
    "xid_total",
)
#: Calls that block by design (the listener's wait): their durations are timeouts, not costs.
WAIT_CALLS = frozenset({"nvmlEventSetWait"})


def field_report(gpu: GpuSnapshot) -> dict[str, Any]:
    """Return each health field of one snapshot as its value, or "unsupported" where NVML gave none."""
    out: dict[str, Any] = {}
    for name in HEALTH_FIELDS:
        value = getattr(gpu, name)
        if value is None:
            out[name] = "unsupported"
        elif name == "process_utilization":
            out[name] = [{"pid": p.pid, "sm_ratio": p.sm_ratio, "memory_ratio": p.memory_ratio} for p in value]
        else:
            out[name] = value
    return out


def supported_event_types(nvml: Any, reader: NvmlReader, index: int) -> dict[str, Any]:
    """Ask NVML which event types GPU `index` supports (outside the reader: the proof's own question)."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        mask = int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
    except nvml.NVMLError as err:
        return {"error": str(err)}
    return {"mask": hex(mask), "xid_supported": bool(mask & XID_EVENT_TYPE)}


def run(nvml: Any, *, reads: int, interval_s: float, load_seconds: float | None) -> dict[str, Any]:
    """Read every GPU `reads` times with every cadence at its fastest and the Xid listener on."""
    instrumented = Instrumented(nvml)
    reader = NvmlReader(
        instrumented,
        processes_interval_s=0,
        energy_interval_s=0,
        health_interval_s=0,
        xid_wait_ms=100,
    )
    result: dict[str, Any] = {
        "available": reader.available,
        "reason": reader.reason,
        "driver_version": reader.driver_version,
    }
    if not reader.available:
        return result
    load: Load | None = None
    if load_seconds:
        load = Load(8192, seconds=load_seconds + 60)
        if not load.ready.wait(300) or load.proc.poll() is not None:
            result["load_error"] = f"the load child did not start (exit code {load.proc.poll()})"
            load = None
    result["load_pid"] = None if load is None else load.proc.pid
    snapshots: tuple[GpuSnapshot, ...] = ()
    pause = threading.Event()
    started = time.monotonic()
    try:
        for _ in range(reads):
            snapshots = reader.read()
            pause.wait(interval_s)
    finally:
        if load is not None:
            load.stop()
    elapsed_s = time.monotonic() - started
    listener = next((t for t in threading.enumerate() if t.name == "nvml-xid"), None)
    waits = instrumented.durations_ns.get("nvmlEventSetWait", [])
    result["reads"] = reads
    result["seconds"] = round(elapsed_s, 3)
    result["xid"] = {
        "event_set": reader.xid_listening,
        "listener_thread_alive": listener is not None and listener.is_alive(),
        "waits_completed": len(waits),
        "wait_ms": reader.xid_wait_ms,
        "registered": {str(g.index): g.xid_total is not None for g in snapshots},
        "supported_event_types": {str(g.index): supported_event_types(nvml, reader, g.index) for g in snapshots},
        "heard": [
            {"gpu": g.index, "xid": e.xid, "tier": xid_catalogue.tier(e.xid)} for g in snapshots for e in g.xid_events
        ],
    }
    result["gpus"] = [
        {"index": g.index, "uuid": g.uuid, "name": g.name, "up": g.up, "fields": field_report(g)} for g in snapshots
    ]
    result["snapshot_fields"] = [f.name for f in fields(GpuSnapshot)]
    result["calls"] = {
        name: percentiles_us(durations)
        for name, durations in sorted(instrumented.durations_ns.items())
        if name not in WAIT_CALLS
    }
    result["errors"] = {f"{call} {error}": count for (call, error), count in sorted(reader.error_counts().items())}
    reader.shutdown()
    result["listener_stopped_on_shutdown"] = listener is None or not listener.is_alive()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the proof; write (or print) its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=30, help="reads of every GPU (default 30)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between reads (default 0.2)")
    parser.add_argument("--load", action="store_true", help="run a CUDA matmul child on GPU 0 meanwhile")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    result = {"host": socket.gethostname(), "argv": sys.argv[1:], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    result.update(
        run(
            real_nvml(),
            reads=args.reads,
            interval_s=args.interval,
            load_seconds=args.reads * args.interval if args.load else None,
        )
    )
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0 if result.get("available") else 1


if __name__ == "__main__":
    sys.exit(main())
