"""Write frames as an H.264 MP4 that browsers play, through the ffmpeg inside PyAV's wheel."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """Convert float frames in [0, 1] (F, H, W, 3) to uint8, clipping what the decoder overshoots."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (F, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """Encode `frames` as H.264 (yuv420p, faststart) at `fps`; odd sizes are cropped to even ones."""
    pixels = to_uint8_frames(frames)
    height, width = pixels.shape[1] - pixels.shape[1] % 2, pixels.shape[2] - pixels.shape[2] % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    # yuv420p and the moov atom first: what every browser's <video> needs to play at once.
    with av.open(str(partial), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for pixel_frame in pixels:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixel_frame[:height, :width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    partial.replace(path)
    return path


def probe_mp4(path: Path) -> dict[str, object]:
    """Return the codec, frame count, fps and size of an MP4: what tests and the API report."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "frames": frames,
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "width": stream.width,
            "height": stream.height,
            "pix_fmt": stream.codec_context.pix_fmt,
        }
