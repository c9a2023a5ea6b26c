"""Turn each sampler snapshot into the per-GPU values the GPU rules read, some of which need earlier ticks.

A value is None where the card or driver cannot give it (the rule then holds its state): a GPU that cannot
report Xid errors has no Xid values, not zeros.

- `gpu_up`, `gpu_memory_ratio`, `gpu_temperature_c`: this tick's readings.
- `gpu_xid_reset_required`, `gpu_xid_severe`, `gpu_xid_other`: Xids of each tier (monitor/collection/xid.py)
  heard in the last `xid_window_s` (an Xid is a moment: the alert holds for the window after the last one).
- `gpu_memory_rows_pending`: 1 while a remapped row or a retired page waits for a GPU reset.
- `gpu_memory_rows_failed`: 1 once a row remap failed.
- `gpu_pcie_replays_per_min`, `gpu_power_throttle_ratio`, `gpu_thermal_throttle_ratio`: the change of a
  counter between its last two reads (the health cadence), per minute or as a share of the time between them.
- `gpu_foreign_utilization_ratio`: the SM share of every process but the generator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from monitor.alerts.record import Labels, label_set
from monitor.collection import xid as xid_catalogue
from monitor.collection.sampler import process_utilization

#: The counters turned into rates: value name -> (snapshot field, multiplier of "per second").
_RATES = {
    "gpu_pcie_replays_per_min": ("pcie_replay_total", 60.0),
    "gpu_power_throttle_ratio": ("power_throttle_s", 1.0),
    "gpu_thermal_throttle_ratio": ("thermal_throttle_s", 1.0),
}


def _flag(*flags: bool | None) -> float | None:
    known = [f for f in flags if f is not None]
    return None if not known else (1.0 if any(known) else 0.0)


class GpuValues:
    """Keep what the GPU rules need across ticks (recent Xids, the last counter reads) and compute the values.

    Args:
        xid_window_s: how long an Xid keeps its value above 0 (and so its alert active).
    """

    def __init__(self, xid_window_s: float = 900.0) -> None:
        self.xid_window_s = xid_window_s
        self._xids: dict[Labels, deque[tuple[float, str]]] = {}
        self._counters: dict[tuple[Labels, str], tuple[float, float]] = {}
        self._rates: dict[tuple[Labels, str], float] = {}

    def __call__(self, snapshot: Any, host: str) -> dict[Labels, dict[str, float | None]]:
        """Return this snapshot's values per (host, gpu)."""
        gpus: Iterable[Any] = getattr(snapshot, "gpus", snapshot) or ()
        now_s = getattr(snapshot, "time_ns", 0) / 1e9
        generator_pid = getattr(snapshot, "generator_pid", None)
        values: dict[Labels, dict[str, float | None]] = {}
        for gpu in gpus:
            labels = label_set(host=host, gpu=str(gpu.index))
            used, total = getattr(gpu, "memory_used_bytes", None), getattr(gpu, "memory_total_bytes", None)
            temperature = getattr(gpu, "temperature_c", None)
            entry: dict[str, float | None] = {
                "gpu_up": 1.0 if gpu.up else 0.0,
                "gpu_memory_ratio": used / total if used is not None and total else None,
                "gpu_temperature_c": None if temperature is None else float(temperature),
            }
            entry.update(self._xid_values(labels, gpu, now_s))
            entry["gpu_memory_rows_pending"] = _flag(
                getattr(gpu, "remapped_rows_pending", None), getattr(gpu, "retired_pages_pending", None)
            )
            entry["gpu_memory_rows_failed"] = _flag(getattr(gpu, "remapped_rows_failed", None))
            entry.update(self._rate_values(labels, gpu, now_s))
            if hasattr(gpu, "process_utilization"):
                entry["gpu_foreign_utilization_ratio"] = process_utilization(gpu, generator_pid)[1]
            values[labels] = entry
        return values

    def _xid_values(self, labels: Labels, gpu: Any, now_s: float) -> dict[str, float | None]:
        if getattr(gpu, "xid_total", None) is None:
            return {"gpu_xid_reset_required": None, "gpu_xid_severe": None, "gpu_xid_other": None}
        recent = self._xids.setdefault(labels, deque())
        for event in getattr(gpu, "xid_events", ()):
            recent.append((event.time_ns / 1e9, xid_catalogue.tier(event.xid)))
        while recent and recent[0][0] < now_s - self.xid_window_s:
            recent.popleft()
        tiers = [tier for _, tier in recent]
        return {
            "gpu_xid_reset_required": float(tiers.count("fatal")),
            "gpu_xid_severe": float(tiers.count("severe")),
            "gpu_xid_other": float(tiers.count("warning")),
        }

    def _rate_values(self, labels: Labels, gpu: Any, now_s: float) -> dict[str, float | None]:
        fresh = getattr(gpu, "health_age_s", None) == 0
        out: dict[str, float | None] = {}
        for name, (attribute, scale) in _RATES.items():
            key = (labels, name)
            value = getattr(gpu, attribute, None)
            if value is None:
                self._counters.pop(key, None)
                self._rates.pop(key, None)
            elif fresh:
                previous = self._counters.get(key)
                self._counters[key] = (now_s, float(value))
                if previous is not None and now_s > previous[0] and value >= previous[1]:
                    self._rates[key] = (value - previous[1]) / (now_s - previous[0]) * scale
                elif previous is not None:  # the counter went back: the driver reloaded; start again
                    self._rates.pop(key, None)
            out[name] = self._rates.get(key)
        return out
