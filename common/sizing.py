"""What a job may ask for and what it is expected to need: allowed parameters, the memory table, the ladder down.

Both processes read these: the generator validates, admits and degrades with them; the monitor predicts and
recommends within them. Changing an allowed value here changes it everywhere at once.
"""

from __future__ import annotations

from typing import Any

GiB = 1024**3

RESOLUTIONS = (256, 512, 768, 1024)
# Inclusive bounds of the numeric job parameters.
LIMITS: dict[str, tuple[float, float]] = {
    "num_frames": (8, 32),
    "steps": (10, 100),
    "guidance_scale": (1, 20),
    "fps": (4, 24),
    "seed": (0, 2**32 - 1),
}
DEFAULTS: dict[str, Any] = {"resolution": 512, "num_frames": 16, "steps": 50, "guidance_scale": 9.0, "fps": 8}
# What a generator on a CPU offers first: the smallest job the API accepts (about 10 s with the tiny model on two
# idle cores), where DEFAULTS would take the tiny model many minutes. The monitor recommends larger when it has
# measured that the CPU is fast enough.
CPU_FIRST_CLIP: dict[str, Any] = {**DEFAULTS, "resolution": 256, "num_frames": 8, "steps": 10}


def form_defaults(device_type: str) -> dict[str, Any]:
    """Return the parameters a job form starts from on a device type ("cuda" or "cpu")."""
    return dict(DEFAULTS if device_type == "cuda" else CPU_FIRST_CLIP)


# The design's starting table: peak GPU memory of a 16-frame job by resolution, and the cost of each frame
# beyond 16. Measured jobs replace it as soon as the monitor has learned from some.
PEAK_16_FRAMES_BYTES = {256: 6 * GiB, 512: 12 * GiB, 768: 16 * GiB, 1024: 20 * GiB}
PER_EXTRA_FRAME_BYTES = int(0.15 * GiB)
# Admit a job only while what it needs stays within this share of the card, as the design's sources advise.
USABLE_SHARE = 0.8
# One step down in resolution, for degradation (1024p -> 768p -> 512p -> 256p).
SMALLER_RESOLUTION = {1024: 768, 768: 512, 512: 256}


def usable_bytes(total_bytes: int, used_bytes: int, own_bytes: int) -> int:
    """Return what one job may use at its peak on a card: all but what other processes hold, within USABLE_SHARE.

    `used_bytes` is what every process holds, `own_bytes` what the generator's process holds of it (its weights,
    which every job's predicted peak includes, so they count as usable). The generator's admission and the
    monitor's /predict both decide with this, so "fits" means the same on the page and in the queue.
    """
    others_bytes = max(used_bytes - own_bytes, 0)
    return max(min(total_bytes - others_bytes, int(total_bytes * USABLE_SHARE)), 0)


def table_peak_bytes(resolution: int, num_frames: int) -> int:
    """Return the table's peak-memory estimate for a job of this size, in bytes."""
    return PEAK_16_FRAMES_BYTES[resolution] + max(num_frames - 16, 0) * PER_EXTRA_FRAME_BYTES


def _frames_rank(num_frames: int) -> int:
    return 0 if num_frames <= 8 else 1 if num_frames <= 16 else 2 if num_frames <= 24 else 3


def next_smaller_size(resolution: int, num_frames: int) -> tuple[int, int] | None:
    """Return the next (resolution, frames) down the degradation ladder, or None at its floor.

    Whichever of resolution and frames is higher on its ladder steps down, resolution first on a tie:
    1024p/32 -> 768p/32 -> 768p/24 -> 512p/24 -> 512p/16 -> 256p/16 -> 256p/8.
    """
    resolution_rank = RESOLUTIONS.index(resolution)
    if resolution_rank == 0 and num_frames <= 8:
        return None
    if resolution_rank >= _frames_rank(num_frames):
        return SMALLER_RESOLUTION[resolution], num_frames
    return resolution, 24 if num_frames > 24 else 16 if num_frames > 16 else 8
