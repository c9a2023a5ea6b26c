"""Score finished clips off the generation path: a bounded queue, one worker thread, results kept per job.

Each clip is decoded once; the motion score, the CLIP prompt-frame score and the image-to-video score share
the frames (and CLIP shares one forward pass between the frames and the input image). Every result, scored
or unscorable, is written as one `quality` point; a rating writes the job's point again with the new
combined score.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.events import FINAL_STATES, Event
from monitor.quality import motion
from monitor.quality.clip_score import NO_WEIGHTS_REASON, ClipScorer, text_frame_score
from monitor.quality.combined import DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, ClipCalibration, combine
from monitor.quality.frames import UnreadableClip, read_clip, read_image
from monitor.quality.i2v import I2VScore, ImageEncoder, i2v_subject, score_with
from monitor.storage.base import FieldValue, Point
from monitor.storage.schema import QUALITY

log = logging.getLogger(__name__)

MEASUREMENT = QUALITY
INPUT_IMAGE_NAME = "input.png"
QUEUED, SCORING, SCORED, UNSCORABLE = "queued", "scoring", "scored", "unscorable"
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DURATION_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0)
MAX_RUNNING = 64
STORED_FIELDS = (
    "job_id",
    "clip_score",
    "clip_score_min",
    "i2v_subject",
    "smoothness",
    "jerk",
    "flicker_penalty",
    "temporal_flickering",
    "dynamic_degree",
    "static",
    "combined",
    "parts_used",
    "rating",
    "low_quality",
    "scoring_duration_s",
    "unscorable_reason",
    "clip_reason",
    "i2v_reason",
)

#: Declared types of the stored fields, for the store's schema (monitor.storage.schema.FIELD_TYPES[MEASUREMENT]).
FIELD_TYPES: Mapping[str, str] = {
    **{name: "float" for name in STORED_FIELDS},
    **{name: "str" for name in ("job_id", "parts_used", "unscorable_reason", "clip_reason", "i2v_reason")},
    **{"static": "bool", "low_quality": "bool", "rating": "int"},
}


@dataclass(frozen=True)
class QualityResult:
    """What is known about one job's quality; `status` is queued, scoring, scored or unscorable."""

    job_id: str
    gpu: str
    status: str
    video_path: str
    clip_score: float | None = None
    clip_score_min: float | None = None
    clip_cos: float | None = None
    clip_part: float | None = None
    clip_reason: str | None = None
    i2v_subject: float | None = None
    i2v_input_mean_cos: float | None = None
    i2v_reason: str | None = None
    smoothness: float | None = None
    jerk: float | None = None
    flicker_penalty: float | None = None
    temporal_flickering: float | None = None
    dynamic_degree: float | None = None
    static: bool | None = None
    combined: float | None = None
    parts_used: str = ""
    rating: int | None = None
    low_quality: bool | None = None
    scoring_duration_s: float | None = None
    unscorable_reason: str | None = None

    def fields(self) -> dict[str, FieldValue]:
        """Return the point's fields (None values included; the store leaves them out)."""
        data = asdict(self)
        return {name: data[name] for name in STORED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Return the API's JSON view."""
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    job_id: str
    video_path: str
    image_path: str | None
    prompt: str | None
    gpu: str


class QualityScorer:
    """Queue finished clips, score them on one worker thread, keep and write the results.

    Args:
        clip: the CLIP scorer, or None when no weights are configured (CLIP and i2v parts then say why).
        write: where `quality` points go (the monitor's batching writer, `Writer.write`).
        host_name: the `host` tag.
        max_queue: clips waiting at most; `submit` refuses (and counts) beyond it.
        max_results: jobs whose results are kept in memory, oldest dropped first.
        registry: the Prometheus registry the metrics join (when None, a private one: `self.registry`, which
            the monitor's /metrics registry includes).
        on_low_quality: called once when a job's combined score falls below `threshold` (the alert event).
        on_result: called with every clip's result once it is scored or found unscorable (not on a rating):
            the alert engine's low-quality streak needs the good clips too, to end the streak.
        image_encoder: the i2v encoder when not CLIP's vision tower (e.g. the generator's I2VGen-XL encoder).
        weights, threshold, calibration: the combined score's settings (combined.py).
        outputs_dir: where the generator writes `<job_id>/video.mp4`, to find clips named by relative paths.
        flow_workers: threads for optical flow (default half the cores, as CLIP takes: a sidecar's share).
        clock, now_ns: monotonic seconds for durations and wall-clock ns for point times.
    """

    def __init__(
        self,
        *,
        clip: ClipScorer | None,
        write: Callable[[Sequence[Point]], None],
        host_name: str,
        max_queue: int = 32,
        max_results: int = 1000,
        registry: CollectorRegistry | None = None,
        on_low_quality: Callable[[QualityResult], None] | None = None,
        on_result: Callable[[QualityResult], None] | None = None,
        outputs_dir: str | Path | None = None,
        flow_workers: int | None = None,
        image_encoder: ImageEncoder | None = None,
        weights: Mapping[str, float] = DEFAULT_WEIGHTS,
        threshold: float = DEFAULT_THRESHOLD,
        calibration: ClipCalibration | None = None,
        clock: Callable[[], float] = time.monotonic,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._clip = clip
        self._write = write
        self._host = host_name
        self._max_queue = max_queue
        self._max_results = max_results
        self._on_low_quality = on_low_quality
        self._on_result = on_result
        self._outputs_dir = None if outputs_dir is None else Path(outputs_dir)
        self.flow_workers = flow_workers or max(1, (os.cpu_count() or 2) // 2)
        self._image_encoder = image_encoder
        self._weights = weights
        self._threshold = threshold
        self._calibration = calibration or ClipCalibration()
        self._clock = clock
        self._now_ns = now_ns
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._results: OrderedDict[str, QualityResult] = OrderedDict()
        self._write_failing = False
        self._running: set[str] = set()
        self.rejected = 0
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self._score_hist = Histogram(
            "i2v_quality_score",
            "Combined quality score of each scored clip (0 to 1).",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self._duration_hist = Histogram(
            "i2v_quality_scoring_duration_seconds",
            "Time to score one clip (decode, flow, CLIP).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._jobs = Counter(
            "i2v_quality_jobs",
            "Clips by scoring outcome (scored, unscorable, rejected: queue full).",
            ["outcome"],
            registry=registry,
        )
        self._low = Counter("i2v_quality_low", "Clips flagged low quality.", registry=registry)
        self._write_errors = Counter("i2v_quality_write_errors", "Quality points the store refused.", registry=registry)
        Gauge("i2v_quality_queue_pending", "Clips waiting to be scored.", registry=registry).set_function(
            lambda: len(self._queue)
        )

    # Lifecycle
    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="quality-scorer", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the clip being scored; queued clips stay queued (reported as such)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the queue is empty and no clip is being scored; return whether it got there in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    # Intake
    def submit(
        self,
        job_id: str,
        video_path: str | Path,
        image_path: str | Path | None = None,
        prompt: str | None = None,
        gpu: str = "0",
    ) -> bool:
        """Queue a finished clip; False (and counted) when the queue is full. A job already known is kept."""
        job = _Job(job_id, str(video_path), None if image_path is None else str(image_path), prompt, gpu)
        with self._cond:
            if job_id in self._results:
                return True
            if len(self._queue) >= self._max_queue:
                self.rejected += 1
                self._jobs.labels("rejected").inc()
                log.warning("quality queue full (%d): job %s not scored", self._max_queue, job_id)
                return False
            self._queue.append(job)
            self._keep(QualityResult(job_id=job_id, gpu=gpu, status=QUEUED, video_path=job.video_path))
            self._cond.notify_all()
        return True

    def submit_event(self, event: Event) -> bool:
        """Queue the clip of a succeeded `job` event (input image beside the video); else return False.

        A relative `video_path` the monitor cannot see from its own directory is looked up as the generator
        lays clips out, `<outputs_dir>/<job_id>/video.mp4`, when `outputs_dir` is set.
        """
        if event.kind != "job" or event.status != "succeeded" or not event.video_path:
            return False
        video = Path(event.video_path)
        if not video.is_absolute() and not video.exists() and self._outputs_dir is not None:
            video = self._outputs_dir / event.job_id / video.name
        image = video.with_name(INPUT_IMAGE_NAME)
        return self.submit(event.job_id, video, image, event.prompt, event.gpu)

    def listen(self, events: Sequence[Event]) -> None:
        """Take a batch of ingested events: follow which jobs run, and queue each succeeded job's clip."""
        for event in events:
            if event.kind != "job" or event.status is None:
                continue
            with self._cond:
                if event.status == "running" and len(self._running) < MAX_RUNNING:
                    self._running.add(event.job_id)
                elif event.status in FINAL_STATES:
                    self._running.discard(event.job_id)
            self.submit_event(event)

    def generator_busy(self) -> bool:
        """Return whether a job is running, as the events say (a lost terminal event errs towards busy)."""
        with self._cond:
            return bool(self._running)

    # Reading and rating
    def result(self, job_id: str) -> QualityResult | None:
        """Return the job's latest result, or None for a job never submitted (or long evicted)."""
        with self._cond:
            return self._results.get(job_id)

    def rate(self, job_id: str, stars: int) -> QualityResult | None:
        """Record a 1-5 star rating and recompute the combined score; None for an unknown job.

        A rating that arrives before the clip is scored is kept and used when it is.

        Raises:
            ValueError: stars is not an integer from 1 to 5.
        """
        if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5:
            raise ValueError("stars must be an integer from 1 to 5")
        with self._cond:
            previous = self._results.get(job_id)
            if previous is None:
                return None
            updated = replace(previous, rating=stars)
            if previous.status in (SCORED, UNSCORABLE):
                updated = self._with_combined(updated)
            self._keep(updated)
        if updated.status in (SCORED, UNSCORABLE):
            self._publish(updated, became_low=bool(updated.low_quality) and not previous.low_quality)
        return updated

    # Scoring
    def score_job(
        self,
        job_id: str,
        video_path: str | Path,
        image_path: str | Path | None,
        prompt: str | None,
        gpu: str = "0",
        rating: int | None = None,
    ) -> QualityResult:
        """Score one clip now, on the calling thread (the worker's step; also the benchmark's)."""
        started = self._clock()
        base = QualityResult(job_id=job_id, gpu=gpu, status=SCORED, video_path=str(video_path), rating=rating)
        try:
            clip = read_clip(video_path)
        except UnreadableClip as e:
            result = replace(base, status=UNSCORABLE, unscorable_reason=str(e))
            return replace(self._with_combined(result), scoring_duration_s=self._clock() - started)
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
        result = self._score_embeddings(result, clip.sampled_frames, input_image, image_reason, prompt)
        return replace(self._with_combined(result), scoring_duration_s=self._clock() - started)

    def _score_embeddings(
        self,
        result: QualityResult,
        frames: list[np.ndarray],
        input_image: np.ndarray | None,
        image_reason: str | None,
        prompt: str | None,
    ) -> QualityResult:
        clip_reason = None if self._clip is not None else NO_WEIGHTS_REASON
        if self._clip is not None and not prompt:
            clip_reason = "no prompt"
        i2v_reason = image_reason
        # Without an injected encoder the input image rides in CLIP's batch with the frames.
        clip_input = input_image if self._image_encoder is None else None
        if self._clip is not None and (prompt or clip_input is not None):
            extra = [] if clip_input is None else [clip_input]
            embeddings = self._clip.embed([*frames, *extra], prompt or None)
            frame_rows = embeddings.images[: len(frames)]
            if embeddings.text is not None:
                scored = text_frame_score(embeddings.text, frame_rows)
                result = replace(
                    result,
                    clip_score=scored.score,
                    clip_score_min=scored.score_min,
                    clip_cos=scored.mean_cos,
                    clip_part=self._calibration.part(scored.mean_cos),
                )
                self._calibration.observe(scored.mean_cos)
            if clip_input is not None:
                result = _with_i2v(result, i2v_subject(embeddings.images[-1], frame_rows))
        if input_image is not None and self._image_encoder is not None:
            result = _with_i2v(result, score_with(self._image_encoder, input_image, frames))
        elif input_image is not None and self._clip is None:
            i2v_reason = f"no image encoder: {NO_WEIGHTS_REASON}"
        return replace(result, clip_reason=clip_reason, i2v_reason=i2v_reason)

    def _with_combined(self, result: QualityResult) -> QualityResult:
        combined = combine(
            clip=result.clip_part,
            smoothness=result.smoothness,
            static=bool(result.static),
            rating=result.rating,
            i2v=result.i2v_subject,
            weights=self._weights,
            threshold=self._threshold,
        )
        if combined is None:
            return replace(result, combined=None, parts_used="", low_quality=None)
        return replace(
            result, combined=combined.score, parts_used=combined.parts_text, low_quality=combined.low_quality
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._busy = True
                current = self._results.get(job.job_id)
                rating = current.rating if current is not None else None
                if current is not None:
                    self._keep(replace(current, status=SCORING))
            try:
                result = self.score_job(job.job_id, job.video_path, job.image_path, job.prompt, job.gpu, rating)
            except Exception as e:  # loop boundary: the clip is marked unscorable, the loop goes on
                log.exception("scoring job %s failed; marked unscorable", job.job_id)
                result = QualityResult(
                    job_id=job.job_id,
                    gpu=job.gpu,
                    status=UNSCORABLE,
                    video_path=job.video_path,
                    rating=rating,
                    unscorable_reason=f"scoring failed: {type(e).__name__}: {e}",
                )
            with self._cond:
                latest = self._results.get(job.job_id)
                if latest is not None and latest.rating != result.rating:
                    result = self._with_combined(replace(result, rating=latest.rating))
                self._keep(result)
            self._publish(result, became_low=bool(result.low_quality), scored=True)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    # Output
    def _keep(self, result: QualityResult) -> None:
        self._results[result.job_id] = result
        self._results.move_to_end(result.job_id)
        while len(self._results) > self._max_results:
            self._results.popitem(last=False)

    def _publish(self, result: QualityResult, *, became_low: bool, scored: bool = False) -> None:
        if scored:
            self._jobs.labels(result.status).inc()
            if result.scoring_duration_s is not None:
                self._duration_hist.observe(result.scoring_duration_s)
            if result.combined is not None:
                self._score_hist.observe(result.combined)
        point = Point(
            measurement=MEASUREMENT,
            tags={"host": self._host, "gpu": result.gpu},
            fields=result.fields(),
            time_ns=self._now_ns(),
        )
        try:
            self._write([point])
            self._write_failing = False
        except Exception:  # boundary: the result stays readable here, the point is lost
            self._write_errors.inc()
            if not self._write_failing:
                log.exception("writing quality points failed; results stay in memory (logged once)")
            self._write_failing = True
        if became_low:
            self._low.inc()
            self._tell(self._on_low_quality, result, "low-quality")
        if scored:
            self._tell(self._on_result, result, "result")

    @staticmethod
    def _tell(listener: Callable[[QualityResult], None] | None, result: QualityResult, what: str) -> None:
        if listener is None:
            return
        try:
            listener(result)
        except Exception:  # boundary: a failing listener must not stop scoring
            log.exception("%s listener failed for job %s", what, result.job_id)


def _with_i2v(result: QualityResult, scored: I2VScore) -> QualityResult:
    return replace(result, i2v_subject=scored.score, i2v_input_mean_cos=scored.mean_input_cos)


def _input_image(path: str | Path | None) -> tuple[np.ndarray | None, str | None]:
    if path is None:
        return None, "no input image given"
    try:
        return read_image(path), None
    except UnreadableClip as e:
        return None, str(e)
