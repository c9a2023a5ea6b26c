"""Save a random-weight CLIP folder of a published size, the way a real one ships (model, tokenizer, processor).

    python -m bench.clip_folder --model vit-l-14 --out DIR

The monitor loads it with `--clip-model DIR` through `ClipScorer.from_dir`, its production path: full-size
random weights cost what real ones cost, which is what the benchmarks and the GPU acceptance run measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode

# OpenAI CLIP's published dimensions: (width, layers, heads) of the text and vision towers, vision patch size,
# projection. MLPs are 4x wide; text vocabulary 49,408 with 77 positions; images 224 px.
MODELS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], int, int]] = {
    "vit-b-32": ((512, 12, 8), (768, 12, 12), 32, 512),
    "vit-l-14": ((768, 12, 12), (1024, 24, 16), 14, 768),
    "tiny": ((64, 2, 2), (64, 2, 2), 32, 64),  # a smoke test of a benchmark itself, not a measurement
}


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """Return CLIP's real BPE tokenizer where open_clip's merges are installed, else a byte-level one."""
    try:
        from generator.tokenizer import build_clip_tokenizer

        return build_clip_tokenizer(folder / "vocab")
    except (ImportError, RuntimeError):
        symbols = list(bytes_to_unicode().values())
        symbols += [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def save_random_clip(name: str, folder: Path) -> Path:
    """Save a random-weight CLIP of the named size, with tokenizer and image processor, into `folder`."""
    (text_width, text_layers, text_heads), (width, layers, heads), patch, projection = MODELS[name]
    config = CLIPConfig(
        text_config={
            "hidden_size": text_width, "intermediate_size": 4 * text_width, "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads, "vocab_size": 49408, "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
            "num_attention_heads": heads, "patch_size": patch, "image_size": 224,
        },
        projection_dim=projection,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    _tokenizer(folder / "tokenizer-src").save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # defaults: OpenAI's 224 px resize, crop and normalisation
    return folder


def main(argv: list[str] | None = None) -> int:
    """Save the folder and print its path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-l-14")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created)")
    args = parser.parse_args(argv)
    print(save_random_clip(args.model, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
