"""Score one clip: decode it once, then motion, CLIP (prompt and frames), image-to-video, and the combined score.

Each clip is decoded once; the motion score, the CLIP prompt-frame score and the image-to-video score share the
frames (and CLIP shares one forward pass between the frames and the input image). The scorer (scorer.py) decides
when a clip is scored and whether CLIP may use the GPU for it; this module only scores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from monitor.quality import motion
from monitor.quality.clip_score import NO_WEIGHTS_REASON, ClipScorer, text_frame_score
from monitor.quality.combined import DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, ClipCalibration, combine
from monitor.quality.frames import UnreadableClip, read_clip, read_image
from monitor.quality.i2v import I2VScore, ImageEncoder, i2v_subject, score_with
from monitor.quality.record import SCORED, UNSCORABLE, QualityResult


class ClipAssessor:
    """Score clips with one CLIP (or none), one image encoder, and the combined score's settings.

    Args:
        clip: the CLIP scorer, or None when no weights are configured (CLIP and i2v parts then say why).
        image_encoder: the i2v encoder when not CLIP's vision tower (e.g. the generator's I2VGen-XL encoder).
        flow_workers: threads for optical flow (default half the cores, as CLIP takes: a sidecar's share).
        weights, threshold, calibration: the combined score's settings (combined.py); the calibration's
            baseline grows with every clip scored here.
        clock: monotonic seconds, for each clip's scoring time.
    """

    def __init__(
        self,
        *,
        clip: ClipScorer | None,
        image_encoder: ImageEncoder | None = None,
        flow_workers: int | None = None,
        weights: Mapping[str, float] = DEFAULT_WEIGHTS,
        threshold: float = DEFAULT_THRESHOLD,
        calibration: ClipCalibration | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clip = clip
        self.image_encoder = image_encoder
        self.flow_workers = flow_workers or max(1, (os.cpu_count() or 2) // 2)
        self.weights = weights
        self.threshold = threshold
        self.calibration = calibration or ClipCalibration()
        self._clock = clock

    def assess(
        self,
        job_id: str,
        video_path: str | Path,
        image_path: str | Path | None,
        prompt: str | None,
        gpu: str = "0",
        rating: int | None = None,
        *,
        allow_gpu: bool = True,
        pause: Callable[[], object] | None = None,
    ) -> QualityResult:
        """Score one clip now, on the calling thread; CLIP stays on the CPU unless `allow_gpu`.

        `pause`, when given, is called before each piece of work (decoding, motion, each CLIP image) and may block:
        the scorer's way to step aside while the generator needs the CPU (schedule.py).
        """
        started = self._clock()
        step_aside = pause or (lambda: None)
        base = QualityResult(job_id=job_id, gpu=gpu, status=SCORED, video_path=str(video_path), rating=rating)
        try:
            step_aside()
            clip = read_clip(video_path)
        except UnreadableClip as e:
            result = replace(base, status=UNSCORABLE, unscorable_reason=str(e))
            return replace(self.combined(result), scoring_duration_s=self._clock() - started)
        step_aside()
        moved = motion.analyse(clip.flow_frames, workers=self.flow_workers)
        result = replace(
            base,
            smoothness=moved.smoothness,
            jerk=moved.jerk,
            flicker_penalty=moved.flicker_penalty,
            temporal_flickering=motion.temporal_flickering(clip.mean_abs_diff),
            dynamic_degree=moved.dynamic_degree,
            static=moved.static,
        )
        input_image, image_reason = _input_image(image_path)
        result = self._embeddings(result, clip.sampled_frames, input_image, image_reason, prompt, allow_gpu, pause)
        return replace(self.combined(result), scoring_duration_s=self._clock() - started)

    def combined(self, result: QualityResult) -> QualityResult:
        """Return the result with its combined score, parts and low-quality flag (re)computed from its parts."""
        if result.clip_part is None and result.clip_cos is not None:  # a point stored before clip_part was
            result = replace(result, clip_part=self.calibration.part(result.clip_cos))
        combined = combine(
            clip=result.clip_part,
            smoothness=result.smoothness,
            static=bool(result.static),
            rating=result.rating,
            i2v=result.i2v_subject,
            weights=self.weights,
            threshold=self.threshold,
        )
        if combined is None:
            return replace(result, combined=None, parts_used="", low_quality=None)
        return replace(
            result, combined=combined.score, parts_used=combined.parts_text, low_quality=combined.low_quality
        )

    def _embeddings(
        self,
        result: QualityResult,
        frames: list[np.ndarray],
        input_image: np.ndarray | None,
        image_reason: str | None,
        prompt: str | None,
        allow_gpu: bool,
        pause: Callable[[], object] | None,
    ) -> QualityResult:
        clip_reason = None if self.clip is not None else NO_WEIGHTS_REASON
        if self.clip is not None and not prompt:
            clip_reason = "no prompt"
        i2v_reason = image_reason
        # Without an injected encoder the input image rides in CLIP's batch with the frames.
        clip_input = input_image if self.image_encoder is None else None
        if self.clip is not None and (prompt or clip_input is not None):
            extra = [] if clip_input is None else [clip_input]
            embeddings = self.clip.embed([*frames, *extra], prompt or None, allow_gpu=allow_gpu, pause=pause)
            result = replace(result, scored_on=embeddings.device)
            frame_rows = embeddings.images[: len(frames)]
            if embeddings.text is not None:
                scored = text_frame_score(embeddings.text, frame_rows)
                result = replace(
                    result,
                    clip_score=scored.score,
                    clip_score_min=scored.score_min,
                    clip_cos=scored.mean_cos,
                    clip_part=self.calibration.part(scored.mean_cos),
                )
                self.calibration.observe(scored.mean_cos)
            if clip_input is not None:
                result = _with_i2v(result, i2v_subject(embeddings.images[-1], frame_rows))
        if input_image is not None and self.image_encoder is not None:
            result = _with_i2v(result, score_with(self.image_encoder, input_image, frames))
        elif input_image is not None and self.clip is None:
            i2v_reason = f"no image encoder: {NO_WEIGHTS_REASON}"
        return replace(result, clip_reason=clip_reason, i2v_reason=i2v_reason)


def _with_i2v(result: QualityResult, scored: I2VScore) -> QualityResult:
    return replace(result, i2v_subject=scored.score, i2v_input_mean_cos=scored.mean_input_cos)


def _input_image(path: str | Path | None) -> tuple[np.ndarray | None, str | None]:
    if path is None:
        return None, "no input image given"
    try:
        return read_image(path), None
    except UnreadableClip as e:
        return None, str(e)
