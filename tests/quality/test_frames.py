"""Decoding clips and input images, and the reasons given when they cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.quality.frames import UnreadableClip, evenly_spaced, read_clip, read_image

from . import synthetic


def test_read_clip_gives_flow_frames_at_256_and_evenly_sampled_full_frames(clips: dict[str, Path]) -> None:
    clip = read_clip(clips["pan_512"], clip_frames=4)
    assert clip.frame_count == 16
    assert (clip.width, clip.height) == (512, 512)
    assert len(clip.flow_frames) == 16
    assert {f.shape for f in clip.flow_frames} == {(256, 256, 3)}
    assert [f.shape for f in clip.sampled_frames] == [(512, 512, 3)] * 4


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [(16, 4, [0, 5, 10, 15]), (3, 16, [0, 1, 2]), (10, 1, [0])],
)
def test_evenly_spaced_includes_both_ends(total: int, count: int, expected: list[int]) -> None:
    assert evenly_spaced(total, count) == expected


def test_unreadable_clips_say_why(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    one_frame = synthetic.write_mp4(synthetic.frozen()[:1], tmp_path / "one.mp4")
    with pytest.raises(UnreadableClip, match="not found"):
        read_clip(tmp_path / "missing.mp4")
    with pytest.raises(UnreadableClip, match="cannot decode"):
        read_clip(garbage)
    with pytest.raises(UnreadableClip, match="at least 2"):
        read_clip(one_frame)


def test_read_image_returns_rgb_and_says_why_it_cannot(tmp_path: Path, input_png: Path) -> None:
    assert read_image(input_png).shape == (256, 256, 3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(UnreadableClip, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(UnreadableClip, match="cannot read"):
        read_image(tmp_path / "bad.png")
