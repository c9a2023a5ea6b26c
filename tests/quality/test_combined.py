"""The combined score's weights, renormalisation, static cap, rating, threshold and CLIP calibration."""

from __future__ import annotations

import pytest

from monitor.quality.combined import ClipCalibration, combine


def test_all_parts_use_the_seed_weights() -> None:
    combined = combine(clip=0.8, smoothness=0.9, rating=5)
    assert combined is not None
    assert combined.score == pytest.approx(0.5 * 0.8 + 0.3 * 0.9 + 0.2 * 1.0)
    assert combined.parts_used == ("clip", "smoothness", "rating")
    assert not combined.low_quality


@pytest.mark.parametrize(
    ("parts", "expected", "used"),
    [
        ({"clip": 0.8, "smoothness": 0.9}, (0.5 * 0.8 + 0.3 * 0.9) / 0.8, "clip,smoothness"),
        ({"smoothness": 0.9, "rating": 1}, (0.3 * 0.9 + 0.2 * 0.0) / 0.5, "smoothness,rating"),
        ({"smoothness": 0.9}, 0.9, "smoothness"),
        ({"rating": 4}, 0.75, "rating"),
    ],
    ids=["no-rating", "no-clip", "smoothness-only", "rating-only"],
)
def test_missing_parts_renormalise_the_weights_and_are_named(
    parts: dict[str, float], expected: float, used: str
) -> None:
    combined = combine(**parts)  # type: ignore[arg-type]
    assert combined is not None
    assert combined.score == pytest.approx(expected)
    assert combined.parts_text == used


def test_nothing_to_combine_gives_none() -> None:
    assert combine() is None
    assert combine(i2v=0.9) is None  # i2v weighs 0 until calibrated


def test_a_static_clip_cannot_pass_as_perfectly_smooth() -> None:
    combined = combine(smoothness=0.99, static=True)
    assert combined is not None
    assert combined.score == pytest.approx(0.5)
    assert combined.parts_used == ("smoothness(static)",)
    assert combined.low_quality


def test_threshold_and_weights_are_configurable() -> None:
    default, strict = combine(smoothness=0.65), combine(smoothness=0.65, threshold=0.7)
    assert default is not None
    assert strict is not None
    assert not default.low_quality
    assert strict.low_quality
    weighted = combine(clip=1.0, i2v=0.0, weights={"clip": 1.0, "i2v": 1.0})
    assert weighted is not None
    assert weighted.score == pytest.approx(0.5)
    assert weighted.parts_used == ("clip", "i2v")


@pytest.mark.parametrize(("cosine", "part"), [(0.15, 0.0), (0.20, 0.0), (0.275, 0.5), (0.35, 1.0), (0.4, 1.0)])
def test_fixed_band_maps_cosine_020_to_0_and_035_to_1(cosine: float, part: float) -> None:
    assert ClipCalibration().part(cosine) == pytest.approx(part)


def test_baseline_maps_the_deployment_median_to_075_and_judges_by_its_spread() -> None:
    calibration = ClipCalibration(min_samples=5, size=50)
    for cosine in (0.28, 0.29, 0.30, 0.31, 0.32):
        calibration.observe(cosine)
    sd = 1.4826 * 0.01
    assert calibration.part(0.30) == pytest.approx(0.75)
    assert calibration.part(0.30 + sd) == pytest.approx(1.0)
    assert calibration.part(0.30 - 3 * sd) == pytest.approx(0.0, abs=1e-9)
    assert calibration.part(0.10) == 0.0
