"""Recommend the largest parameters whose predicted peak memory, with its margin, fits a GPU's memory now.

Candidates are tried best first, along the ladder the generator degrades by (common/sizing.py: 1024p/32 →
768p/32 → 768p/24 → 512p/24 → 512p/16 → 256p/16 → 256p/8, with the seed's 512p/8 tier in its place), each
with the steps the seed's tiers and card limits pair with its size. The first whose estimate (predicted peak +
margin) is at most the memory usable now wins: the usable share of the card (80%) less what other processes
hold (`monitor.analysis.devices.DeviceState.available_bytes`), so a recommendation never exceeds free memory minus the
margin. The seed's tiers by memory in use (< 60%: 768p/24/80; < 80%: 512p/16/50; else 512p/8/30) are the
floor: measurements may recommend more than the tier, and only step below it when the tier itself does not fit.
An optional time budget skips candidates predicted to take longer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.sizing import USABLE_SHARE
from monitor.analysis.devices import DeviceState
from monitor.analysis.predict import JobShape, Prediction

GB = 1e9

LADDER = (
    (1024, 32, 100),
    (768, 32, 80),
    (768, 24, 80),
    (512, 24, 50),
    (512, 16, 50),
    (512, 8, 30),
    (256, 16, 30),
    (256, 8, 30),
)
SEED_TIERS = ((0.6, (768, 24, 80)), (0.8, (512, 16, 50)), (float("inf"), (512, 8, 30)))


def seed_tier(usage_ratio: float) -> tuple[int, int, int]:
    """Return the seed's tier (resolution, frames, steps) for a share of memory in use."""
    return next(tier for limit, tier in SEED_TIERS if usage_ratio < limit)


def _label(shape: JobShape) -> str:
    return f"{shape.resolution}p/{shape.num_frames} frames/{shape.steps} steps"


@dataclass(frozen=True)
class Candidate:
    """One rung of the ladder as predicted now."""

    prediction: Prediction
    fits_memory: bool
    fits_time: bool

    @property
    def fits(self) -> bool:
        """Return whether it fits both the memory and the time budget."""
        return self.fits_memory and self.fits_time

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        p = self.prediction
        return {
            **p.shape.to_dict(),
            "estimate_bytes": p.estimate_bytes,
            "time_s": round(p.time.value, 3),
            "fits_memory": self.fits_memory,
            "fits_time": self.fits_time,
        }


@dataclass(frozen=True)
class Recommendation:
    """The parameters to pre-fill, what they are predicted to take, and why."""

    device: DeviceState
    chosen: Candidate
    fits: bool
    floor: tuple[int, int, int]
    reason: str
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        p = self.chosen.prediction
        return {
            "basis": "memory",
            "gpu": self.device.to_dict(),
            "recommended": p.shape.to_dict(),
            "fits": self.fits,
            "predicted": {
                "peak_bytes": p.peak_bytes,
                "margin_bytes": p.margin_bytes,
                "estimate_bytes": p.estimate_bytes,
                "time_s": round(p.time.value, 3),
                "time_margin_s": round(p.time.margin, 3),
                "how": p.describe(),
            },
            "floor": dict(zip(("resolution", "num_frames", "steps"), self.floor, strict=True)),
            "reason": self.reason,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def recommend(
    device: DeviceState,
    predict: Callable[[JobShape], Prediction],
    *,
    guidance_scale: float = 9.0,
    max_time_s: float | None = None,
) -> Recommendation:
    """Return the best ladder rung that fits `device` now (see the module docstring)."""
    available = device.available_bytes
    candidates = []
    for resolution, frames, steps in LADDER:
        prediction = predict(JobShape(resolution, frames, steps, guidance_scale))
        candidates.append(
            Candidate(
                prediction,
                fits_memory=prediction.estimate_bytes <= available,
                fits_time=max_time_s is None or prediction.time.value <= max_time_s,
            )
        )
    floor = seed_tier(device.usage_ratio)
    floor_index = next(i for i, rung in enumerate(LADDER) if rung == floor)
    chosen_index = next((i for i, c in enumerate(candidates) if c.fits), None)
    usable = (
        f"{available / GB:.1f} GB usable now on {device.model} {device.host}/{device.gpu} (the "
        f"{device.memory_total_bytes / GB:.1f} GB card less {device.others_bytes / GB:.1f} GB held by other processes,"
        f" within {USABLE_SHARE:.0%} of it)"
    )
    in_use = f"{device.usage_ratio:.0%} of memory in use"
    if chosen_index is None:
        smallest = candidates[-1]
        need = smallest.prediction.estimate_bytes
        why = "does not fit" if not smallest.fits_memory else "is predicted to take longer than the time budget"
        reason = (
            f"nothing fits now: even {_label(smallest.prediction.shape)} needs about {need / GB:.1f} GB with its "
            f"margin and {why}; {usable}: wait for memory to free up"
        )
        return Recommendation(device, smallest, False, floor, reason, tuple(candidates))
    chosen = candidates[chosen_index]
    p = chosen.prediction
    needs = (
        f"needs about {p.estimate_bytes / GB:.1f} GB ({p.memory.value / GB:.1f} GB predicted + "
        f"{p.memory.margin / GB:.1f} GB margin; {p.describe()}) of {usable}; about {p.time.value:.0f} s"
    )
    floor_label = "{}p/{} frames/{} steps".format(*floor)
    if chosen_index < floor_index:
        reason = f"{_label(p.shape)} {needs}: more than the seed tier for {in_use} ({floor_label})"
    elif chosen_index == floor_index:
        reason = f"{_label(p.shape)}, the seed tier for {in_use}, {needs}"
    else:
        tier = candidates[floor_index]
        short = "memory" if not tier.fits_memory else "the time budget"
        reason = (
            f"the seed tier for {in_use} ({floor_label}) does not fit {short} "
            f"(about {tier.prediction.estimate_bytes / GB:.1f} GB with its margin): stepped down to "
            f"{_label(p.shape)}, which {needs}"
        )
    skipped_for_time = [c for c in candidates[:chosen_index] if c.fits_memory and not c.fits_time]
    if skipped_for_time:
        reason += f"; larger sizes fit memory but are predicted to take longer than {max_time_s:g} s"
    return Recommendation(device, chosen, True, floor, reason, tuple(candidates))
