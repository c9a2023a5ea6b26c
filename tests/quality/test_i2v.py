"""VBench-I2V's i2v_subject: the formula, a drift it catches, and the real CLIP vision tower behind it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.quality.clip_score import ClipScorer
from monitor.quality.frames import read_clip, read_image
from monitor.quality.i2v import ImageEncoder, i2v_subject, score_with


class PixelEncoder:
    """Deterministic stand-in encoder: 16x16 grey pixels, zero-mean, normalised (a correlation)."""

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return one normalised row per image."""
        rows = []
        for image in images:
            small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
            row = small.astype(np.float64).ravel()
            row -= row.mean()
            rows.append(row / np.linalg.norm(row))
        return np.stack(rows)


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_formula_weights_max_to_input_and_mean_and_min_consecutive() -> None:
    frames = np.stack([_unit(1, 0), _unit(1, 1), _unit(0, 1)])
    scored = i2v_subject(_unit(1, 0), frames)
    cos45 = float(np.cos(np.pi / 4))
    assert scored.max_input_cos == pytest.approx(1.0)
    assert scored.mean_consecutive_cos == pytest.approx(cos45)
    assert scored.min_consecutive_cos == pytest.approx(cos45)
    assert scored.mean_input_cos == pytest.approx((1 + cos45 + 0) / 3)
    assert scored.score == pytest.approx(0.4 * 1.0 + 0.3 * cos45 + 0.3 * cos45)


def test_negative_cosines_count_as_zero_as_in_vbench() -> None:
    scored = i2v_subject(_unit(1, 0), np.stack([_unit(-1, 0), _unit(1, 0)]))
    assert scored.score == pytest.approx(0.4 * 1.0)


def test_a_clip_drifting_from_the_input_scores_lower_than_one_keeping_it(
    clips: dict[str, Path], input_png: Path
) -> None:
    encoder: ImageEncoder = PixelEncoder()
    image = read_image(input_png)
    keeping = score_with(encoder, image, read_clip(clips["keeping"]).sampled_frames)
    drifting = score_with(encoder, image, read_clip(clips["drifting"]).sampled_frames)
    assert keeping.score > 0.9
    assert drifting.score < keeping.score - 0.1


def test_clip_vision_tower_serves_as_the_encoder(clip_dir: Path, clips: dict[str, Path], input_png: Path) -> None:
    clip = ClipScorer.from_dir(clip_dir)
    image, frames = read_image(input_png), read_clip(clips["keeping"], clip_frames=4).sampled_frames
    scored = score_with(clip, image, frames)
    features = clip.encode_images([image, *frames])
    assert scored == i2v_subject(features[0], features[1:])
    assert 0.0 <= scored.score <= 1.0
