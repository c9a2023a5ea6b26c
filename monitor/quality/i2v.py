"""Image-to-video consistency: VBench-I2V's i2v_subject formula on image embeddings.

    i2v_subject = 0.4·max_t cos(input, frame_t) + 0.3·mean_t cos(frame_t, frame_t+1)
                  + 0.3·min_t cos(frame_t, frame_t+1),   every cosine clipped at 0 first, as VBench does.

VBench-I2V computes it on DINO features; here it runs on whatever `ImageEncoder` is given: the CLIP
vision tower already loaded for the CLIP score, or the generator's own I2VGen-XL image encoder (a CLIP
ViT-H/14) where real weights exist. Values are comparable within one encoder, not across encoders or with
VBench's numbers.

The max term rewards a clip that matches the input in any one frame, so a clip that starts on the input and
then drifts away loses only through its consecutive terms; `mean_input_cos` (the mean over frames of the
cosine to the input) is reported beside it because it shows such a drift directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

MAX_WEIGHT = 0.4
MEAN_WEIGHT = 0.3
MIN_WEIGHT = 0.3


class ImageEncoder(Protocol):
    """Turn images into embeddings whose cosine says how alike they look."""

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return one L2-normalised row per RGB uint8 image."""
        ...


@dataclass(frozen=True)
class I2VScore:
    """The i2v_subject score and its three terms."""

    score: float
    max_input_cos: float
    mean_input_cos: float
    mean_consecutive_cos: float
    min_consecutive_cos: float


def i2v_subject(input_features: np.ndarray, frame_features: np.ndarray) -> I2VScore:
    """Score frames (rows, normalised, in order) against the input image's normalised embedding.

    Raises:
        ValueError: fewer than two frames.
    """
    if len(frame_features) < 2:
        raise ValueError("i2v_subject needs at least two frames")
    to_input = np.clip(frame_features @ input_features, 0.0, 1.0)
    consecutive = np.clip(np.sum(frame_features[1:] * frame_features[:-1], axis=1), 0.0, 1.0)
    max_input = float(to_input.max())
    mean_consec, min_consec = float(consecutive.mean()), float(consecutive.min())
    return I2VScore(
        score=MAX_WEIGHT * max_input + MEAN_WEIGHT * mean_consec + MIN_WEIGHT * min_consec,
        max_input_cos=max_input,
        mean_input_cos=float(to_input.mean()),
        mean_consecutive_cos=mean_consec,
        min_consecutive_cos=min_consec,
    )


def score_with(encoder: ImageEncoder, input_image: np.ndarray, frames: Sequence[np.ndarray]) -> I2VScore:
    """Embed the input image and the frames in one batch with `encoder`, then apply `i2v_subject`."""
    features = encoder.encode_images([input_image, *frames])
    return i2v_subject(features[0], features[1:])
