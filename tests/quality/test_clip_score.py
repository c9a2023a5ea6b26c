"""The CLIP score through a tiny random CLIP saved to disk and loaded by the real loading code."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from monitor.quality.clip_score import (
    NO_WEIGHTS_REASON,
    ClipLoadError,
    ClipScorer,
    free_memory_reader,
    gpu_policy,
    resolve_model_dir,
)
from monitor.quality.frames import read_clip

PROMPT = "a cat and a dog"


@pytest.fixture(scope="module")
def scorer(clip_dir: Path) -> ClipScorer:
    """Load the tiny CLIP through the production path, in fp32 to compare with transformers exactly."""
    return ClipScorer.from_dir(clip_dir, cpu_dtype=torch.float32)


def _independent_cosines(clip_dir: Path, prompt: str, frames: list[np.ndarray]) -> np.ndarray:
    """Compute the prompt-frame cosines straight from transformers, without the scorer."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(clip_dir)([prompt], return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=frames, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.get_text_features(**tokens), dim=-1)
        images = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels), dim=-1)
    return (images @ text.T).squeeze(1).numpy()


def test_score_is_the_cosine_of_text_and_frame_features(
    scorer: ClipScorer, clip_dir: Path, clips: dict[str, Path]
) -> None:
    frames = read_clip(clips["smooth"], clip_frames=6).sampled_frames
    scored = scorer.score(PROMPT, frames)
    expected = _independent_cosines(clip_dir, PROMPT, frames)
    np.testing.assert_allclose(scored.per_frame_cos, expected, atol=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in scored.per_frame_cos)
    assert scored.mean_cos == pytest.approx(float(expected.mean()), abs=1e-5)
    assert scored.min_cos == pytest.approx(float(expected.min()), abs=1e-5)
    assert scored.score == pytest.approx(100 * max(float(expected.mean()), 0.0), abs=1e-3)
    assert scored.score_min == pytest.approx(100 * max(float(expected.min()), 0.0), abs=1e-3)


def test_bf16_on_the_cpu_stays_within_a_thousandth_of_fp32(
    scorer: ClipScorer, clip_dir: Path, clips: dict[str, Path]
) -> None:
    frames = read_clip(clips["smooth"], clip_frames=4).sampled_frames
    bf16 = ClipScorer.from_dir(clip_dir, cpu_dtype=torch.bfloat16)
    assert bf16.cpu_dtype == torch.bfloat16
    np.testing.assert_allclose(
        bf16.score(PROMPT, frames).per_frame_cos, scorer.score(PROMPT, frames).per_frame_cos, atol=5e-3
    )


def test_batches_give_the_same_embeddings_as_one_pass(clip_dir: Path, clips: dict[str, Path]) -> None:
    frames = read_clip(clips["smooth"], clip_frames=5).sampled_frames
    whole = ClipScorer.from_dir(clip_dir, cpu_dtype=torch.float32).encode_images(frames)
    batched = ClipScorer.from_dir(clip_dir, cpu_dtype=torch.float32, batch_size=2).encode_images(frames)
    np.testing.assert_allclose(whole, batched, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)


def test_a_gpu_refused_by_policy_or_absent_means_cpu(clip_dir: Path, clips: dict[str, Path]) -> None:
    frames = read_clip(clips["smooth"], clip_frames=2).sampled_frames
    asked: list[bool] = []

    def refuse() -> bool:
        asked.append(True)
        return False

    on_cuda_box = ClipScorer.from_dir(clip_dir, gpu_allows=refuse, cuda_available=lambda: True)
    assert on_cuda_box.embed(frames, PROMPT).device == "cpu"
    assert asked == [True]
    assert not on_cuda_box.on_gpu
    no_cuda = ClipScorer.from_dir(clip_dir, gpu_allows=lambda: True, cuda_available=lambda: False)
    assert no_cuda.embed(frames).device == "cpu"


@pytest.mark.parametrize(
    ("resident", "free", "allowed"),
    [(False, 8 << 30, True), (False, 1 << 30, False), (False, None, False), (True, 1 << 30, True)],
    ids=["enough-memory", "short-of-memory", "no-reading", "already-on-the-gpu"],
)
def test_gpu_policy_allows_clip_where_free_memory_covers_it_or_it_is_there(
    resident: bool, free: int | None, allowed: bool
) -> None:
    policy = gpu_policy(free_memory_bytes=lambda: free, required_bytes=2 << 30, resident=lambda: resident)
    assert policy() is allowed


def test_no_weights_configured_resolves_to_none_and_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    assert resolve_model_dir(None, {}) is None
    assert resolve_model_dir(None, {"CLIP_MODEL_DIR": str(tmp_path)}) == tmp_path
    assert resolve_model_dir("/flag", {"CLIP_MODEL_DIR": str(tmp_path)}) == Path("/flag")
    assert NO_WEIGHTS_REASON == "no CLIP weights configured"
    with pytest.raises(ClipLoadError, match="does not exist"):
        ClipScorer.from_dir(tmp_path / "absent")
    with pytest.raises(ClipLoadError, match="cannot load CLIP"):
        ClipScorer.from_dir(tmp_path)


def test_free_memory_is_read_from_the_samplers_last_snapshot() -> None:
    gpu = SimpleNamespace(index=0, memory_total_bytes=80 << 30, memory_used_bytes=30 << 30)
    snapshots: list[object] = [None, SimpleNamespace(gpus=(gpu,))]
    free = free_memory_reader(lambda: snapshots[0])
    assert free() is None
    snapshots.pop(0)
    assert free() == 50 << 30
    assert free_memory_reader(lambda: snapshots[0], gpu_index=1)() is None


def test_gpu_memory_estimate_covers_fp16_weights_and_a_margin(scorer: ClipScorer) -> None:
    assert scorer.gpu_memory_estimate_bytes == 2 * scorer.parameter_count + (1 << 30)


class _OomOnGpu(ClipScorer):
    """The tiny CLIP whose 'GPU' (the CPU standing in, in fp16) always runs out of memory."""

    def _embed_on(
        self, model: Any, device: str, dtype: torch.dtype, images: Any, prompt: str | None, pause: Any = None
    ) -> Any:
        if dtype == torch.float16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._embed_on(model, device, dtype, images, prompt, pause)


def _gpu_standin(cls: type[ClipScorer], clip_dir: Path, allows: list[bool]) -> ClipScorer:
    """Load the tiny CLIP with the CPU standing in for CUDA, so the GPU branch runs on this machine."""
    return cls.from_dir(
        clip_dir, gpu_allows=lambda: allows[-1], cuda_available=lambda: True, cuda_device="cpu",
        cpu_dtype=torch.float32,
    )  # fmt: skip


def test_gpu_copy_is_kept_while_allowed_and_dropped_when_not(clip_dir: Path, clips: dict[str, Path]) -> None:
    frames = read_clip(clips["smooth"], clip_frames=2).sampled_frames
    allows = [True]
    clip = _gpu_standin(ClipScorer, clip_dir, allows)
    clip.embed(frames, PROMPT)
    assert clip.on_gpu
    allows.append(False)
    clip.embed(frames, PROMPT)
    assert not clip.on_gpu


def test_a_pass_refused_the_gpu_by_the_caller_runs_on_the_cpu_and_gives_the_gpu_back(
    clip_dir: Path, clips: dict[str, Path]
) -> None:
    frames = read_clip(clips["smooth"], clip_frames=2).sampled_frames
    clip = _gpu_standin(ClipScorer, clip_dir, [True])
    clip.embed(frames, PROMPT)
    assert clip.on_gpu
    embeddings = clip.embed(frames, PROMPT, allow_gpu=False)
    assert embeddings.images.shape[0] == 2
    assert not clip.on_gpu


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu(clip_dir: Path, clips: dict[str, Path]) -> None:
    frames = read_clip(clips["smooth"], clip_frames=2).sampled_frames
    clip = _gpu_standin(_OomOnGpu, clip_dir, [True])
    embeddings = clip.embed(frames, PROMPT)
    assert embeddings.images.shape[0] == 2
    assert clip.gpu_fallbacks == 1
    assert not clip.on_gpu


def test_cpu_passes_use_the_scorers_threads_and_restore_the_process_setting(
    clip_dir: Path, clips: dict[str, Path]
) -> None:
    seen: list[int] = []
    before = torch.get_num_threads()
    # Other than the process's setting (one thread per xdist worker on two cores), or the test could not fail.
    threads = 2 if before == 1 else 1
    clip = ClipScorer.from_dir(clip_dir, cpu_threads=threads)
    image_features = clip._model.get_image_features

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return image_features(*args, **kwargs)

    clip._model.get_image_features = recording
    clip.embed(read_clip(clips["smooth"], clip_frames=1).sampled_frames)
    assert seen == [threads]
    assert torch.get_num_threads() == before
    assert ClipScorer.from_dir(clip_dir).cpu_threads >= 1
