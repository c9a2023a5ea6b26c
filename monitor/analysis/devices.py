"""The GPUs the sampler has recorded: each device's model name, and its memory as last sampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.sizing import USABLE_SHARE, usable_bytes
from common.units import NS_PER_S
from monitor.storage.base import Store
from monitor.storage.schema import GPU_SAMPLE, iso_from_us

#: A sample older than this does not describe the GPU "now" (the sampler ticks every 2 s by default).
MAX_SAMPLE_AGE_S = 120
#: The sampler writes every GPU of a host in each tick (every 0.5-2 s), so a host's samples of the last few seconds
#: hold each of its GPUs' latest state: /predict reads those (a few rows) rather than the 120 s span (240 rows per
#: GPU at 0.5 s sampling, most of the request's time).
RECENT_S = 10
NAME_LOOKBACK_S = 30 * 86_400


@dataclass(frozen=True)
class DeviceState:
    """One GPU as last sampled: its model and memory (bytes), and what the generator's process holds of it."""

    host: str
    gpu: str
    model: str
    memory_total_bytes: int
    memory_used_bytes: int
    generator_memory_bytes: int | None
    time_ns: int

    @property
    def usage_ratio(self) -> float:
        """Return the share of the card in use (all processes)."""
        return self.memory_used_bytes / self.memory_total_bytes

    @property
    def others_bytes(self) -> int:
        """Return what processes other than the generator hold (all of it when the generator is not attributed)."""
        return max(self.memory_used_bytes - (self.generator_memory_bytes or 0), 0)

    @property
    def available_bytes(self) -> int:
        """Return what one job may use at its peak, as the generator's admission reckons it (common/sizing.py)."""
        return usable_bytes(self.memory_total_bytes, self.memory_used_bytes, self.generator_memory_bytes or 0)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        return {
            "host": self.host,
            "gpu": self.gpu,
            "model": self.model,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_used_bytes": self.memory_used_bytes,
            "generator_memory_bytes": self.generator_memory_bytes,
            "usage_ratio": round(self.usage_ratio, 4),
            "available_bytes": self.available_bytes,
            "usable_share": USABLE_SHARE,
            "sampled_at": iso_from_us(self.time_ns // 1000),
        }


def live_devices(store: Store, now_ns: int, host: str | None = None) -> list[DeviceState]:
    """Return each GPU sampled in the last `MAX_SAMPLE_AGE_S` that is up and reports its memory, by host and GPU.

    With a host named, its last `RECENT_S` are read first (see there); the rest of the span only when they hold
    no GPU of it.
    """
    if host:
        recent = _latest(store, now_ns - RECENT_S * NS_PER_S, now_ns, {"host": host})
        if recent:
            return recent
    return _latest(store, now_ns - MAX_SAMPLE_AGE_S * NS_PER_S, now_ns, {"host": host} if host else None)


def _latest(store: Store, start_ns: int, now_ns: int, tags: dict[str, str] | None) -> list[DeviceState]:
    """Return each GPU's latest up sample with its memory in [start_ns, now_ns], by host and GPU."""
    points = store.query_points(GPU_SAMPLE, start_ns, now_ns + NS_PER_S, tags=tags, limit=256, descending=True)
    latest: dict[tuple[str, str], DeviceState] = {}
    for point in points:
        key = (point.tags.get("host", ""), point.tags.get("gpu", ""))
        f = point.fields
        if key in latest or f.get("up") is False:
            continue
        total, used = f.get("memory_total_bytes"), f.get("memory_used_bytes")
        if not isinstance(total, int) or not isinstance(used, int) or total <= 0:
            continue
        own = f.get("generator_memory_bytes")
        name = f.get("name")
        latest[key] = DeviceState(
            host=key[0],
            gpu=key[1],
            model=name if isinstance(name, str) and name else f"gpu {key[1]}",
            memory_total_bytes=total,
            memory_used_bytes=used,
            generator_memory_bytes=own if isinstance(own, int) else None,
            time_ns=point.time_ns,
        )
    return [latest[key] for key in sorted(latest)]


class ModelNames:
    """Map (host, gpu) to the GPU model the sampler recorded there (gpu_sample `name`), each looked up once."""

    def __init__(self, store: Store, end_ns: int) -> None:
        """Look names up in the `NAME_LOOKBACK_S` before `end_ns`."""
        self._store, self._end_ns = store, end_ns
        self._names: dict[tuple[str, str], str] = {}

    def name(self, host: str, gpu: str) -> str:
        """Return the model name, `cpu` for CPU jobs, or `gpu <index>` when the sampler never named it."""
        key = (host, gpu)
        if key not in self._names:
            self._names[key] = self._lookup(host, gpu)
        return self._names[key]

    def known(self, host: str, gpu: str) -> bool:
        """Return whether the sampler named this GPU (after `name` looked it up): `cpu` counts as named."""
        return self.name(host, gpu) != f"gpu {gpu}"

    def _lookup(self, host: str, gpu: str) -> str:
        if gpu == "cpu":
            return "cpu"
        start_ns = self._end_ns - NAME_LOOKBACK_S * NS_PER_S
        tags = {"host": host, "gpu": gpu}
        for point in self._store.query_points(
            GPU_SAMPLE, start_ns, self._end_ns + NS_PER_S, tags=tags, limit=1, descending=True
        ):
            name = point.fields.get("name")
            if isinstance(name, str) and name:
                return name
        return f"gpu {gpu}"
