"""Read a finished clip and its input image into the frames each scorer needs, in one decoding pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

FLOW_SHORT_SIDE = 256
CLIP_FRAMES = 16
# A generated clip is 8-64 frames; the cap bounds memory when something else lands at the path.
MAX_FRAMES = 512


class UnreadableClip(Exception):
    """The clip (or its input image) cannot be read; the message is the reason shown to users."""


@dataclass(frozen=True)
class ClipFrames:
    """One decoded clip.

    `flow_frames` are every frame, RGB uint8, resized to `FLOW_SHORT_SIDE` on the short side (optical flow);
    `sampled_frames` are `CLIP_FRAMES` frames picked evenly at full resolution (CLIP resizes them itself).
    `mean_abs_diff` is the mean absolute difference of consecutive full-resolution frames (0..255), the
    input of VBench's temporal flickering, which is defined at the clip's own resolution.
    """

    flow_frames: list[np.ndarray]
    sampled_frames: list[np.ndarray]
    frame_count: int
    width: int
    height: int
    mean_abs_diff: float


def evenly_spaced(total: int, count: int) -> list[int]:
    """Return `count` indices spread evenly over `total` frames, first and last included (all when fewer)."""
    if total <= count:
        return list(range(total))
    return [round(i * (total - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the short side is `short_side` px (area filter when shrinking), keeping the aspect ratio."""
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    if scale == 1.0:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _decode(path: Path) -> Iterator[np.ndarray]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableClip(f"no video stream in {path.name}")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except FileNotFoundError as e:
        raise UnreadableClip(f"clip not found: {path.name}") from e  # the name only: answers never show paths
    except av.FFmpegError as e:
        raise UnreadableClip(f"cannot decode {path.name}: {e}") from e


def read_clip(
    path: str | Path,
    *,
    clip_frames: int = CLIP_FRAMES,
    flow_short_side: int = FLOW_SHORT_SIDE,
    max_frames: int = MAX_FRAMES,
) -> ClipFrames:
    """Decode an MP4 (PyAV) into flow frames, evenly sampled frames and the consecutive-frame difference.

    Raises:
        UnreadableClip: missing file, no video stream, undecodable data, or fewer than two frames.
    """
    path = Path(path)
    full: list[np.ndarray] = []
    flow: list[np.ndarray] = []
    diff_sum = 0.0
    previous: np.ndarray | None = None
    for frame in _decode(path):
        if len(full) >= max_frames:
            break
        if previous is not None:
            if frame.shape != previous.shape:
                raise UnreadableClip(f"frame size changes inside {path.name}")
            diff_sum += float(cv2.absdiff(frame, previous).mean())
        previous = frame
        full.append(frame)
        flow.append(resize_short_side(frame, flow_short_side))
    if len(full) < 2:
        raise UnreadableClip(f"{path.name} has {len(full)} frame(s); scoring needs at least 2")
    sampled = [full[i] for i in evenly_spaced(len(full), clip_frames)]
    height, width = full[0].shape[:2]
    return ClipFrames(
        flow_frames=flow,
        sampled_frames=sampled,
        frame_count=len(full),
        width=width,
        height=height,
        mean_abs_diff=diff_sum / (len(full) - 1),
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read the job's input image as RGB uint8.

    Raises:
        UnreadableClip: the image is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as e:
        raise UnreadableClip(f"input image not found: {Path(path).name}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UnreadableClip(f"cannot read input image {Path(path).name}: {e}") from e
