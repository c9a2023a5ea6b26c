"""When clips are scored, decided from real ingested events, with the real scorer on the tiny CLIP.

The CPU stands in for CUDA (`cuda_available=True`, `cuda_device="cpu"`), so "CLIP took the GPU" is observable
here as `clip.on_gpu`: between jobs CLIP keeps its GPU copy; a clip scored after the longest wait runs with the
GPU refused, and a job that starts takes the copy back.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from common.events import STARTUP_JOB_ID, Event, utc_now_iso
from monitor.compose import create_app, open_writer
from monitor.config import MonitorConfig
from monitor.quality.clip_score import ClipScorer
from monitor.quality.history import QualityHistory
from monitor.quality.schedule import Decision, GpuActivity
from monitor.quality.scorer import QualityResult, QualityScorer
from monitor.storage import open_store
from monitor.web.context import get_context
from tests.servers import wait_for

from . import synthetic

PROMPT = "a cat and a dog"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rule_waits_for_a_gap_settles_after_a_job_and_bounds_the_wait() -> None:
    clock = Clock()
    activity = GpuActivity("0", max_wait_s=300.0, startup_quiet_s=40.0, clock=clock)
    assert activity.decide(0.0).run  # never started: no quiet period
    activity.start()
    quiet = activity.decide(0.0)
    assert (quiet.run, quiet.wait_s) == (False, 40.0)
    clock.now += 40.0
    assert activity.decide(0.0) == GpuActivity("0", clock=clock).decide(0.0)  # quiet period over: idle

    assert activity.hear([event("a", "running"), event("b", "running", gpu="1"), event(STARTUP_JOB_ID, stage="warmup")])
    busy = activity.decide(100.0)
    assert (busy.run, busy.allow_gpu, busy.wait_s) == (False, False, 200.0)
    assert busy.reason == "job a running on GPU 0: scored when it ends, or beside the next job within 200 s"
    overdue = activity.decide(300.0)
    # Beside a running job CLIP stays off the GPU: two processes' kernels would take turns on the card.
    assert (overdue.run, overdue.allow_gpu, overdue.overdue) == (True, False, True)
    assert overdue.reason == "waited 300 s for a gap between jobs on GPU 0: scored beside job a, CLIP on the CPU"

    assert activity.hear([event("a", "succeeded")])
    clock.now += 1.0
    assert not activity.decide(0.0).run  # the next job's running event may be a second behind
    clock.now += 1.0
    assert activity.decide(0.0) == Decision(run=True, allow_gpu=True, reason="scored between jobs (GPU 0 idle)")


def test_overdue_clips_are_scored_one_per_job_that_ends_while_jobs_run() -> None:
    # A backlog must not be scored in one burst beside a running job: one overdue clip per job that ends (the
    # pace the generator makes them), or one per max_wait_s during a single long job.
    clock = Clock()
    activity = GpuActivity("0", max_wait_s=30.0, startup_quiet_s=0.0, clock=clock)
    activity.hear([event("a", "running")])
    first = activity.decide(400.0)
    assert first.run
    activity.took(first)
    held = activity.decide(400.0)
    assert (held.run, held.wait_s) == (False, 30.0)
    assert held.reason == (
        "waited 30 s for a gap between jobs on GPU 0: scored when job a ends (one overdue clip per job)"
    )
    assert activity.decide(400.0) == held  # asking does not use the allowance; only took() does

    activity.hear([event("a", "succeeded"), event("b", "running")])
    second = activity.decide(400.0)
    assert second.run
    activity.took(second)
    assert not activity.decide(400.0).run
    clock.now += 30.0  # job b runs long: one more per max_wait_s
    assert activity.decide(400.0).run


def test_a_job_silent_for_ten_minutes_no_longer_blocks_scoring() -> None:
    clock = Clock()
    activity = GpuActivity("0", startup_quiet_s=0.0, clock=clock)
    activity.hear([event("lost", stage="denoising_step", step=3)])  # its end event never comes
    assert activity.decide(0.0).wait_s == 300.0
    clock.now += 599.0
    assert activity.running() == ["lost"]
    clock.now += 1.0
    assert activity.running() == []
    assert activity.decide(0.0).run


@dataclass
class Rig:
    """A monitor app with a started scorer, its CLIP and registry, and a client to ingest through."""

    client: FlaskClient
    scorer: QualityScorer
    clip: ClipScorer
    registry: CollectorRegistry
    outputs: Path
    results: list[QualityResult]
    closed: bool = False

    def ingest(self, *events: Event) -> None:
        response = self.client.post("/monitor/api/events", json={"events": [e.to_dict() for e in events]})
        assert response.status_code == 200, response.get_json()

    def quality(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/monitor/api/jobs/{job_id}/quality")
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the scorer, flush the writer and close the store (once): the monitor stopping."""
        if not self.closed:
            self.closed = True
            self.scorer.stop()
            get_context(self.client.application).close()


def event(job_id: str, status: str | None = None, *, gpu: str = "0", **kwargs: Any) -> Event:
    """Return one of a job's events on a GPU of node-a (a state change, or a stage with `stage=`)."""
    kind = "job" if status is not None else "stage"
    return Event(job_id=job_id, host="node-a", gpu=gpu, kind=kind, status=status, started_at=utc_now_iso(), **kwargs)


def finished(rig: Rig, job_id: str, clips: dict[str, Path], input_png: Path) -> Event:
    """Lay out the job's clip and return its succeeded event."""
    video = synthetic.job_folder(rig.outputs, job_id, clips["smooth"], input_png)
    return event(job_id, "succeeded", prompt=PROMPT, video_path=str(video))


@pytest.fixture
def make_rig(tmp_path: Path, clip_dir: Path) -> Iterator[Any]:
    """Build rigs on one SQLite store (each its own monitor app and scorer); close them after the test."""
    built: list[Rig] = []
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        host_name="node-a",
        outputs_dir=tmp_path / "outputs",
    )

    def build(
        *, max_wait_s: float = 60.0, startup_quiet_s: float = 0.0, history: bool = False, max_queue: int = 1000
    ) -> Rig:
        clip = ClipScorer.from_dir(
            clip_dir, gpu_allows=lambda: True, cuda_available=lambda: True, cuda_device="cpu", cpu_dtype=torch.float32
        )
        registry = CollectorRegistry()
        results: list[QualityResult] = []
        store = open_store(config.store_url)
        writer = open_writer(config, store)
        scorer = QualityScorer(
            clip=clip, write=writer.write, host_name="node-a", registry=registry, on_result=results.append,
            activity=GpuActivity(clip.device_tag, max_wait_s=max_wait_s, startup_quiet_s=startup_quiet_s),
            history=QualityHistory(store, "node-a") if history else None, outputs_dir=config.outputs_dir,
            max_queue=max_queue, cpu_priority="idle",
        )  # fmt: skip
        app = create_app(config, store=store, writer=writer, quality=scorer)
        scorer.start()
        rig = Rig(app.test_client(), scorer, clip, registry, config.outputs_dir, results)
        built.append(rig)
        return rig

    yield build
    for rig in built:
        rig.close()


def test_a_clip_that_finished_as_the_next_job_started_waits_for_that_job_to_end(
    make_rig: Any, clips: dict[str, Path], input_png: Path
) -> None:
    rig: Rig = make_rig()
    # One batch, as the generator sends it: job a ends, job b (queued behind it) starts at once.
    rig.ingest(event("a", "queued"), event("a", "running"), finished(rig, "a", clips, input_png))
    rig.ingest(event("b", "queued"), event("b", "running"), event("b", stage="text_encoding"))

    waiting = rig.quality("a")
    assert waiting["status"] == "queued"
    assert waiting["pending"] is True
    assert "job b running on GPU 0" in waiting["schedule"]
    assert rig.client.get("/monitor/api/status").get_json()["quality"]["pending"] == 1
    assert not rig.scorer.wait_idle(1.0)  # b still denoises: a stays queued
    assert rig.quality("a")["status"] == "queued"

    rig.ingest(finished(rig, "b", clips, input_png))
    assert rig.scorer.wait_idle(30.0)
    scored = rig.quality("a")
    assert scored["status"] == "scored"
    assert scored["pending"] is False
    assert scored["schedule"] == "scored between jobs (GPU 0 idle)"
    assert scored["clip_score"] is not None
    assert rig.clip.on_gpu  # allowed the GPU between jobs
    assert rig.registry.get_sample_value("i2v_quality_deferred_total") == 0

    rig.ingest(event("c", "queued"), event("c", "running"))  # the next job takes the GPU copy back
    wait_for(lambda: not rig.clip.on_gpu, 10, "the scorer to give CLIP's GPU copy back when job c started")


def test_a_clip_waits_at_most_the_bound_then_is_scored_beside_the_running_job(
    make_rig: Any, clips: dict[str, Path], input_png: Path
) -> None:
    rig: Rig = make_rig(max_wait_s=1.0)
    busy_denoises = event("busy", stage="denoising_step", step=1, total_steps=10)
    rig.ingest(event("busy", "queued"), event("busy", "running"), busy_denoises)
    rig.ingest(event("a", "running"), finished(rig, "a", clips, input_png))

    assert rig.scorer.wait_idle(30.0)  # the job never ends; the clip is scored after about a second anyway
    scored = rig.quality("a")
    assert scored["status"] == "scored"
    assert scored["schedule"] == (
        "waited 1 s for a gap between jobs on GPU 0: scored beside job busy, CLIP on the CPU; "
        "paused 0.0 s while the job was outside its denoising loop"
    )
    assert not rig.clip.on_gpu  # CLIP never took the GPU from the running job
    assert rig.scorer.activity.running() == ["busy"]
    assert rig.registry.get_sample_value("i2v_quality_deferred_total") == 1
    assert rig.registry.get_sample_value("i2v_quality_queue_pending") == 0


def test_beside_a_running_job_scoring_steps_aside_while_the_job_is_outside_its_denoising_loop(
    make_rig: Any, clips: dict[str, Path], input_png: Path
) -> None:
    # On a GPU host the generator's CPU work is outside the loop (encoding, decoding, export): the H200 showed a
    # clip scored on the CPU beside a job slowing exactly that part of it.
    rig: Rig = make_rig(max_wait_s=0.5)
    rig.ingest(event("busy", "queued"), event("busy", "running"), event("busy", stage="image_encoding"))
    rig.ingest(event("a", "running"), finished(rig, "a", clips, input_png))

    # Let through as overdue (the scorer's thread may wait for a spare core first: it is in the idle class) ...
    wait_for(lambda: rig.quality("a")["status"] == "scoring", 30, "the overdue clip to be taken up")
    assert not rig.scorer.wait_idle(1.0)  # ... then paused: busy is encoding its inputs
    assert rig.quality("a")["status"] == "scoring"

    rig.ingest(event("busy", stage="denoising_step", step=1, total_steps=10))
    assert rig.scorer.wait_idle(30.0)
    scored = rig.quality("a")
    assert scored["status"] == "scored"
    assert scored["clip_score"] is not None
    paused = re.search(r"; paused ([0-9.]+) s while the job was outside its denoising loop$", scored["schedule"])
    assert paused is not None, scored["schedule"]
    assert float(paused.group(1)) >= 0.9


def test_a_pause_follows_the_jobs_loop_and_is_bounded() -> None:
    activity = GpuActivity("0", max_pause_s=0.3)
    assert activity.wait_for_denoising() == 0.0  # no job runs

    activity.hear([event("j", "running")])  # encoding its inputs next
    assert 0.3 <= activity.wait_for_denoising() < 2.0  # a lost event must not stall scoring
    activity.hear([event("j", stage="denoising_step", step=2, total_steps=10)])
    assert activity.wait_for_denoising() < 0.1
    activity.hear([event("j", stage="denoising_step", step=10, total_steps=10)])  # decoding and export next
    assert activity.wait_for_denoising() >= 0.3

    ended = threading.Timer(0.1, lambda: activity.hear([event("j", "succeeded")]))
    ended.start()
    patient = GpuActivity("0", max_pause_s=30.0)
    patient.hear([event("k", "running")])
    release = threading.Timer(0.1, patient.release)  # the scorer stopping
    release.start()
    assert patient.wait_for_denoising() < 5.0
    ended.join()
    assert activity.wait_for_denoising() == 0.0

    on_the_cpu = GpuActivity("cpu", max_pause_s=30.0)  # a CPU generator's loop is CPU work too: no pauses
    on_the_cpu.hear([event("c", "running", gpu="cpu")])
    assert on_the_cpu.wait_for_denoising() == 0.0


def test_after_a_restart_the_backlog_waits_for_the_running_job_then_is_scored_oldest_first(
    make_rig: Any, clips: dict[str, Path], input_png: Path
) -> None:
    first: Rig = make_rig()
    # x and y succeed while z runs; the monitor stops before it scores them.
    first.ingest(event("z", "queued"), event("z", "running"))
    first.ingest(event("x", "running"), finished(first, "x", clips, input_png))
    first.ingest(event("y", "running"), finished(first, "y", clips, input_png))
    first.close()

    second: Rig = make_rig(history=True, startup_quiet_s=3.0)  # the quiet period covers the generator's replay
    second.ingest(event("z", stage="denoising_step", step=3))  # z still denoises, as its events say
    wait_for(lambda: second.scorer.pending() == 2, 10, "the backlog of x and y to be queued")
    assert "job z running on GPU 0" in second.quality("x")["schedule"]
    assert not second.scorer.wait_idle(1.0)

    second.ingest(finished(second, "z", clips, input_png))
    assert second.scorer.wait_idle(30.0)
    assert [r.job_id for r in second.results] == ["x", "y", "z"]
    assert all(r.schedule == "scored between jobs (GPU 0 idle)" for r in second.results)


def test_clips_the_full_queue_cannot_take_wait_in_the_store_and_are_all_scored(
    make_rig: Any, clips: dict[str, Path], input_png: Path
) -> None:
    rig: Rig = make_rig(history=True, max_queue=2)
    # Three clips end while job "busy" runs, one more than the queue holds (the GPU acceptance run refused clips
    # this way: a restart's backlog and clips waiting beside back-to-back jobs filled its queue of 32).
    rig.ingest(event("busy", "running"))
    rig.ingest(*(finished(rig, job_id, clips, input_png) for job_id in ("a", "b", "c")))

    waiting = rig.quality("c")
    assert (waiting["status"], waiting["pending"]) == ("queued", True)
    assert waiting["schedule"].startswith("the scoring queue was full (2 clips): the clip waits in the store")
    assert rig.client.get("/monitor/api/status").get_json()["quality"]["pending"] == 3
    assert rig.registry.get_sample_value("i2v_quality_jobs_total", {"outcome": "in_store"}) == 1

    rig.ingest(finished(rig, "busy", clips, input_png))  # a and b are scored; c is taken back and scored after them
    wait_for(lambda: len(rig.results) == 4 and rig.scorer.pending() == 0, 30, "every clip to be scored")
    assert [r.job_id for r in rig.results] == ["a", "b", "c", "busy"]
    assert all(r.status == "scored" and r.clip_score is not None for r in rig.results)
    assert rig.quality("c")["status"] == "scored"
    assert rig.registry.get_sample_value("i2v_quality_jobs_total", {"outcome": "rejected"}) is None
