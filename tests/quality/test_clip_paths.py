"""The scorer reads only clips under the configured outputs folder: an ingested event cannot make it open any file.

A succeeded-job event names its clip; the monitor's ingest takes events from anyone holding the ingest token (or
anyone at all on a loopback monitor without one). A path outside the outputs folder, a symlink leading out of it,
or `..` is refused and counted, and no answer repeats the path it named.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from common.events import Event, utc_now_iso
from monitor.quality.scorer import UNSCORABLE, QualityScorer
from monitor.web.quality import init_app

from . import synthetic


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder


@pytest.fixture
def scorer(outputs: Path) -> Iterator[QualityScorer]:
    scorer = QualityScorer(
        clip=None, write=lambda points: None, host_name="h", registry=CollectorRegistry(), outputs_dir=outputs
    )
    scorer.start()
    yield scorer
    scorer.stop()


def succeeded(job_id: str, video_path: str) -> Event:
    return Event(
        job_id=job_id, host="h", gpu="0", kind="job", status="succeeded", started_at=utc_now_iso(),
        prompt="a fox", video_path=video_path,
    )  # fmt: skip


def refused_count(scorer: QualityScorer) -> float:
    return scorer.registry.get_sample_value("i2v_quality_jobs_total", {"outcome": "refused"}) or 0.0


def test_a_clip_under_the_outputs_folder_is_scored(scorer: QualityScorer, outputs: Path, clips: dict) -> None:
    video = synthetic.job_folder(outputs, "inside", clips["smooth"], None)
    scorer.listen([succeeded("inside", str(video))])
    assert scorer.wait_idle(30)
    assert scorer.result("inside").status == "scored"
    assert refused_count(scorer) == 0


def escaping_paths(tmp_path: Path, outputs: Path, clips: dict) -> dict[str, str]:
    """Paths an event may name that lead outside the outputs folder, to a real, readable clip."""
    outside = tmp_path / "elsewhere" / "video.mp4"
    outside.parent.mkdir()
    outside.write_bytes(clips["smooth"].read_bytes())
    linked = outputs / "linked"
    linked.mkdir()
    os.symlink(outside, linked / "video.mp4")
    os.symlink(outside.parent, outputs / "linked-folder")
    return {
        "absolute-outside": str(outside),
        "symlink-to-a-file-outside": str(linked / "video.mp4"),
        "symlinked-folder": str(outputs / "linked-folder" / "video.mp4"),
        "dot-dot": str(outputs / ".." / "elsewhere" / "video.mp4"),
        "relative-dot-dot": "../elsewhere/video.mp4",
        "system-file": "/etc/passwd",
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute-outside",
        "symlink-to-a-file-outside",
        "symlinked-folder",
        "dot-dot",
        "relative-dot-dot",
        "system-file",
    ],
)
def test_a_path_leading_outside_the_outputs_folder_is_refused_counted_and_not_echoed(
    scorer: QualityScorer, tmp_path: Path, outputs: Path, clips: dict, case: str
) -> None:
    path = escaping_paths(tmp_path, outputs, clips)[case]
    scorer.listen([succeeded("escape", path)])
    assert scorer.wait_idle(30)
    result = scorer.result("escape")
    assert result.status == UNSCORABLE  # never "scored": the clip outside was not read
    assert "outputs folder" in result.unscorable_reason
    assert refused_count(scorer) == 1
    app = Flask(__name__)
    init_app(app, scorer)
    answer = app.test_client().get("/monitor/api/jobs/escape/quality").get_data(as_text=True)
    assert str(tmp_path) not in answer
    assert path not in answer


def test_a_missing_clip_says_so_without_the_path(scorer: QualityScorer, outputs: Path) -> None:
    missing = outputs / "gone" / "video.mp4"
    missing.parent.mkdir()
    scorer.listen([succeeded("gone", str(missing))])
    assert scorer.wait_idle(30)
    result = scorer.result("gone")
    assert result.status == UNSCORABLE
    assert "not found" in result.unscorable_reason
    assert str(outputs) not in result.unscorable_reason
    assert refused_count(scorer) == 0  # inside the folder: missing, not refused


def test_without_an_outputs_folder_no_event_path_is_read(clips: dict) -> None:
    scorer = QualityScorer(clip=None, write=lambda points: None, host_name="h", registry=CollectorRegistry())
    scorer.start()
    try:
        scorer.listen([succeeded("nowhere", str(clips["smooth"]))])
        assert scorer.wait_idle(30)
        assert scorer.result("nowhere").status == UNSCORABLE
        assert refused_count(scorer) == 1
    finally:
        scorer.stop()
