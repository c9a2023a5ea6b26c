"""CLIP text-video consistency: the prompt's and each frame's normalised embeddings, compared by cosine.

The model is transformers' CLIPModel with its tokenizer and CLIPImageProcessor, loaded from a local
folder (`--clip-model DIR` or `MONITOR_CLIP_MODEL`); nothing is fetched. The score is reported as torchmetrics
reports it, 100·max(cos, 0), for the mean over frames and for the worst frame. (A softmax over one prompt is
always 1.0.)

Device: on a CUDA machine the frames run on the GPU in fp16 only when the caller allows it for this clip (the
scorer does between jobs) and `gpu_allows()` says so (free memory covers the model with a margin); otherwise on
the CPU, in bf16 where the CPU computes it natively (AVX512-BF16 or AMX: about twice as fast as fp32 there,
cosines within 1e-3 of fp32's) and in fp32 elsewhere (fp16 on a CPU is ~20x slower). The fp16 copy stays on the
GPU between clips while allowed, and is dropped (and the cache emptied) the first time it is not, when the
scorer sees a job start (unless an overdue clip waits to be scored beside it), or after an out-of-memory error,
after which that clip is scored on the CPU.

CPU threads: the scorer runs beside the generator, so it takes half the cores by default (at least one), set
around each CPU pass and restored after. Measured on 2 shared cores with another process busy on one: ViT-B/32
on 17 images took 0.89 s with one thread and 2.42 s with two (OpenMP threads waiting on a taken core).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.settings import env_value

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# torch is imported where a model runs, so a monitor without CLIP weights never loads it (~190 MB, 1.3 s).

NO_WEIGHTS_REASON = "no CLIP weights configured"


class ClipLoadError(Exception):
    """The configured CLIP folder cannot be loaded; the message names the folder and the cause."""


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised embeddings from one pass: the prompt's (or None) and one row per image."""

    text: np.ndarray | None
    images: np.ndarray
    device: str


@dataclass(frozen=True)
class TextFrameScore:
    """Cosine of the prompt with each frame; `score` and `score_min` are 100·max(cos, 0) as torchmetrics."""

    per_frame_cos: tuple[float, ...]

    @property
    def mean_cos(self) -> float:
        """Return the mean cosine over frames."""
        return float(np.mean(self.per_frame_cos))

    @property
    def min_cos(self) -> float:
        """Return the worst frame's cosine."""
        return float(np.min(self.per_frame_cos))

    @property
    def score(self) -> float:
        """Return 100·max(mean cos, 0)."""
        return 100.0 * max(self.mean_cos, 0.0)

    @property
    def score_min(self) -> float:
        """Return 100·max(min cos, 0)."""
        return 100.0 * max(self.min_cos, 0.0)


def text_frame_score(text: np.ndarray, frames: np.ndarray) -> TextFrameScore:
    """Compare the prompt embedding with every frame embedding (rows), both already normalised."""
    cosines = frames @ text
    return TextFrameScore(per_frame_cos=tuple(float(c) for c in np.clip(cosines, -1.0, 1.0)))


def native_bf16_cpu() -> bool:
    """Return whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch reports it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def never() -> bool:
    """Refuse the GPU (the default policy: CPU only)."""
    return False


def gpu_policy(
    *,
    free_memory_bytes: Callable[[], int | None],
    required_bytes: int,
    resident: Callable[[], bool] = never,
) -> Callable[[], bool]:
    """Build a `gpu_allows()`: yes while CLIP's copy is on the GPU already or free memory covers `required_bytes`.

    When a clip may use the GPU at all is the scheduler's decision (between jobs: monitor/quality/schedule.py);
    this only keeps CLIP off a card that another process has filled. `free_memory_bytes` returning None (no NVML
    reading) counts as not enough.
    """

    def allows() -> bool:
        if resident():
            return True
        free = free_memory_bytes()
        return free is not None and free >= required_bytes

    return allows


def free_memory_reader(latest: Callable[[], Any], gpu_index: int = 0) -> Callable[[], int | None]:
    """Build a `free_memory_bytes()` from the sampler's last snapshot (`.gpus[i].memory_total/used_bytes`).

    It reads the snapshot the sampler already took, never NVML itself; None when there is no reading.
    """

    def free() -> int | None:
        snapshot = latest()
        gpu = next((g for g in getattr(snapshot, "gpus", ()) if g.index == gpu_index), None)
        if gpu is None or gpu.memory_total_bytes is None or gpu.memory_used_bytes is None:
            return None
        return int(gpu.memory_total_bytes - gpu.memory_used_bytes)

    return free


def resolve_model_dir(flag_value: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Return the CLIP folder from the flag, else `MONITOR_CLIP_MODEL` (or its old name), else None."""
    from monitor.config import BY_FIELD  # the setting's one declaration

    value = flag_value or env_value(BY_FIELD["clip_model"], environ)
    return Path(value) if value else None


class ClipScorer:
    """Embed prompts and images with one CLIP model; implements the i2v `ImageEncoder` protocol too."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        *,
        gpu_allows: Callable[[], bool] = never,
        cuda_available: Callable[[], bool] | None = None,
        cuda_device: str = "cuda",
        batch_size: int = 32,
        cpu_dtype: torch.dtype | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        import torch

        self.cpu_dtype = cpu_dtype or (torch.bfloat16 if native_bf16_cpu() else torch.float32)
        self._model = model.eval().to("cpu", self.cpu_dtype)
        self._tokenizer = tokenizer
        self._processor = image_processor
        self.gpu_allows = gpu_allows
        self._cuda_available = cuda_available or torch.cuda.is_available
        self._cuda_device = cuda_device
        self._batch_size = batch_size
        self.cpu_threads = cpu_threads or max(1, (os.cpu_count() or 2) // 2)
        self._gpu_model: Any = None
        self._max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self.gpu_fallbacks = 0
        self.last_device: str | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, **kwargs: Any) -> ClipScorer:
        """Load CLIPModel, its tokenizer and CLIPImageProcessor from a local folder (no hub).

        Raises:
            ClipLoadError: the folder is missing or does not hold a loadable CLIP.
        """
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        folder = Path(model_dir)
        if not folder.is_dir():
            raise ClipLoadError(f"CLIP model folder {folder} does not exist")
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ClipLoadError(f"cannot load CLIP from {folder}: {e}") from e
        return cls(model, tokenizer, processor, **kwargs)

    @property
    def parameter_count(self) -> int:
        """Return the model's parameter count."""
        return sum(p.numel() for p in self._model.parameters())

    @property
    def gpu_memory_estimate_bytes(self) -> int:
        """Return the GPU memory scoring needs: the fp16 weights plus 1 GiB for activations and the allocator."""
        return 2 * self.parameter_count + (1 << 30)

    @property
    def on_gpu(self) -> bool:
        """Return whether the fp16 GPU copy is held now."""
        return self._gpu_model is not None

    def release_gpu(self) -> None:
        """Drop the GPU copy and return its memory to the driver."""
        if self._gpu_model is None:
            return
        import torch

        self._gpu_model = None
        gc.collect()
        torch.cuda.empty_cache()

    @property
    def device_tag(self) -> str:
        """Return the `gpu` tag of the device CLIP prefers, as the generator tags its jobs: "0", or "cpu"."""
        if not self._cuda_available():
            return "cpu"
        import torch

        return str(torch.device(self._cuda_device).index or 0)

    def embed(
        self,
        images: Sequence[np.ndarray],
        prompt: str | None = None,
        *,
        allow_gpu: bool = True,
        pause: Callable[[], object] | None = None,
    ) -> Embeddings:
        """Embed the images (RGB uint8 arrays, batched) and the prompt on one device, normalised.

        `allow_gpu=False` keeps this pass on the CPU (and gives back a GPU copy): the scorer's decision for a clip
        scored while a job runs. `pause`, when given, is called before each image, embedded one at a time then, so
        that the scorer can step aside often (a clip's frames in one batch would be one long stretch of CPU work).
        """
        import torch

        use_gpu = allow_gpu and self._cuda_available() and self.gpu_allows()
        if not use_gpu:
            self.release_gpu()
            return self._embed_on(self._model, "cpu", self.cpu_dtype, images, prompt, pause)
        try:
            if self._gpu_model is None:
                self._gpu_model = copy.deepcopy(self._model).to(self._cuda_device, torch.float16)
            return self._embed_on(self._gpu_model, self._cuda_device, torch.float16, images, prompt)
        except torch.cuda.OutOfMemoryError as e:
            message = str(e).splitlines()[0]
        # Outside the except block, so the traceback no longer pins GPU tensors.
        log.warning("CLIP ran out of GPU memory (%s); releasing it and scoring on the CPU", message)
        self.gpu_fallbacks += 1
        self.release_gpu()
        return self._embed_on(self._model, "cpu", self.cpu_dtype, images, prompt)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return one L2-normalised CLIP image embedding per image (the i2v `ImageEncoder` protocol)."""
        return self.embed(images).images

    def score(self, prompt: str, frames: Sequence[np.ndarray]) -> TextFrameScore:
        """Return the prompt-frame cosines of the frames."""
        embeddings = self.embed(frames, prompt)
        assert embeddings.text is not None
        return text_frame_score(embeddings.text, embeddings.images)

    @contextlib.contextmanager
    def _threads_for(self, device: str) -> Iterator[None]:
        """Run a CPU pass on the scorer's own thread count, then give the process its setting back."""
        import torch

        threads = torch.get_num_threads()
        if device == "cpu":
            torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _embed_on(
        self,
        model: Any,
        device: str,
        dtype: torch.dtype,
        images: Sequence[np.ndarray],
        prompt: str | None,
        pause: Callable[[], object] | None = None,
    ) -> Embeddings:
        import torch

        batch_size = 1 if pause is not None else self._batch_size
        text = None
        with self._threads_for(device), torch.inference_mode():
            if prompt is not None:
                tokens = self._tokenizer(
                    [prompt], padding=True, truncation=True, max_length=self._max_text_tokens, return_tensors="pt"
                ).to(device)
                text = _normalised(model.get_text_features(**tokens))[0]
            rows = []
            for start in range(0, len(images), batch_size):
                if pause is not None:
                    pause()
                batch = list(images[start : start + batch_size])
                pixels = self._processor(images=batch, return_tensors="pt")["pixel_values"]
                rows.append(_normalised(model.get_image_features(pixel_values=pixels.to(device, dtype))))
        self.last_device = device
        return Embeddings(text=text, images=np.concatenate(rows), device=device)


def _normalised(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
