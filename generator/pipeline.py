"""Build diffusers' I2VGen-XL pipeline in one of three modes: the only module that imports diffusers.

- `tiny`: the real pipeline code on a small random-weight configuration (seconds on a CPU): tests and demos.
- `full`: the real I2VGen-XL component shapes with random weights: realistic GPU memory and time.
- a folder: real weights saved by `save_pretrained`, loaded with `local_files_only=True` (nothing downloaded).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from diffusers.utils import logging as diffusers_logging
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.utils import logging as transformers_logging

from generator.acceleration import Acceleration, CompiledModule, CompileWatch, to_channels_last, use_attention
from generator.packaged_unet import PackagedUNet
from generator.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# diffusers and transformers write to stderr through handlers of their own, which bypass the service's log
# format (a plain-text line in a JSON log): send their records through the root logger's handler instead.
for _library in (diffusers_logging, transformers_logging):
    _library.disable_default_handler()
    _library.enable_propagation()

MODES = ("tiny", "full")

# The UNet's repeated blocks, compiled one by one under GENERATOR_COMPILE_SCOPE=regional: the four layers every 3-D
# down, mid and up block repeats (spatial resnet, temporal convolution, spatial and temporal transformer), which
# hold nearly all of a step's work. In the full UNet 22 resnets, 22 temporal convolutions, 16 spatial and 17
# temporal transformers; blocks of equal width at equal latent size (a down block and the up block at its level)
# share a graph.
UNET_REPEATED_BLOCKS = ("ResnetBlock2D", "TemporalConvLayer", "Transformer2DModel", "TransformerTemporalModel")


@dataclass(frozen=True)
class Shapes:
    """The widths that must agree: text width = image projection = UNet cross-attention width."""

    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    vision_image_size: int
    vision_patch: int
    unet_channels: tuple[int, ...]
    unet_layers: int
    # diffusers' `attention_head_dim`: each attention head's width (the UNet's first temporal transformer has 8).
    unet_attention_head_dim: int
    unet_norm_groups: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    vae_norm_groups: int


# The VAE keeps four blocks (an 8x downsampling, like the real one): with a 2x VAE the UNet's spatial attention
# over 128x128 latents took 236 s per step on these CPUs. Heads of width 8 (4 heads at 32 channels): at width 4 the
# spatial attention was half of a 256p job's time; at 16 the first temporal transformer's projections (8 heads wide)
# cost as much as that saved.
TINY = Shapes(
    text_width=32, text_layers=2, text_heads=4, text_mlp=64,
    vision_width=32, vision_layers=2, vision_heads=4, vision_mlp=64, vision_image_size=32, vision_patch=8,
    unet_channels=(32, 64), unet_layers=1, unet_attention_head_dim=8, unet_norm_groups=16,
    vae_channels=(16, 32, 32, 32), vae_layers=1, vae_norm_groups=8,
)  # fmt: skip

# I2VGen-XL's published component shapes: UNet defaults (1,420 M parameters), VAE (128, 256, 512, 512),
# OpenCLIP ViT-H/14 text tower (width 1024, 24 layers) and image tower (width 1280, 32 layers, 224 px).
FULL = Shapes(
    text_width=1024, text_layers=24, text_heads=16, text_mlp=4096,
    vision_width=1280, vision_layers=32, vision_heads=16, vision_mlp=5120, vision_image_size=224, vision_patch=14,
    unet_channels=(320, 640, 1280, 1280), unet_layers=2, unet_attention_head_dim=64, unet_norm_groups=32,
    vae_channels=(128, 256, 512, 512), vae_layers=2, vae_norm_groups=32,
)  # fmt: skip
# One UNet block of 4 channels and a 4-channel VAE with the real 8x downsampling, about 1 s a job on these CPUs: for
# the queue's tests and its scaling benchmark, which load it through `--model DIR` and where the model must cost
# next to nothing.
MICRO = replace(
    TINY,
    unet_channels=(4,),
    unet_norm_groups=2,
    unet_attention_head_dim=1,
    vae_channels=(4, 4, 4, 4),
    vae_norm_groups=4,
)


def host_timesteps(scheduler: Any) -> list[Any]:
    """Return the scheduler's timesteps as host numbers where its `step` reads them only as numbers, else [].

    DDIM (I2VGen-XL's scheduler) uses the timestep as an index and in comparisons: handed the CUDA tensor, each
    step waits for the GPU to read it; handed the same number from the host, it computes the same values without
    waiting. Other schedulers keep the tensors the pipeline passes.
    """
    return scheduler.timesteps.tolist() if isinstance(scheduler, DDIMScheduler) else []


def pick_device() -> tuple[torch.device, torch.dtype]:
    """Return CUDA in fp16 when present, else the CPU in fp32 (fp16 on a CPU is 20x slower)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _scheduler() -> DDIMScheduler:
    # I2VGen-XL's own scheduler settings.
    return DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="leading",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
    )


@contextlib.contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype`: the full model is built on the GPU in about a second."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def random_pipeline(shapes: Shapes, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> I2VGenXLPipeline:
    """Build the real pipeline classes with random weights in the given shapes."""
    torch.manual_seed(0)
    build_dtype = dtype if device.type == "cuda" else torch.float32
    with _building_on(device, build_dtype):
        unet = I2VGenXLUNet(
            sample_size=32,
            block_out_channels=shapes.unet_channels,
            down_block_types=("CrossAttnDownBlock3D",) * (len(shapes.unet_channels) - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (len(shapes.unet_channels) - 1),
            layers_per_block=shapes.unet_layers,
            norm_num_groups=shapes.unet_norm_groups,
            cross_attention_dim=shapes.text_width,
            attention_head_dim=shapes.unet_attention_head_dim,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(shapes.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(shapes.vae_channels),
            block_out_channels=shapes.vae_channels,
            layers_per_block=shapes.vae_layers,
            norm_num_groups=shapes.vae_norm_groups,
            latent_channels=4,
            sample_size=256,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=shapes.text_width,
                intermediate_size=shapes.text_mlp,
                num_hidden_layers=shapes.text_layers,
                num_attention_heads=shapes.text_heads,
                max_position_embeddings=77,
                projection_dim=shapes.text_width,
                hidden_act="gelu",
            )
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=shapes.vision_width,
                intermediate_size=shapes.vision_mlp,
                num_hidden_layers=shapes.vision_layers,
                num_attention_heads=shapes.vision_heads,
                image_size=shapes.vision_image_size,
                patch_size=shapes.vision_patch,
                projection_dim=shapes.text_width,
                hidden_act="gelu",
            )
        )
    # Constructors leave a module in training mode, from_pretrained in eval mode: the UNet's temporal convolutions
    # would drop 10% of their activations at every step (slower, and not the model's inference).
    for module in (unet, vae, text_encoder, image_encoder):
        module.eval()
    size = shapes.vision_image_size
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pipe = I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(cache_dir / "clip-tokenizer"),
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=_scheduler(),
    )
    return pipe.to(device=device, dtype=dtype)


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> I2VGenXLPipeline:
    """Return the pipeline for `model`: 'tiny', 'full' or a folder of weights saved by `save_pretrained`."""
    if model == "tiny":
        pipe = random_pipeline(TINY, device, dtype, cache_dir)
    elif model == "full":
        pipe = random_pipeline(FULL, device, dtype, cache_dir)
    else:
        path = Path(model)
        if not (path / "model_index.json").is_file():
            raise ValueError(f"--model {model!r} is neither tiny, full nor a folder holding model_index.json")
        pipe = I2VGenXLPipeline.from_pretrained(path, local_files_only=True, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def accelerate(pipe: I2VGenXLPipeline, settings: Acceleration) -> list[CompiledModule]:
    """Apply `settings` to a loaded pipeline: attention kernel, channels-last weights, compiled UNet (and VAE).

    Compiling is lazy: each module compiles on its first call at a new size class, inside whichever stage calls
    it (the aoti backend only inside `PackagedUNet.building()`). Returns one watch per compiled module, in the
    order UNet, VAE decoder.
    """
    use_attention(settings.attention)
    if settings.channels_last:
        to_channels_last(pipe.unet)
        to_channels_last(pipe.vae)
    watches: list[CompiledModule] = []
    if settings.compile and settings.backend == "aoti":
        packaged = PackagedUNet(
            pipe.unet,
            settings.packages_folder(),
            pipe.unet.device,
            settings.inductor_options(),
            # Chosen when the UNet is exported; the strides of channels-last weights are in the key already.
            {"attention": settings.attention},
        )
        pipe.unet = packaged
        watches.append(packaged)
    elif settings.compile:
        unet = CompileWatch("unet", settings.backend, settings.mode, settings.dynamic)
        sizes = len(settings.warmup)
        # Through the pipeline's own setattr, which records the compiled module's class as the original's.
        if settings.scope == "regional":
            pipe.unet = unet.compile_blocks(pipe.unet, UNET_REPEATED_BLOCKS, settings.dynamic, sizes)
        else:
            pipe.unet = unet.compile(pipe.unet, settings.dynamic, sizes)
        watches.append(unet)
        if settings.compile_vae:
            # The decoder only: decode_latents calls vae.decode, whose post-quantisation conv is one layer.
            vae = CompileWatch("vae", settings.backend, settings.mode, settings.dynamic)
            pipe.vae.decoder = vae.compile(pipe.vae.decoder, settings.dynamic, sizes)
            watches.append(vae)
    return watches


def save_pipeline(pipe: Any, path: Path) -> None:
    """Save a pipeline so that plain `from_pretrained` loads it (a subclass would save its own class name)."""
    I2VGenXLPipeline(**pipe.components).save_pretrained(path)


def parameter_counts(pipe: Any) -> dict[str, int]:
    """Return each model component's parameter count, for the start-up log."""
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
