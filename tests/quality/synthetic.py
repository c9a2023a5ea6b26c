"""Synthetic clips for the quality tests: a textured scene seen through a moving window, written as H.264."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np

FRAMES = 16
PAN_PX_AT_256 = 8  # px per frame at 256 px: above VBench's 6 px "moving" threshold


def texture(size: int, seed: int = 0) -> np.ndarray:
    """Return a smooth random RGB texture (size x size), rich enough for optical flow."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32)
    big = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(cv2.GaussianBlur(big, (0, 0), 2.0), 0, 255).astype(np.uint8)


def window_clip(offsets_x: Sequence[int], side: int = 256, scale: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Return frames cut from one texture at horizontal offsets (given at 256-px scale), `side` px square.

    The texture is drawn at `scale`·256 resolution and frames are scaled to `side`, so the same offsets give
    the same motion (as a fraction of the frame) at every output size.
    """
    base = 256 * scale
    if min(offsets_x) < 0 or max(offsets_x) > 256:
        raise ValueError("offsets must lie in 0..256")
    canvas = texture(2 * base + 64 * scale, seed)  # one canvas per seed and scale, whatever the offsets
    frames = []
    for x in offsets_x:
        left = int(x * scale) + 32 * scale
        crop = canvas[32 * scale : 32 * scale + base, left : left + base]
        frames.append(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA) if side != base else crop)
    return frames


def smooth_pan(side: int = 256, scale: int = 1) -> list[np.ndarray]:
    """Return a steady pan."""
    return window_clip([PAN_PX_AT_256 * t for t in range(FRAMES)], side, scale)


def jittery_pan(seed: int = 1) -> list[np.ndarray]:
    """Return the steady pan with random jitter of up to ±4 px added to each frame."""
    rng = np.random.default_rng(seed)
    return window_clip([4 + PAN_PX_AT_256 * t + int(rng.integers(-4, 5)) for t in range(FRAMES)])


def shake(amplitude: int = PAN_PX_AT_256) -> list[np.ndarray]:
    """Return a back-and-forth shake of constant magnitude (every pair moves 2·amplitude px)."""
    return window_clip([amplitude * (t % 2) * 2 for t in range(FRAMES)])


def flicker(amplitude: float = 20.0) -> list[np.ndarray]:
    """Return the steady pan with brightness alternately raised and lowered."""
    frames = smooth_pan()
    return [
        np.clip(f.astype(np.float32) + (amplitude if t % 2 else -amplitude), 0, 255).astype(np.uint8)
        for t, f in enumerate(frames)
    ]


def frozen() -> list[np.ndarray]:
    """Return one frame repeated."""
    return window_clip([0] * FRAMES)


def keeping(seed: int = 0) -> list[np.ndarray]:
    """Return a slow 1 px-per-frame pan that keeps the input image (`window_clip([0])[0]`) in view."""
    return window_clip(list(range(FRAMES)), seed=seed)


def drifting(seed: int = 0) -> list[np.ndarray]:
    """Return frames that start on the input image and morph away from it, new content every frame."""
    start = window_clip([0], seed=seed)[0].astype(np.float32)
    weights = np.linspace(0.0, 0.9, FRAMES)
    return [((1 - a) * start + a * texture(256, seed + 100 + t)).astype(np.uint8) for t, a in enumerate(weights)]


def write_mp4(frames: Sequence[np.ndarray], path: Path, fps: int = 8) -> Path:
    """Write RGB frames as H.264 (yuv420p, near-lossless) with PyAV and return the path."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def job_folder(root: Path, job_id: str, clip: Path, image: Path | None) -> Path:
    """Lay out a job as the generator does, <outputs>/<job_id>/video.mp4 and input.png; return the video."""
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / "video.mp4").write_bytes(clip.read_bytes())
    if image is not None:
        (folder / "input.png").write_bytes(image.read_bytes())
    return folder / "video.mp4"
