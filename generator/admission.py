"""Decide whether a job fits the GPU's free memory, and degrade its resolution or frames until it does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from common.sizing import GiB, next_smaller_size, table_peak_bytes, usable_bytes
from generator.validation import JobParams


class MemoryEstimate(int):
    """A peak-memory estimate in bytes that also says where it came from (admission puts that in the notes).

    The monitor's answer also predicts the job's time: `run_s` for a size the generator's process has run, and
    `warmup_s`, what the first job of that size in a process adds once. None where the answer did not say (the
    table, a monitor from before the warm-up was learned).
    """

    source: str
    run_s: float | None
    warmup_s: float | None

    def __new__(
        cls, value: int, source: str, run_s: float | None = None, warmup_s: float | None = None
    ) -> MemoryEstimate:
        """Return `value` bytes, remembering `source` and the predicted seconds."""
        estimate = super().__new__(cls, value)
        estimate.source, estimate.run_s, estimate.warmup_s = source, run_s, warmup_s
        return estimate

    def said(self, source: str) -> MemoryEstimate:
        """Return the same estimate, saying `source` instead (a kept answer, reused)."""
        return MemoryEstimate(int(self), source, self.run_s, self.warmup_s)


def table_estimate(params: JobParams) -> int:
    """Return the table's peak-memory estimate for a job, in bytes."""
    return table_peak_bytes(params.resolution, params.num_frames)


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
    budget = usable_bytes(total, total - free, resident_bytes)
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


def next_smaller(params: JobParams) -> JobParams | None:
    """Return the job one step down the degradation ladder (common/sizing.py), or None at its floor."""
    smaller = next_smaller_size(params.resolution, params.num_frames)
    if smaller is None:
        return None
    return replace(params, resolution=smaller[0], num_frames=smaller[1])
