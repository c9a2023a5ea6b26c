"""The combined quality score in [0, 1], its CLIP calibration, and the low-quality flag.

combined = Σ w_p · part_p / Σ w_p over the parts present, with default weights (the seed's):

    clip 0.5 · smoothness 0.3 · rating 0.2 · i2v 0.0 (off until calibrated on real clips)

A part that is missing (no CLIP weights, no rating yet, an unreadable input image) drops out and the rest are
renormalised; `parts_used` names those that counted. Parts:

- clip: the mean prompt-frame cosine mapped to [0, 1] (`ClipCalibration`).
- smoothness: the motion smoothness in [0, 1]; a static clip counts at most `STATIC_SMOOTHNESS_CAP` (nothing
  moving is no evidence of smooth motion) and appears as "smoothness(static)".
- rating: (stars - 1) / 4, so 1 star is 0 and 5 stars is 1.
- i2v: the i2v_subject score, already in [0, 1].

Below `threshold` (default 0.6) the clip is flagged low quality.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_WEIGHTS: Mapping[str, float] = {"clip": 0.5, "smoothness": 0.3, "rating": 0.2, "i2v": 0.0}
DEFAULT_THRESHOLD = 0.6
STATIC_SMOOTHNESS_CAP = 0.5
PART_ORDER = ("clip", "i2v", "smoothness", "rating")

# Fixed band used until the deployment has a baseline: raw CLIP ViT-B/32 cosines live in about 0.20-0.36
# (good vs bad captions 0.34 vs 0.29), so 0.20 maps to 0 and 0.35 to 1.
FIXED_BAND = (0.20, 0.35)
BASELINE_MIN_SAMPLES = 20
BASELINE_SIZE = 500
BASELINE_MEDIAN_PART = 0.75
MIN_SPREAD = 0.005


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


class ClipCalibration:
    """Map a raw prompt-frame cosine to [0, 1] against the deployment's own recent scores.

    Until `min_samples` clips have been scored the fixed band applies (cos 0.20 → 0, 0.35 → 1, linear).
    Then the rolling baseline (the last `size` cosines) sets the scale: the baseline median maps to 0.75, and
    each robust standard deviation (sd = 1.4826·MAD, at least 0.005) moves it by 0.25, so median + 1 sd and
    above is 1, median - 3 sd and below is 0. A clip is judged against what this deployment's model and
    prompts usually reach, which also keeps the mapping right for CLIP models whose cosines sit in another
    band (ViT-L/14 runs lower than ViT-B/32).
    """

    def __init__(self, *, size: int = BASELINE_SIZE, min_samples: int = BASELINE_MIN_SAMPLES) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._min_samples = min_samples

    @property
    def samples(self) -> int:
        """Return how many cosines the baseline holds."""
        return len(self._recent)

    @property
    def capacity(self) -> int:
        """Return how many cosines the baseline keeps at most (the rolling window)."""
        return self._recent.maxlen or 0

    def observe(self, cosine: float) -> None:
        """Add one scored clip's mean cosine to the baseline (after it has been judged)."""
        self._recent.append(cosine)

    def part(self, cosine: float) -> float:
        """Return the CLIP part in [0, 1] for a mean cosine."""
        recent = list(self._recent)  # a copy: a rating may ask from a request thread while the worker observes
        if len(recent) < self._min_samples:
            low, high = FIXED_BAND
            return _clip01((cosine - low) / (high - low))
        median = statistics.median(recent)
        spread = max(MIN_SPREAD, 1.4826 * statistics.median(abs(c - median) for c in recent))
        return _clip01(BASELINE_MEDIAN_PART + 0.25 * (cosine - median) / spread)


def rating_part(stars: int) -> float:
    """Return (stars - 1) / 4 for a rating of 1 to 5."""
    return (stars - 1) / 4.0


@dataclass(frozen=True)
class Combined:
    """The combined score, the parts that made it, and whether it is below the threshold."""

    score: float
    parts_used: tuple[str, ...]
    low_quality: bool

    @property
    def parts_text(self) -> str:
        """Return the parts as stored: comma-separated names."""
        return ",".join(self.parts_used)


def combine(
    *,
    clip: float | None = None,
    smoothness: float | None = None,
    static: bool = False,
    rating: int | None = None,
    i2v: float | None = None,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    threshold: float = DEFAULT_THRESHOLD,
) -> Combined | None:
    """Combine the parts present (each in [0, 1], rating in stars); None when no weighted part is present."""
    if smoothness is not None and static:
        smoothness = min(smoothness, STATIC_SMOOTHNESS_CAP)
    values = {
        "clip": clip,
        "i2v": i2v,
        "smoothness": smoothness,
        "rating": None if rating is None else rating_part(rating),
    }
    used = [name for name in PART_ORDER if values[name] is not None and weights.get(name, 0.0) > 0.0]
    if not used:
        return None
    total = sum(weights[name] for name in used)
    score = sum(weights[name] * float(values[name] or 0.0) for name in used) / total
    labels = tuple("smoothness(static)" if name == "smoothness" and static else name for name in used)
    return Combined(score=score, parts_used=labels, low_quality=score < threshold)
