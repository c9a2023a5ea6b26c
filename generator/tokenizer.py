"""Build OpenAI CLIP's 49,408-token BPE tokenizer offline, from the merges file that open_clip's wheel ships."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode

# The merges file holds a version line, then the merges; CLIP keeps the first 49,152 - 256 - 2 of them.
_MERGE_COUNT = 49152 - 256 - 2
VOCAB_SIZE = 49408
MERGES_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"


def _merges_path() -> Path:
    # find_spec locates the package without importing it: open_clip's __init__ imports torchvision.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open_clip_torch is not installed: it ships CLIP's BPE merges (`pip install --no-deps open_clip_torch`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / MERGES_RESOURCE


def write_clip_vocab(directory: Path) -> tuple[Path, Path]:
    """Write CLIP's vocab.json and merges.txt into `directory` (once) and return their paths."""
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    if vocab_file.exists() and merges_file.exists():
        return vocab_file, merges_file
    with gzip.open(_merges_path(), "rt", encoding="utf-8") as merges_text:
        lines = merges_text.read().split("\n")[1 : _MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_clip_tokenizer(cache_dir: Path) -> CLIPTokenizer:
    """Return CLIP's real tokenizer (77 tokens, 49,408 ids), built with no model hub."""
    vocab_file, merges_file = write_clip_vocab(cache_dir)
    tokenizer = CLIPTokenizer(vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77)
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP tokenizer has {len(tokenizer)} ids, expected {VOCAB_SIZE}")
    return tokenizer
