"""The pipeline's modes: the real CLIP tokenizer offline, and real weights loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generator.pipeline import load_pipeline, save_pipeline
from generator.stages import StageTimer
from generator.tokenizer import VOCAB_SIZE, build_clip_tokenizer

CPU = torch.device("cpu")


def test_the_tokenizer_is_clips_own_vocabulary(tmp_path: Path) -> None:
    tokenizer = build_clip_tokenizer(tmp_path)

    assert len(tokenizer) == VOCAB_SIZE
    # OpenAI CLIP's ids: <|startoftext|> a cat <|endoftext|>.
    assert tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


def test_a_saved_pipeline_loads_back_from_a_local_folder_and_runs(tmp_path: Path) -> None:
    tiny = load_pipeline("tiny", CPU, torch.float32, tmp_path / "cache")
    save_pipeline(tiny, tmp_path / "weights")

    loaded = load_pipeline(str(tmp_path / "weights"), CPU, torch.float32, tmp_path / "cache")

    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        original = dict(getattr(tiny, name).named_parameters())
        for key, value in getattr(loaded, name).named_parameters():
            assert torch.equal(value, original[key]), f"{name}.{key}"
    timings = []
    frames = (
        StageTimer(loaded)
        .run(
            timings.append,
            lambda: False,
            prompt="a cat",
            image=Image.new("RGB", (64, 64)),
            height=64,
            width=64,
            num_frames=8,
            num_inference_steps=2,
            output_type="np",
        )
        .frames[0]
    )
    assert frames.shape == (8, 64, 64, 3)
    assert np.isfinite(frames).all()
    assert [t.stage for t in timings] == [
        "text_encoding",
        "image_encoding",
        "image_latents",
        "denoising_step",
        "denoising_step",
        "denoising",
        "decode_video",
    ]
    assert [t.step for t in timings if t.stage == "denoising_step"] == [1, 2]


def test_the_random_weight_pipeline_runs_its_models_for_inference_as_real_weights_do(tmp_path: Path) -> None:
    # A UNet left in training mode drops a tenth of its temporal convolutions' activations at each call: two calls
    # on the same inputs, the random generator's state moved between them, would differ.
    tiny = load_pipeline("tiny", CPU, torch.float32, tmp_path / "cache")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 4, 8, 8, generator=generator)
    inputs = {
        "timestep": torch.tensor(10),
        "encoder_hidden_states": torch.randn(1, 77, 32, generator=generator),
        "fps": torch.tensor([8]),
        "image_latents": torch.randn(1, 4, 4, 8, 8, generator=generator),
        "image_embeddings": torch.randn(1, 32, generator=generator),
        "return_dict": False,
    }

    with torch.no_grad():
        first = tiny.unet(sample, **inputs)[0]
        torch.manual_seed(1)
        second = tiny.unet(sample, **inputs)[0]

    assert torch.equal(first, second)
    assert not [name for name, module in tiny.components.items() if getattr(module, "training", False)]


def test_a_folder_without_a_pipeline_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path), CPU, torch.float32, tmp_path)
