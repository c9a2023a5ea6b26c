"""The generator's HTTP API with the real tiny pipeline: clips, refusals, cancel, a full queue, a survived OOM."""

from __future__ import annotations

import io
from typing import Any

import pytest
import requests
import torch
from PIL import Image

from generator.peak_memory import JobMemory
from generator.video import probe_mp4
from tests.generator.conftest import GeneratorServer, png_bytes
from tests.servers import wait_for

ADMIN = {"Authorization": "Bearer s3cret"}


def encoded(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_job_makes_an_h264_clip_with_the_requested_frames_and_fps(generator: GeneratorServer, tmp_path) -> None:
    answer = generator.submit(fps="12")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert answer.headers["Location"] == f"/api/jobs/{job_id}"

    job = generator.wait_state(job_id, ("succeeded", "failed"))

    assert job["state"] == "succeeded", job
    assert job["progress"] == {"step": 10, "total_steps": 10, "ratio": 1.0}
    for stage in ("text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export"):
        assert job["stage_durations_s"][stage] >= 0, stage
    assert job["stage_durations_s"]["denoising_step_mean"] > 0
    video = requests.get(generator.url + job["video_url"], timeout=10)
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    path = tmp_path / "clip.mp4"
    path.write_bytes(video.content)
    assert probe_mp4(path) == {
        "codec": "h264",
        "frames": 8,
        "fps": 12.0,
        "width": 256,
        "height": 256,
        "pix_fmt": "yuv420p",
    }
    partial = requests.get(generator.url + job["video_url"], headers={"Range": "bytes=0-99"}, timeout=10)
    assert partial.status_code == 206
    assert len(partial.content) == 100


BOMB = encoded("PNG", (8000, 8000), "L")


@pytest.mark.parametrize(
    ("image", "fields", "status", "field"),
    [
        (b"", {}, 400, "image"),
        (encoded("GIF"), {}, 415, "image"),
        (b"%PDF-1.4 not an image at all", {}, 415, "image"),
        (png_bytes()[:200], {}, 400, "image"),
        (BOMB, {}, 413, "image"),
        (None, {"prompt": ""}, 400, "prompt"),
        (None, {"prompt": "   "}, 400, "prompt"),
        (None, {"prompt": "x" * 501}, 400, "prompt"),
        (None, {"prompt": "bell\x07"}, 400, "prompt"),
        (None, {"resolution": "300"}, 400, "resolution"),
        (None, {"resolution": "big"}, 400, "resolution"),
        (None, {"num_frames": "7"}, 400, "num_frames"),
        (None, {"num_frames": "33"}, 400, "num_frames"),
        (None, {"num_frames": "16.5"}, 400, "num_frames"),
        (None, {"steps": "9"}, 400, "steps"),
        (None, {"steps": "101"}, 400, "steps"),
        (None, {"guidance_scale": "0.5"}, 400, "guidance_scale"),
        (None, {"guidance_scale": "nan"}, 400, "guidance_scale"),
        (None, {"guidance_scale": "21"}, 400, "guidance_scale"),
        (None, {"fps": "3"}, 400, "fps"),
        (None, {"fps": "25"}, 400, "fps"),
        (None, {"seed": "-1"}, 400, "seed"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    generator: GeneratorServer, image: bytes | None, fields: dict[str, str], status: int, field: str
) -> None:
    answer = generator.submit(image=image, **fields)

    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["field"] == field
    assert body["error"]
    assert "allowed" in body


def test_an_upload_over_20_mb_is_refused_with_413(generator: GeneratorServer) -> None:
    answer = generator.submit(image=b"\x89PNG" + b"\0" * (21 * 2**20))

    assert answer.status_code == 413
    assert "20 MB" in answer.json()["error"]


def test_rejections_are_counted_by_reason(generator: GeneratorServer) -> None:
    def rejected(reason: str) -> float:
        return metric(generator, f'i2v_requests_rejected_total{{reason="{reason}"}}')

    before = {reason: rejected(reason) for reason in ("invalid_input", "too_large", "unsupported_media")}
    total_before = metric(generator, 'i2v_requests_total{status="rejected"}')
    assert generator.submit(steps="1000").status_code == 400
    assert generator.submit(image=b"GIF89a" + b"\0" * 64).status_code == 415
    assert generator.submit(image=b"\x89PNG" + b"\0" * (21 * 2**20)).status_code == 413  # refused before the route

    assert {reason: rejected(reason) - count for reason, count in before.items()} == {
        "invalid_input": 1,
        "too_large": 1,
        "unsupported_media": 1,
    }
    assert metric(generator, 'i2v_requests_total{status="rejected"}') - total_before == 3


def test_unknown_jobs_and_unfinished_videos_get_clear_errors(generator: GeneratorServer) -> None:
    assert requests.get(f"{generator.url}/api/jobs/nope", timeout=5).status_code == 404
    assert requests.get(f"{generator.url}/api/jobs/nope/video", timeout=5).status_code == 404
    assert requests.post(f"{generator.url}/api/jobs/nope/cancel", headers=ADMIN, timeout=5).status_code == 404
    assert requests.get(f"{generator.url}/api/jobs?state=lost", timeout=5).status_code == 400
    assert requests.get(f"{generator.url}/no/such/route", timeout=5).json()["status"] == 404


def test_cancel_needs_the_admin_token_when_one_is_set(generator: GeneratorServer) -> None:
    job_id = generator.submit().json()["job_id"]
    try:
        denied = requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", timeout=5)
        wrong = requests.post(
            f"{generator.url}/api/jobs/{job_id}/cancel", headers={"Authorization": "Bearer x"}, timeout=5
        )
        assert (denied.status_code, wrong.status_code) == (401, 401)
        assert "admin token" in denied.json()["error"]
    finally:
        requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", headers=ADMIN, timeout=5)
        generator.wait_state(job_id, ("cancelled", "succeeded", "failed"))


def test_a_running_job_is_cancelled_between_denoising_steps(generator: GeneratorServer) -> None:
    job_id = generator.submit().json()["job_id"]
    wait_for(lambda: generator.job(job_id)["progress"]["step"] >= 2, 120, "two denoising steps")

    answer = requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", headers=ADMIN, timeout=5)
    job = generator.wait_state(job_id, ("cancelled", "succeeded", "failed"))

    assert answer.status_code == 202
    assert job["state"] == "cancelled"
    assert job["progress"]["step"] < 10
    assert requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", headers=ADMIN, timeout=5).status_code == 409


def test_a_full_queue_answers_429_and_queued_jobs_cancel_at_once(generator: GeneratorServer) -> None:
    running = generator.submit().json()["job_id"]
    wait_for(lambda: generator.job(running)["state"] == "running", 60, "the first job to start")
    queued = [generator.submit().json()["job_id"] for _ in range(2)]
    try:
        full_before = metric(generator, 'i2v_requests_rejected_total{reason="queue_full"}')
        full = generator.submit()
        assert full.status_code == 429
        assert int(full.headers["Retry-After"]) >= 1
        assert metric(generator, 'i2v_requests_rejected_total{reason="queue_full"}') == full_before + 1
        assert generator.job(queued[1])["position"] == 2

        answer = requests.post(f"{generator.url}/api/jobs/{queued[1]}/cancel", headers=ADMIN, timeout=5)

        assert answer.status_code == 200
        assert answer.json()["state"] == "cancelled"
        assert generator.job(queued[0])["position"] == 1
    finally:
        for job_id in (*queued, running):
            requests.post(f"{generator.url}/api/jobs/{job_id}/cancel", headers=ADMIN, timeout=5)
        for job_id in (*queued, running):
            generator.wait_state(job_id, ("cancelled", "succeeded", "failed"))


def metric(generator: GeneratorServer, name: str) -> float:
    for line in requests.get(f"{generator.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_an_out_of_memory_inside_a_stage_fails_the_job_and_the_next_one_succeeds(
    generator: GeneratorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = generator.runtime.workers[0].pipe.unet
    real_forward = unet.forward
    calls = {"n": 0}

    def forward_that_runs_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_that_runs_out_of_memory)

    # One rung above the floor: the suggestion must name the next size down (256p/8), not the floor's advice.
    submitted = generator.submit(resolution="256", num_frames="16")
    failed = generator.wait_state(submitted.json()["job_id"], ("succeeded", "failed", "cancelled"))
    assert failed["state"] == "failed"
    assert failed["error"].startswith("CUDA out of memory. Tried to allocate")
    assert "try 256p with 8 frames (this job was 256p with 16 frames)" in failed["suggestion"]
    assert metric(generator, "i2v_consecutive_oom_failures") == 1

    recovered = generator.wait_state(generator.submit().json()["job_id"], ("succeeded", "failed", "cancelled"))
    assert recovered["state"] == "succeeded", recovered
    assert metric(generator, "i2v_consecutive_oom_failures") == 0
    assert requests.get(f"{generator.url}/ready", timeout=5).status_code == 200


def test_health_names_the_pid_and_metrics_follow_prometheus_names(generator: GeneratorServer) -> None:
    health = requests.get(f"{generator.url}/health", timeout=5).json()
    text = requests.get(f"{generator.url}/metrics", timeout=5).text

    assert health["status"] == "ok"
    assert isinstance(health["pid"], int)
    for name in (
        "i2v_requests_total",
        "i2v_request_duration_seconds_bucket",
        "i2v_stage_duration_seconds_bucket",
        "i2v_queue_pending",
    ):
        assert name in text, name
    assert 'i2v_requests_total{status="rejected"}' in text
    assert metric(generator, "i2v_events_spool_fill_ratio") == 0.0  # no monitor configured: no spool


def test_a_failed_export_fails_the_job_and_the_worker_keeps_serving(
    generator: GeneratorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("generator.worker.write_mp4", disk_full)

    job = generator.wait_state(generator.submit().json()["job_id"], ("succeeded", "failed", "cancelled"))

    assert job["state"] == "failed"
    assert "No space left on device" in job["error"]
    assert job["video_url"] is None
    assert all(worker["ready"] for worker in requests.get(f"{generator.url}/health", timeout=5).json()["workers"])
    assert generator.runtime.workers[0]._thread.is_alive()


def test_a_jobs_peak_memory_is_measured_from_an_emptied_cache_and_released_after_its_end(
    generator: GeneratorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's order, with the allocator's functions injected (the GPU proof is bench/gpu_acceptance.py)."""
    worker = generator.runtime.workers[0]
    calls: list[str] = []
    states_at_release: list[str] = []

    def release_memory() -> int:
        job = generator.runtime.book.list(limit=1)[0]
        states_at_release.append(job.state)
        calls.append("collect")
        return 0

    recording = JobMemory(
        worker.device,
        empty_cache=lambda: calls.append("empty_cache"),
        reset_peak=lambda device: calls.append("reset_peak"),
        max_reserved=lambda device: calls.append("read") or 7_000_000_000,
        max_allocated=lambda device: 5_000_000_000,
        collect=release_memory,
        on_cuda=True,
    )
    monkeypatch.setattr(worker, "job_memory", recording)

    job = generator.wait_state(generator.submit().json()["job_id"], ("succeeded", "failed"))
    wait_for(lambda: "collect" in calls, 10, "the worker to release the job's memory")

    assert job["state"] == "succeeded", job
    assert (job["peak_memory_bytes"], job["peak_memory_allocated_bytes"]) == (7_000_000_000, 5_000_000_000)
    # begin before the pipeline, a read at denoising, decode and the end, the release once the job is over
    assert calls == ["empty_cache", "reset_peak", "read", "read", "read", "collect", "empty_cache"]
    assert states_at_release == ["succeeded"]
