"""Motion smoothness, flicker and dynamic degree on synthetic H.264 clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.quality import motion
from monitor.quality.frames import read_clip


@pytest.fixture(scope="module")
def scores(clips: dict[str, Path]) -> dict[str, motion.MotionScore]:
    """Score every synthetic clip once."""
    return {name: motion.analyse(read_clip(path).flow_frames) for name, path in clips.items()}


@pytest.mark.parametrize("worse", ["jittery", "shaking", "flickering"])
def test_smooth_pan_scores_higher_than_a_degraded_one(scores: dict[str, motion.MotionScore], worse: str) -> None:
    assert scores["smooth"].smoothness > scores[worse].smoothness + 0.3


def test_steady_pan_has_almost_no_jerk_and_constant_shake_about_two(
    scores: dict[str, motion.MotionScore],
) -> None:
    assert scores["smooth"].jerk < 0.05
    assert scores["smooth"].smoothness > 0.9
    assert 1.5 < scores["shaking"].jerk < 2.5


def test_flicker_is_penalised_through_brightness_not_motion(scores: dict[str, motion.MotionScore]) -> None:
    assert scores["flickering"].flicker_penalty > 0.5
    assert scores["smooth"].flicker_penalty < 0.05


def test_frozen_clip_is_static_not_just_smooth(scores: dict[str, motion.MotionScore]) -> None:
    frozen = scores["frozen"]
    assert frozen.static
    assert frozen.dynamic_degree == 0.0
    assert frozen.mean_flow < 1e-3
    assert not scores["smooth"].static
    assert scores["smooth"].dynamic_degree == 1.0


def test_same_motion_scores_the_same_at_256_and_512(scores: dict[str, motion.MotionScore]) -> None:
    low, high = scores["pan_256"], scores["pan_512"]
    assert high.mean_flow == pytest.approx(low.mean_flow, rel=0.03)
    assert high.smoothness == pytest.approx(low.smoothness, abs=0.02)
    assert high.static == low.static


def test_vbench_temporal_flickering_ranks_flicker_below_a_still_clip(clips: dict[str, Path]) -> None:
    values = {name: motion.temporal_flickering(read_clip(clips[name]).mean_abs_diff) for name in clips}
    assert values["frozen"] > 0.99
    assert values["flickering"] < values["smooth"] < values["frozen"]


@pytest.mark.parametrize(
    ("brightness", "expected"),
    [([0.5] * 8, 0.0), ([0.1 * t for t in range(8)], 0.0), ([0.48, 0.52] * 4, 0.08)],
    ids=["constant", "steady fade", "flicker"],
)
def test_brightness_jitter_is_the_mean_second_difference(brightness: list[float], expected: float) -> None:
    penalty, jitter = motion.flicker_penalty(brightness)
    assert jitter == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= penalty < 1.0


def test_analyse_refuses_a_single_frame(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="two frames"):
        motion.analyse(read_clip(clips["smooth"]).flow_frames[:1])


def test_flow_on_several_threads_gives_the_same_score(clips: dict[str, Path]) -> None:
    frames = read_clip(clips["jittery"]).flow_frames
    assert motion.analyse(frames, workers=3) == motion.analyse(frames)
