"""Fixtures: a tiny random-weight CLIP saved to disk, and synthetic clips written as H.264."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from . import synthetic


def _byte_alphabet() -> list[str]:
    """Return GPT-2/CLIP's printable stand-ins for the 256 bytes (the BPE's base symbols)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write a byte-level CLIP BPE vocabulary with a few merges and return the tokenizer built from it."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    symbols = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def tiny_clip_config(vocab_size: int) -> CLIPConfig:
    """Return a CLIP small enough to run in milliseconds: 2 layers, width 32, 32 px images."""
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77,
        },
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4,
        },
        projection_dim=16,
    )  # fmt: skip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Save a tiny random CLIP (model, tokenizer, image processor) the way a real one ships."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = write_tiny_tokenizer(tmp_path_factory.mktemp("vocab"))
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write every synthetic clip once per session."""
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "smooth": synthetic.smooth_pan(),
        "jittery": synthetic.jittery_pan(),
        "shaking": synthetic.shake(),
        "flickering": synthetic.flicker(),
        "frozen": synthetic.frozen(),
        "pan_256": synthetic.smooth_pan(256, scale=2),
        "pan_512": synthetic.smooth_pan(512, scale=2),
        "drifting": synthetic.drifting(),
        "keeping": synthetic.keeping(),
    }
    return {name: synthetic.write_mp4(frames, folder / f"{name}.mp4") for name, frames in made.items()}


@pytest.fixture(scope="session")
def input_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the input image the drifting clip starts from (and the frozen clip shows)."""
    path = tmp_path_factory.mktemp("input") / "input.png"
    Image.fromarray(synthetic.window_clip([0])[0]).save(path)
    return path
