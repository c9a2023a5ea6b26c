"""The scoring queue: bounded intake, one worker, stored points, ratings, low-quality events, failures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from common.events import Event, utc_now_iso
from monitor.quality.clip_score import ClipScorer
from monitor.quality.frames import read_clip
from monitor.quality.schedule import GpuActivity
from monitor.quality.scorer import FIELD_TYPES, MEASUREMENT, STORED_FIELDS, QualityResult, QualityScorer
from monitor.storage.base import Point

from . import synthetic

PROMPT = "a cat and a dog"
Make = Callable[..., QualityScorer]
Clips = dict[str, Path]


class Recorder:
    """A write callable that keeps what it was given (and can be told to fail)."""

    def __init__(self) -> None:
        self.points: list[Point] = []
        self.fail = False

    def __call__(self, points: Sequence[Point]) -> None:
        if self.fail:
            raise ConnectionError("store down")
        self.points.extend(points)

    def for_job(self, job_id: str) -> list[Point]:
        """Return the points written for one job, oldest first."""
        return [p for p in self.points if p.fields["job_id"] == job_id]


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> ClipScorer:
    """Load the tiny CLIP once for the module."""
    return ClipScorer.from_dir(clip_dir)


@pytest.fixture
def registry() -> CollectorRegistry:
    """Give each test its own metrics."""
    return CollectorRegistry()


@pytest.fixture
def written() -> Recorder:
    """Record written points."""
    return Recorder()


@pytest.fixture
def make(written: Recorder, registry: CollectorRegistry) -> Iterator[Make]:
    """Build scorers wired to the recorder and registry, and stop them after the test."""
    made: list[QualityScorer] = []

    def build(**kwargs: object) -> QualityScorer:
        kwargs.setdefault("clip", None)
        scorer = QualityScorer(write=written, host_name="host-a", registry=registry, **kwargs)  # type: ignore[arg-type]
        made.append(scorer)
        return scorer

    yield build
    for scorer in made:
        scorer.stop()


def _done(scorer: QualityScorer, job_id: str) -> QualityResult:
    assert scorer.wait_idle(30.0)
    result = scorer.result(job_id)
    assert result is not None
    return result


def test_queue_is_bounded_and_refusals_are_counted(make: Make, registry: CollectorRegistry, clips: Clips) -> None:
    scorer = make(max_queue=2)  # not started: nothing leaves the queue
    assert scorer.submit("a", clips["smooth"])
    assert scorer.submit("b", clips["smooth"])
    assert not scorer.submit("c", clips["smooth"])
    assert scorer.submit("a", clips["smooth"])  # already accepted: not queued twice
    assert scorer.rejected == 1
    assert registry.get_sample_value("i2v_quality_jobs_total", {"outcome": "rejected"}) == 1
    assert registry.get_sample_value("i2v_quality_queue_pending") == 2
    assert scorer.result("a").status == "queued"  # type: ignore[union-attr]
    assert scorer.result("c") is None


def test_scored_clip_is_written_as_one_quality_point(
    make: Make,
    written: Recorder,
    registry: CollectorRegistry,
    clip: ClipScorer,
    clips: Clips,
    input_png: Path,
    tmp_path: Path,
) -> None:
    video = synthetic.job_folder(tmp_path, "job-1", clips["smooth"], input_png)
    scorer = make(clip=clip)
    scorer.start()
    assert scorer.submit("job-1", video, video.with_name("input.png"), PROMPT, gpu="1")
    result = _done(scorer, "job-1")

    assert result.status == "scored"
    expected = clip.score(PROMPT, read_clip(video).sampled_frames)
    assert result.clip_score == pytest.approx(expected.score, abs=1e-3)
    assert result.clip_score_min == pytest.approx(expected.score_min, abs=1e-3)
    assert result.i2v_subject is not None
    assert 0.0 <= result.i2v_subject <= 1.0
    assert result.smoothness is not None
    assert result.smoothness > 0.9
    assert result.static is False
    assert result.parts_used == "clip,smoothness"
    assert result.rating is None
    assert result.scoring_duration_s is not None
    assert result.scoring_duration_s > 0

    [point] = written.for_job("job-1")
    assert point.measurement == MEASUREMENT
    assert point.tags == {"host": "host-a", "gpu": "1"}
    assert set(point.fields) == set(STORED_FIELDS)
    assert point.fields["combined"] == result.combined
    assert isinstance(point.fields["static"], bool)
    assert registry.get_sample_value("i2v_quality_score_count") == 1
    assert registry.get_sample_value("i2v_quality_scoring_duration_seconds_count") == 1
    assert registry.get_sample_value("i2v_quality_jobs_total", {"outcome": "scored"}) == 1


def test_without_clip_weights_the_score_is_null_with_the_reason(
    make: Make, clips: Clips, input_png: Path, tmp_path: Path
) -> None:
    video = synthetic.job_folder(tmp_path, "job-2", clips["smooth"], input_png)
    scorer = make()
    scorer.start()
    scorer.submit("job-2", video, video.with_name("input.png"), PROMPT)
    result = _done(scorer, "job-2")
    assert result.clip_score is None
    assert result.clip_reason == "no CLIP weights configured"
    assert result.i2v_subject is None
    assert result.i2v_reason == "no image encoder: no CLIP weights configured"
    assert result.parts_used == "smoothness"
    assert result.combined == pytest.approx(result.smoothness)


def test_unreadable_clip_is_unscorable_and_the_worker_goes_on(
    make: Make, written: Recorder, clips: Clips, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 512)
    scorer = make()
    scorer.start()
    scorer.submit("missing", tmp_path / "nowhere.mp4")
    scorer.submit("broken", broken)
    scorer.submit("good", clips["smooth"])
    assert _done(scorer, "missing").unscorable_reason == "clip not found: nowhere.mp4"  # no path in an answer
    broken_result = scorer.result("broken")
    assert broken_result is not None
    assert broken_result.status == "unscorable"
    assert broken_result.unscorable_reason is not None
    assert broken_result.unscorable_reason.startswith("cannot decode")
    assert broken_result.combined is None
    assert scorer.result("good").status == "scored"  # type: ignore[union-attr]
    assert written.for_job("broken")[0].fields["unscorable_reason"] == broken_result.unscorable_reason


def test_a_failing_encoder_marks_the_clip_unscorable_not_the_worker_dead(
    make: Make, clips: Clips, input_png: Path
) -> None:
    class Broken:
        def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
            raise RuntimeError("encoder exploded")

    scorer = make(image_encoder=Broken())
    scorer.start()
    scorer.submit("bad", clips["smooth"], input_png)
    scorer.submit("fine", clips["smooth"])
    assert _done(scorer, "bad").unscorable_reason == "scoring failed: RuntimeError: encoder exploded"
    assert scorer.result("fine").status == "scored"  # type: ignore[union-attr]


def test_rating_recomputes_the_combined_score_and_writes_it(make: Make, written: Recorder, clips: Clips) -> None:
    scorer = make()
    scorer.start()
    scorer.submit("job-3", clips["smooth"])
    before = _done(scorer, "job-3")
    assert before.smoothness is not None
    rated = scorer.rate("job-3", 5)
    assert rated is not None
    assert rated.rating == 5
    assert rated.parts_used == "smoothness,rating"
    assert rated.combined == pytest.approx((0.3 * before.smoothness + 0.2 * 1.0) / 0.5)
    low = scorer.rate("job-3", 1)
    assert low is not None
    assert low.combined is not None
    assert rated.combined is not None
    assert low.combined < rated.combined
    assert [p.fields["rating"] for p in written.for_job("job-3")] == [None, 5, 1]


@pytest.mark.parametrize("stars", [0, 6, 2.5, "5", True, None])
def test_rating_outside_1_to_5_is_refused(make: Make, clips: Clips, stars: object) -> None:
    scorer = make()
    scorer.submit("job", clips["smooth"])
    with pytest.raises(ValueError, match="1 to 5"):
        scorer.rate("job", stars)  # type: ignore[arg-type]


def test_rating_an_unknown_job_gives_none_and_an_early_rating_is_kept(make: Make, clips: Clips) -> None:
    scorer = make()
    assert scorer.rate("nobody", 3) is None
    scorer.submit("early", clips["smooth"])
    assert scorer.rate("early", 4).status == "queued"  # type: ignore[union-attr]
    scorer.start()
    result = _done(scorer, "early")
    assert result.rating == 4
    assert result.parts_used == "smoothness,rating"


def test_low_quality_emits_one_event_when_the_score_falls_below_the_threshold(make: Make, clips: Clips) -> None:
    events: list[QualityResult] = []
    scorer = make(on_low_quality=events.append, threshold=0.6)
    scorer.start()
    scorer.submit("frozen", clips["frozen"])
    scorer.submit("smooth", clips["smooth"])
    frozen = _done(scorer, "frozen")
    assert frozen.static is True
    assert frozen.parts_used == "smoothness(static)"
    assert frozen.low_quality is True
    assert [e.job_id for e in events] == ["frozen"]
    scorer.rate("frozen", 2)  # still low: no second event
    scorer.rate("smooth", 1)  # (0.3·0.99 + 0) / 0.5 ≈ 0.59: falls below
    assert [e.job_id for e in events] == ["frozen", "smooth"]


def test_every_scored_clip_reaches_on_result_and_a_rating_does_not(make: Make, clips: Clips, tmp_path: Path) -> None:
    results: list[QualityResult] = []
    scorer = make(on_result=results.append, threshold=0.6)
    scorer.start()
    scorer.submit("frozen", clips["frozen"])
    scorer.submit("smooth", clips["smooth"])
    scorer.submit("missing", tmp_path / "nope.mp4")
    _done(scorer, "missing")
    assert [(r.job_id, r.low_quality) for r in results] == [("frozen", True), ("smooth", False), ("missing", None)]
    scorer.rate("smooth", 1)
    assert len(results) == 3


def test_a_store_outage_keeps_results_readable(
    make: Make, written: Recorder, registry: CollectorRegistry, clips: Clips
) -> None:
    written.fail = True
    scorer = make()
    scorer.start()
    scorer.submit("job-4", clips["smooth"])
    assert _done(scorer, "job-4").status == "scored"
    assert registry.get_sample_value("i2v_quality_write_errors_total") == 1


def test_succeeded_job_event_is_scored_with_the_input_image_beside_the_video(
    make: Make, clip: ClipScorer, clips: Clips, input_png: Path, tmp_path: Path
) -> None:
    video = synthetic.job_folder(tmp_path, "job-5", clips["keeping"], input_png)
    scorer = make(clip=clip, outputs_dir=tmp_path)
    scorer.start()

    def event(**kwargs: object) -> Event:
        base: dict[str, object] = {
            "job_id": "job-5",
            "host": "h",
            "gpu": "0",
            "kind": "job",
            "started_at": utc_now_iso(),
        }
        return Event(**{**base, **kwargs})  # type: ignore[arg-type]

    assert not scorer.submit_event(event(status="running"))
    assert not scorer.submit_event(event(kind="stage", stage="export"))
    assert scorer.submit_event(event(status="succeeded", prompt=PROMPT, video_path=str(video)))
    result = _done(scorer, "job-5")
    assert result.clip_score is not None
    assert result.i2v_subject is not None
    assert result.i2v_reason is None


def test_a_monitor_without_clip_weights_never_loads_torch() -> None:
    code = "import sys, monitor.quality.scorer, monitor.web.quality; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}).returncode
        == 0
    )


def test_listening_to_events_follows_running_jobs_and_queues_finished_clips(make: Make, clips: Clips) -> None:
    scorer = make(activity=GpuActivity("0", startup_quiet_s=0.0))

    def job(job_id: str, status: str, **kwargs: object) -> Event:
        fields: dict[str, Any] = {"host": "h", "gpu": "0", "kind": "job", "started_at": utc_now_iso()}
        return Event(job_id=job_id, status=status, **{**fields, **kwargs})

    scorer.listen([job("a", "queued"), job("a", "running"), job("b", "running"), job("c", "running", gpu="1")])
    assert scorer.activity.running() == ["a", "b"]  # GPU 1 is not the one scoring uses
    scorer.listen([job("a", "succeeded", video_path=str(clips["smooth"]), prompt=PROMPT), job("b", "failed")])
    assert scorer.activity.running() == []
    assert scorer.result("a") is not None
    assert scorer.result("b") is None


def test_stored_fields_have_their_declared_types(make: Make, written: Recorder, clips: Clips) -> None:
    scorer = make()
    scorer.start()
    scorer.submit("typed", clips["smooth"])
    _done(scorer, "typed")
    scorer.rate("typed", 3)
    assert set(FIELD_TYPES) == set(STORED_FIELDS)
    python_types = {"float": float, "int": int, "bool": bool, "str": str}
    for point in written.for_job("typed"):
        for name, value in point.fields.items():
            if value is not None:
                assert type(value) is python_types[FIELD_TYPES[name]], name
