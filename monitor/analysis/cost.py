"""What a clip cost: its GPU energy at a price per kWh plus its GPU time at a price per GPU-hour.

Both prices are the operator's (`--price-per-kwh` / MONITOR_PRICE_PER_KWH and `--price-per-gpu-hour` /
MONITOR_PRICE_PER_GPU_HOUR, in one currency of their choosing); either may be left unset, and a cost is then
the other part alone, or blank when neither is set. Costs are computed when read, from the energy and
GPU-seconds stored with each job, so a price changed today reprices every report, past jobs included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

J_PER_KWH = 3.6e6
Cost = float | None
S_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Prices:
    """The configured prices; None where not set."""

    per_kwh: float | None = None
    per_gpu_hour: float | None = None

    @property
    def configured(self) -> bool:
        """Return whether any price is set."""
        return self.per_kwh is not None or self.per_gpu_hour is not None

    def energy_cost(self, energy_j: float | None) -> float | None:
        """Return the energy's cost, or None without an energy or a price per kWh."""
        if energy_j is None or self.per_kwh is None:
            return None
        return energy_j / J_PER_KWH * self.per_kwh

    def gpu_time_cost(self, gpu_seconds: float | None) -> float | None:
        """Return the GPU time's cost, or None without GPU time or a price per GPU-hour."""
        if gpu_seconds is None or self.per_gpu_hour is None:
            return None
        return gpu_seconds / S_PER_HOUR * self.per_gpu_hour

    def cost(self, energy_j: float | None, gpu_seconds: float | None) -> tuple[Cost, Cost, Cost]:
        """Return (energy cost, GPU-time cost, their sum over the parts known), each None when unknown."""
        energy, gpu_time = self.energy_cost(energy_j), self.gpu_time_cost(gpu_seconds)
        parts = [part for part in (energy, gpu_time) if part is not None]
        return energy, gpu_time, (sum(parts) if parts else None)

    def to_dict(self) -> dict[str, float | None]:
        """Return the JSON view."""
        return {"per_kwh": self.per_kwh, "per_gpu_hour": self.per_gpu_hour}


NO_PRICES = Prices()


def rounded(value: float | None, digits: int = 6) -> float | None:
    """Round a cost for a report (a millionth of the currency unit), keeping None."""
    return None if value is None else round(value, digits)


def gpu_seconds_of(fields: Mapping[str, object], gpu: str) -> float | None:
    """Return a job summary's GPU-seconds: its `gpu_seconds`, or for summaries written before it, run_s on a GPU."""
    for value in (fields.get("gpu_seconds"), fields.get("run_s") if gpu != "cpu" else None):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def energy_of(fields: Mapping[str, object]) -> float | None:
    """Return a job summary's energy in joules, or None before it is known."""
    value = fields.get("energy_j")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
