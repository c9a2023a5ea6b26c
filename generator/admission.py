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


class MemoryEstimate(int):
    """A peak-memory estimate in bytes that also says where it came from (admission puts that in the notes)."""

    source: str

    def __new__(cls, value: int, source: str) -> MemoryEstimate:
        """Return `value` bytes, remembering `source`."""
        estimate = super().__new__(cls, value)
        estimate.source = source
        return estimate


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
    An estimate that says where it came from (a `MemoryEstimate`) has that said first in the notes.
    Degradation alternates, resolution first: 1024p/32 → 768p/32 → 768p/24 → 512p/24 → 512p/16 → 256p/16 → 256p/8.
    """
    if memory is None:
        return Admission(params, (), None)
    free, total = memory()
    budget = min(free + resident_bytes, int(total * USABLE_SHARE))
    notes: list[str] = []
    current = params
    while True:
        need = estimate(current)
        said = (need.source,) if isinstance(need, MemoryEstimate) else ()
        if need <= budget:
            return Admission(current, (*said, *notes), need)
        smaller = next_smaller(current)
        if smaller is None:
            notes.append(
                f"refused: even {current.resolution}p with {current.num_frames} frames needs about "
                f"{need / GiB:.1f} GB, and {budget / GiB:.1f} GB can be used now"
            )
            return Admission(None, (*said, *notes), need)
        notes.append(
            f"degraded {current.resolution}p/{current.num_frames} frames to {smaller.resolution}p/"
            f"{smaller.num_frames} frames: about {need / GiB:.1f} GB needed, {budget / GiB:.1f} GB usable"
        )
        current = smaller


def _frames_rank(num_frames: int) -> int:
    return 0 if num_frames <= 8 else 1 if num_frames <= 16 else 2 if num_frames <= 24 else 3


def next_smaller(params: JobParams) -> JobParams | None:
    """Step down whichever of resolution and frames is higher on its ladder, resolution first on a tie."""
    resolution_rank = sorted(PEAK_16_FRAMES_BYTES).index(params.resolution)
    if resolution_rank == 0 and params.num_frames <= 8:
        return None
    if resolution_rank >= _frames_rank(params.num_frames):
        return replace(params, resolution=DEGRADE_RESOLUTION[params.resolution])
    frames = params.num_frames
    return replace(params, num_frames=24 if frames > 24 else 16 if frames > 16 else 8)
