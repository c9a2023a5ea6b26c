"""Score finished clips off the generation path: a bounded queue, one worker thread, results kept per job.

The worker scores each clip with `ClipAssessor` (monitor/quality/assess.py). Every result, scored or
unscorable, is written as one `quality` point (monitor/quality/record.py); a rating writes the job's point again
with the new combined score.

When a clip is scored is `GpuActivity`'s decision (monitor/quality/schedule.py): between jobs on the device
scoring uses, or after a bounded wait with CLIP on the CPU. Clips waiting are `pending` (their result says
why) and counted in `i2v_quality_queue_pending`. The worker thread runs at `cpu_priority`
(common/cpu_priority.py: by default in the idle class, on cores the generator leaves spare).

With a store to read (`history`), results outlive the process (monitor/quality/history.py): a job missing
from memory is read back for the API and for a rating, and at start the worker restores the CLIP baseline and
queues the backlog (this host's clips that succeeded in the last day with no quality point, oldest first, as
many as the queue takes) before it scores anything; a queued job the store already has a result for is not
scored again (a generator replays its events after a monitor restart).

The queue in memory is bounded (`max_queue`). With a store, a clip that finds it full is not lost: it waits in
the store (its `succeeded` event is there, with no quality point), counted as pending, its result saying so;
once the queue is down to half, the worker takes the store's backlog back into it, oldest first, as at start
(also what a start's backlog left there). Without a store such a clip is refused and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.cpu_priority import lower_this_thread
from common.events import Event
from monitor.quality.assess import ClipAssessor
from monitor.quality.clip_score import ClipScorer
from monitor.quality.combined import DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, ClipCalibration
from monitor.quality.history import FinishedClip, QualityHistory
from monitor.quality.i2v import ImageEncoder
from monitor.quality.record import (
    FIELD_TYPES,
    MEASUREMENT,
    QUEUED,
    SCORED,
    SCORING,
    STORED_FIELDS,
    UNSCORABLE,
    QualityResult,
)
from monitor.quality.schedule import Decision, GpuActivity
from monitor.storage.base import Point, StoreRejected, StoreUnavailable

__all__ = ["FIELD_TYPES", "MEASUREMENT", "STORED_FIELDS", "QualityResult", "QualityScorer"]

log = logging.getLogger(__name__)

INPUT_IMAGE_NAME = "input.png"
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DURATION_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0)
BACKLOG_WINDOW_S = 86_400
# Clips waiting in memory at most. The schedule keeps clips waiting by design (up to `max_wait_s` of back-to-back
# jobs: 100 clips at a job every 3 s with the default 300 s) and a restart adds its backlog: the GPU acceptance
# run had 32 waiting (the old bound) and refused clips. A waiting clip is a few hundred bytes.
MAX_QUEUE = 1000
SWEEP_RETRY_S = 5.0  # between reads of the store's backlog while it may hold clips the queue did not take
STORE_LAG_S = 10.0  # an ingested event reaches the store within this (the writer flushes every second)
MIN_WAIT_S = 0.05  # the worker's shortest sleep between decisions
REFUSED_REASON = "the event named a clip outside the monitor's outputs folder (MONITOR_OUTPUTS): not read"
IN_STORE_REASON = (
    "the scoring queue was full ({max_queue} clips): the clip waits in the store and is taken back into the "
    "queue, oldest first, once it has room"
)


@dataclass(frozen=True)
class _Job:
    job_id: str
    video_path: str
    image_path: str | None
    prompt: str | None
    gpu: str
    queued_at: float


class QualityScorer:
    """Queue finished clips, score them on one worker thread when the schedule allows, keep and write the results.

    Args:
        clip: the CLIP scorer, or None when no weights are configured (CLIP and i2v parts then say why).
        write: where `quality` points go (the monitor's batching writer, `Writer.write`).
        host_name: the `host` tag.
        activity: the scheduling rule and what it heard (default: the CPU's, waiting only for jobs it hears
            of, with no start-up quiet period: monitor/compose.py passes its own).
        history: reads results back from the store (None: results live in memory only).
        max_queue: clips waiting in memory at most; beyond it a clip waits in the store (with `history`), else
            `submit` refuses (and counts) it.
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
        cpu_priority: the worker thread's CPU priority, "idle", "low" or "normal" (common/cpu_priority.py); the
            threads it starts (optical flow, torch's CPU work) inherit it.
        clock, now_ns: monotonic seconds for durations and waits, and wall-clock ns for point times.
    """

    def __init__(
        self,
        *,
        clip: ClipScorer | None,
        write: Callable[[Sequence[Point]], None],
        host_name: str,
        activity: GpuActivity | None = None,
        history: QualityHistory | None = None,
        max_queue: int = MAX_QUEUE,
        max_results: int = 1000,
        registry: CollectorRegistry | None = None,
        on_low_quality: Callable[[QualityResult], None] | None = None,
        on_result: Callable[[QualityResult], None] | None = None,
        outputs_dir: str | Path | None = None,
        flow_workers: int | None = None,
        cpu_priority: str = "normal",
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
        self.activity = activity or GpuActivity("cpu", startup_quiet_s=0.0, clock=clock)
        self._history = history
        self._max_queue = max_queue
        self._max_results = max_results
        self._on_low_quality = on_low_quality
        self._on_result = on_result
        self._outputs_dir = None if outputs_dir is None else Path(outputs_dir)
        self._assessor = ClipAssessor(
            clip=clip,
            image_encoder=image_encoder,
            flow_workers=flow_workers,
            weights=weights,
            threshold=threshold,
            calibration=calibration,
            clock=clock,
        )
        self.flow_workers = self._assessor.flow_workers
        self.cpu_priority = cpu_priority
        self._priority_in_effect = "not started"
        self._calibration = self._assessor.calibration
        self._clock = clock
        self._now_ns = now_ns
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._unchecked: set[str] = set()  # queued jobs not yet looked up in the store
        self._in_store: set[str] = set()  # jobs the full queue left waiting in the store (their results say so)
        self._store_backlog_since: float | None = None  # when the store last got a clip the queue did not take
        self._next_sweep = -float("inf")
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._results: OrderedDict[str, QualityResult] = OrderedDict()
        self._write_failing = False
        self._read_failing = False
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
            "Clips by scoring outcome (scored, unscorable, in_store: the queue full, left waiting in the store, "
            "rejected: the queue full and no store, refused: not under the outputs folder).",
            ["outcome"],
            registry=registry,
        )
        self._deferred = Counter(
            "i2v_quality_deferred",
            "Clips scored after waiting the longest for a gap between jobs (one per job that ends while jobs run).",
            registry=registry,
        )
        self._low = Counter("i2v_quality_low", "Clips flagged low quality.", registry=registry)
        self._write_errors = Counter("i2v_quality_write_errors", "Quality points the store refused.", registry=registry)
        Gauge("i2v_quality_queue_pending", "Clips waiting to be scored.", registry=registry).set_function(self.pending)

    # Lifecycle
    def start(self) -> None:
        """Start the worker thread (once): it restores what the store holds, then scores as the schedule allows."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._busy = True  # restoring
            self.activity.start()
            self._thread = threading.Thread(target=self._run, name="quality-scorer", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the clip being scored; queued clips stay queued (reported as such)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        self.activity.release()  # a clip scored beside a job stops pausing for it
        if thread is not None:
            thread.join(timeout_s)
        with self._cond:
            self._busy = False

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the queue is empty and no clip is being scored; return whether it got there in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def pending(self) -> int:
        """Return how many clips wait to be scored (in the queue, and those it left waiting in the store)."""
        return len(self._queue) + len(self._in_store)

    def status(self) -> dict[str, int | bool | str]:
        """Return the scorer's state for /status: clips waiting, scoring now, the CLIP baseline, the CPU priority."""
        with self._cond:
            scoring = self._busy
        return {
            "pending": self.pending(),
            "scoring": scoring,
            "baseline_clips": self._calibration.samples,
            "cpu_priority": self._priority_in_effect,
        }

    # Intake
    def submit(
        self,
        job_id: str,
        video_path: str | Path,
        image_path: str | Path | None = None,
        prompt: str | None = None,
        gpu: str = "0",
    ) -> bool:
        """Queue a finished clip; a job already known is kept.

        When the queue is full the clip waits in the store (with `history`), else it is refused: False, counted.
        """
        image = None if image_path is None else str(image_path)
        with self._cond:
            if job_id in self._results and job_id not in self._in_store:
                return True
            if len(self._queue) >= self._max_queue:
                return self._leave_in_store(job_id, str(video_path), gpu)
            self._in_store.discard(job_id)
            self._queue.append(_Job(job_id, str(video_path), image, prompt, gpu, self._clock()))
            if self._history is not None:
                self._unchecked.add(job_id)
            self._keep(QualityResult(job_id=job_id, gpu=gpu, status=QUEUED, video_path=str(video_path), pending=True))
            self._cond.notify_all()
        return True

    def _leave_in_store(self, job_id: str, video_path: str, gpu: str) -> bool:
        """Leave a clip the full queue cannot take waiting in the store; refuse it without one (holding the lock)."""
        if self._history is None:
            self.rejected += 1
            self._jobs.labels("rejected").inc()
            log.warning("quality queue full (%d): job %s not scored", self._max_queue, job_id)
            return False
        if self._store_backlog_since is None:
            log.warning(
                "quality queue full (%d): clips wait in the store until it has room (logged once until it has)",
                self._max_queue,
            )
        self._store_backlog_since = self._clock()
        if job_id in self._in_store or len(self._in_store) >= self._max_results:
            return True  # beyond the bound a clip is not counted or answered for, but the sweep still takes it
        self._in_store.add(job_id)
        self._jobs.labels("in_store").inc()
        reason = IN_STORE_REASON.format(max_queue=self._max_queue)
        self._keep(
            QualityResult(job_id=job_id, gpu=gpu, status=QUEUED, video_path=video_path, pending=True, schedule=reason)
        )
        return True

    def submit_event(self, event: Event) -> bool:
        """Queue the clip of a succeeded `job` event (input image beside the video); else return False."""
        if event.kind != "job" or event.status != "succeeded" or not event.video_path:
            return False
        return self._submit_finished(FinishedClip(event.job_id, event.gpu, event.video_path, event.prompt))

    def _submit_finished(self, clip: FinishedClip) -> bool:
        """Queue a finished clip.

        Only a clip under the outputs folder is read: the event's `video_path` (absolute, or relative to the
        folder) must lead inside it once symlinks and `..` are resolved, so both processes must see the clips at
        the same path. A relative path not found there is looked up as the generator lays clips out,
        `<outputs_dir>/<job_id>/<name>`. Anything else is refused, counted
        (`i2v_quality_jobs_total{outcome="refused"}`) and recorded as unscorable without the path: any holder of
        the ingest token could otherwise have the monitor open any file it can read.
        """
        video = self._clip_path(clip.job_id, clip.video_path)
        if video is None:
            self._refuse(clip.job_id, clip.gpu, clip.video_path)
            return False
        image: Path | None = video.with_name(INPUT_IMAGE_NAME)
        if image is not None and not self._inside_outputs(image.resolve()):
            image = None  # a symlinked input image leading out: the i2v part says it has no image
        return self.submit(clip.job_id, video, image, clip.prompt, clip.gpu)

    def _clip_path(self, job_id: str, video_path: str) -> Path | None:
        """Return the clip's resolved path when it lies under the outputs folder, else None."""
        if self._outputs_dir is None:
            return None
        root = self._outputs_dir.resolve()
        given = Path(video_path)
        path = (given if given.is_absolute() else root / given).resolve()
        if not self._inside_outputs(path):
            return None
        if not given.is_absolute() and not path.exists():
            laid_out = (root / job_id / given.name).resolve()  # where the generator puts a job's clip
            if self._inside_outputs(laid_out) and laid_out.exists():
                return laid_out
        return path

    def _inside_outputs(self, resolved: Path) -> bool:
        return self._outputs_dir is not None and resolved.is_relative_to(self._outputs_dir.resolve())

    def _refuse(self, job_id: str, gpu: str, video_path: str) -> None:
        """Record a clip that is not under the outputs folder as unscorable, count it, and log it once per job."""
        self._jobs.labels("refused").inc()
        # The operator's log names what was asked for; no API answer or stored point repeats it.
        log.warning(
            "job %s: refused to read %r: not under the outputs folder %s", job_id, video_path, self._outputs_dir
        )
        result = QualityResult(
            job_id=job_id,
            gpu=gpu,
            status=UNSCORABLE,
            video_path="",
            unscorable_reason=REFUSED_REASON,
        )
        with self._cond:
            if job_id in self._results:
                return
            self._keep(result)

    def listen(self, events: Sequence[Event]) -> None:
        """Take a batch of ingested events: follow which jobs run (the whole batch first), then queue finished clips."""
        if self.activity.hear(events):
            with self._cond:
                self._cond.notify_all()
        for event in events:
            self.submit_event(event)

    # Reading and rating
    def result(self, job_id: str) -> QualityResult | None:
        """Return the job's latest result (from the store when not in memory), or None for a job never scored.

        Raises:
            StoreUnavailable, StoreRejected: the job is not in memory and the store cannot be read.
        """
        with self._cond:
            current = self._results.get(job_id)
            if current is not None and current.status == QUEUED and job_id not in self._in_store:
                return replace(current, schedule=self._why_waiting(job_id))
        if current is not None or self._history is None:
            return current
        stored = self._history.latest(job_id)
        if stored is None:
            return None
        with self._cond:
            return self._results.get(job_id) or self._keep(stored)

    def rate(self, job_id: str, stars: int) -> QualityResult | None:
        """Record a 1-5 star rating and recompute the combined score; None for an unknown job.

        A rating that arrives before the clip is scored is kept and used when it is.

        Raises:
            ValueError: stars is not an integer from 1 to 5.
            StoreUnavailable, StoreRejected: the job is not in memory and the store cannot be read.
        """
        if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5:
            raise ValueError("stars must be an integer from 1 to 5")
        if self.result(job_id) is None:  # read back into memory when only the store has it
            return None
        with self._cond:
            previous = self._results.get(job_id)
            if previous is None:  # evicted meanwhile
                return None
            updated = replace(previous, rating=stars)
            if previous.status in (SCORED, UNSCORABLE):
                updated = self._assessor.combined(updated)
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
        *,
        allow_gpu: bool = True,
        pause: Callable[[], object] | None = None,
    ) -> QualityResult:
        """Score one clip now, on the calling thread (the worker's step; also the benchmark's)."""
        return self._assessor.assess(
            job_id, video_path, image_path, prompt, gpu, rating, allow_gpu=allow_gpu, pause=pause
        )

    # The worker
    def _run(self) -> None:
        self._priority_in_effect = lower_this_thread(self.cpu_priority)
        if not self._priority_in_effect.startswith(self.cpu_priority):
            log.warning("the quality scorer runs at %s, not %s as asked", self._priority_in_effect, self.cpu_priority)
        self._restore()
        while True:
            with self._cond:
                step, arg = self._next_step()
            if step == "stop":
                return
            if step == "check":
                self._drop_stored(arg)
            elif step == "sweep":
                self._sweep()
            elif step == "release":  # a job started while CLIP held the GPU: give it back now
                assert self._clip is not None
                self._clip.release_gpu()
            else:
                self._score_queued(*arg)

    def _next_step(self) -> tuple[str, Any]:
        """Wait (holding the condition) for the next step: check, sweep, release, score (with its job) or stop."""
        while not self._stopping:
            self._busy = False
            self._cond.notify_all()
            if self._unchecked:
                unchecked, self._unchecked = self._unchecked, set()
                self._busy = True
                return "check", unchecked
            wait_s: float | None = None
            if self._store_backlog_since is not None and len(self._queue) <= self._max_queue // 2:
                sweep_in_s = self._next_sweep - self._clock()
                if sweep_in_s <= 0:
                    self._busy = True
                    return "sweep", None
                wait_s = sweep_in_s
            if self._queue:
                decision = self.activity.decide(self._clock() - self._queue[0].queued_at)
                if decision.run:
                    self.activity.took(decision)
                    job = self._queue.popleft()
                    self._busy = True
                    current = self._results.get(job.job_id)
                    if current is not None:
                        self._keep(replace(current, status=SCORING, pending=False, schedule=decision.reason))
                    return "score", (job, decision)
                wait_s = max(MIN_WAIT_S, min(decision.wait_s, wait_s if wait_s is not None else decision.wait_s))
            # CLIP uses the GPU only between jobs: hand its copy back as soon as a job runs there.
            if self._clip is not None and self._clip.on_gpu and self.activity.running():
                self._busy = True
                return "release", None
            self._cond.wait(wait_s)
        return "stop", None

    def _score_queued(self, job: _Job, decision: Decision) -> None:
        with self._cond:
            current = self._results.get(job.job_id)
            rating = current.rating if current is not None else None
        paused_s = 0.0

        def step_aside() -> None:
            nonlocal paused_s
            paused_s += self.activity.wait_for_denoising()

        try:
            result = self.score_job(
                job.job_id,
                job.video_path,
                job.image_path,
                job.prompt,
                job.gpu,
                rating,
                allow_gpu=decision.allow_gpu,
                pause=step_aside if decision.beside else None,
            )
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
        schedule = decision.reason
        if decision.beside:
            schedule += f"; paused {paused_s:.1f} s while the job was outside its denoising loop"
        result = replace(result, schedule=schedule)
        if decision.overdue:
            self._deferred.inc()
        with self._cond:
            latest = self._results.get(job.job_id)
            if latest is not None and latest.rating != result.rating:
                result = self._assessor.combined(replace(result, rating=latest.rating))
            self._keep(result)
        self._publish(result, became_low=bool(result.low_quality), scored=True)

    def _why_waiting(self, job_id: str) -> str | None:
        """Say why a queued clip waits (called holding the condition)."""
        position = next((i for i, job in enumerate(self._queue) if job.job_id == job_id), None)
        if position is None:
            return None
        decision = self.activity.decide(self._clock() - self._queue[position].queued_at)
        if decision.run:
            return f"next to be scored, behind {position} clip(s)" if position else "about to be scored"
        return decision.reason

    # Restoring from the store
    def _restore(self) -> None:
        """Restore the CLIP baseline and queue the backlog from the store (the worker's first step)."""
        if self._history is None:
            return
        cosines: list[float] = []
        if self._clip is not None:
            cosines = self._read(self._history.recent_cosines, self._calibration.capacity, default=[])
            for cosine in cosines:
                self._calibration.observe(cosine)
        with self._cond:
            free = self._max_queue - len(self._queue)
            held = set(self._results)
        backlog = []
        if free > 0:
            backlog = self._read(self._history.unscored, BACKLOG_WINDOW_S, free, held.__contains__, default=[])
        for clip in backlog:
            self._submit_finished(clip)
        if backlog and len(backlog) >= free:
            with self._cond:  # the store may hold more than the queue took: swept once it has room
                self._store_backlog_since = self._clock()
        log.info(
            "quality: CLIP baseline restored from %d stored clips; %d unscored clips from the last %d h queued",
            len(cosines),
            len(backlog),
            BACKLOG_WINDOW_S // 3600,
        )

    def _sweep(self) -> None:
        """Take the store's backlog (the clips the full queue left there first among it) back into the queue.

        Until a read finds fewer clips than the queue has room for, at least `STORE_LAG_S` after the last clip
        was left there (so that its event has reached the store), the store may hold more: read again later.
        A clip left there and still not found then is dropped from the pending count, logged and counted lost.
        """
        assert self._history is not None
        with self._cond:
            free = self._max_queue - len(self._queue)
            held = {job_id for job_id in self._results if job_id not in self._in_store}
            since = self._store_backlog_since
        backlog = self._read(self._history.unscored, BACKLOG_WINDOW_S, free, held.__contains__, default=None)
        for clip in backlog or ():
            self._submit_finished(clip)
        now = self._clock()
        with self._cond:
            self._next_sweep = now + SWEEP_RETRY_S
            settled = since is not None and since == self._store_backlog_since and now - since >= STORE_LAG_S
            if backlog is None or len(backlog) >= free or not settled:
                return
            self._store_backlog_since = None
            lost, self._in_store = self._in_store, set()
            for job_id in lost:
                current = self._results.get(job_id)
                if current is not None and current.status == QUEUED:
                    del self._results[job_id]
            self.rejected += len(lost)
            self._jobs.labels("rejected").inc(len(lost))
        if lost:
            log.warning("quality: %d clips left waiting in the store are not found there: not scored", len(lost))

    def _drop_stored(self, job_ids: set[str]) -> None:
        """Take the store's result for queued jobs it already has one for (events replayed after a restart)."""
        if self._history is None:
            return
        found = {}
        for job_id in job_ids:
            stored = self._read(self._history.latest, job_id, default=None)
            if stored is not None:
                found[job_id] = stored
        if not found:
            return
        with self._cond:
            self._queue = deque(job for job in self._queue if job.job_id not in found)
            for job_id, stored in found.items():
                current = self._results.get(job_id)
                rating = current.rating if current is not None and current.rating is not None else stored.rating
                self._keep(replace(stored, rating=rating))

    def _read(self, read: Callable[..., Any], *args: Any, default: Any) -> Any:
        """Return `read(*args)`, or `default` when the store cannot answer (logged once until it can)."""
        try:
            answer = read(*args)
        except (StoreUnavailable, StoreRejected) as e:
            if not self._read_failing:
                log.warning("quality: the store cannot be read (%s); going on without it (logged once)", e)
            self._read_failing = True
            return default
        self._read_failing = False
        return answer

    # Output
    def _keep(self, result: QualityResult) -> QualityResult:
        self._results[result.job_id] = result
        self._results.move_to_end(result.job_id)
        while len(self._results) > self._max_results:
            self._results.popitem(last=False)
        return result

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
