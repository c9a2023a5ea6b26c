"""Decide whether a job fits the GPU's free memory, and degrade its resolution or frames until it does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from generator.validation import JobParams

GiB = 1024**3
# The design's starting table (ARCHITECTURE.md §6): peak GPU memory of a 16-frame job by resolution, and the
# cost of each frame beyond 16. Measured figures replace it once the monitor answers (the recommendation issue).
PEAK_16_FRAMES_BYTES = {256: 6 * GiB, 512: 12 * GiB, 768: 16 * GiB, 1024: 20 * GiB}
PER_EXTRA_FRAME_BYTES = int(0.15 * GiB)
# Use at most this share of the card, as the design's sources advise.
USABLE_SHARE = 0.8
DEGRADE_RESOLUTION = {1024: 768, 768: 512, 512: 256}
DEGRADE_FRAMES = {32: 24, 24: 16, 16: 8}


def table_estimate(params: JobParams) -> int:
    """Return the table's peak-memory estimate for a job, in bytes."""
    extra_frames = max(params.num_frames - 16, 0)
    return PEAK_16_FRAMES_BYTES[params.resolution] + extra_frames * PER_EXTRA_FRAME_BYTES


@dataclass(frozen=True)
class Admission:
    """The verdict for one job: the parameters to run (None: refused) and what was changed and why."""

    params: JobParams | None
    notes: tuple[str, ...]
    estimate_bytes: int | None


def admit(
    params: JobParams,
    memory: Callable[[], tuple[int, int]] | None,
    estimate: Callable[[JobParams], int] = table_estimate,
    resident_bytes: int = 0,
) -> Admission:
    """Admit, degrade or refuse a job against (free, total) device memory; no memory reader means a CPU.

    `resident_bytes` is what this process already holds (the model's weights), which the estimate includes.
    Degradation lowers the resolution first (1024 → 768 → 512 → 256), then the frames (32 → 24 → 16 → 8).
    """
    if memory is None:
        return Admission(params, (), None)
    free, total = memory()
    budget = min(free + resident_bytes, int(total * USABLE_SHARE))
    notes: list[str] = []
    current = params
    while True:
        need = estimate(current)
        if need <= budget:
            return Admission(current, tuple(notes), need)
        smaller = _degrade(current)
        if smaller is None:
            notes.append(
                f"refused: even {current.resolution}p with {current.num_frames} frames needs about "
                f"{need / GiB:.1f} GB, and {budget / GiB:.1f} GB can be used now"
            )
            return Admission(None, tuple(notes), need)
        notes.append(
            f"degraded {current.resolution}p/{current.num_frames} frames to {smaller.resolution}p/"
            f"{smaller.num_frames} frames: about {need / GiB:.1f} GB needed, {budget / GiB:.1f} GB usable"
        )
        current = smaller


def _degrade(params: JobParams) -> JobParams | None:
    if params.resolution in DEGRADE_RESOLUTION:
        return replace(params, resolution=DEGRADE_RESOLUTION[params.resolution])
    if params.num_frames in DEGRADE_FRAMES:
        return replace(params, num_frames=DEGRADE_FRAMES[params.num_frames])
    if params.num_frames > 8:
        return replace(params, num_frames=8)
    return None
