"""Time quality scoring of one 16-frame 512x512 clip: decode, Farneback flow, CLIP (text, frames, input).

The CLIP is built at full size with random weights (ViT-B/32 or ViT-L/14 dimensions, bench/clip_folder.py), saved,
and loaded back through `ClipScorer.from_dir`, the production path; `--clip-model DIR` uses an existing folder instead.

    PYTHONPATH=. .venv/bin/python bench/bench_quality.py                      # CPU, ViT-B/32: < 1.5 s
    PYTHONPATH=. python bench/bench_quality.py --device cuda --model vit-l-14 # GPU: < 0.2 s

Prints one JSON object: median seconds per clip for each stage and end to end (`QualityScorer.score_job`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.clip_folder import MODELS, save_random_clip
from monitor.quality import motion
from monitor.quality.clip_score import ClipScorer
from monitor.quality.frames import read_clip
from monitor.quality.scorer import QualityScorer
from tests.quality import synthetic

TARGETS_S = {"cpu": 1.5, "cuda": 0.2}
PROMPT = "a red fox running through fresh snow at sunrise, cinematic"


def _median_s(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocation, lazy GPU copy, oneDNN/cuDNN kernel choice
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b-32")
    parser.add_argument("--clip-model", type=Path, help="an existing CLIP folder instead of a random one")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CLIP's CPU threads (default: the scorer's, half the cores)")
    parser.add_argument("--flow-workers", type=int, help="optical-flow threads (default: the scorer's, half the cores)")
    parser.add_argument("--cpu-dtype", choices=("auto", "fp32", "bf16"), default="auto")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step = min(8.0, 256 / max(1, args.frames - 1))  # a pan that stays inside the synthetic canvas
        frames = synthetic.window_clip([round(step * t) for t in range(args.frames)], side=args.size, scale=2)
        video = synthetic.write_mp4(frames, work / "video.mp4")
        image = work / "input.png"
        Image.fromarray(frames[0]).save(image)
        started = time.perf_counter()
        folder = args.clip_model or save_random_clip(args.model, work / "clip")
        cpu_dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.cpu_dtype]
        clip = ClipScorer.from_dir(
            folder, gpu_allows=lambda: args.device == "cuda", cpu_dtype=cpu_dtype, cpu_threads=args.threads
        )
        setup_s = time.perf_counter() - started
        scorer = QualityScorer(clip=clip, write=lambda points: None, host_name="bench", flow_workers=args.flow_workers)

        decoded = read_clip(video)
        sampled: list[np.ndarray] = [*decoded.sampled_frames, np.asarray(Image.open(image).convert("RGB"))]
        result: dict[str, Any] = {
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "model": str(args.clip_model) if args.clip_model else args.model,
            "clip_parameters_m": round(clip.parameter_count / 1e6, 1),
            "frames": args.frames,
            "size": args.size,
            "repeats": args.repeats,
            "cpu_threads": clip.cpu_threads,
            "flow_workers": scorer.flow_workers,
            "cpu_count": os.cpu_count(),
            "cpu_dtype": str(clip.cpu_dtype).removeprefix("torch."),
            "setup_s": round(setup_s, 2),
            "decode_s": _median_s(lambda: read_clip(video), args.repeats),
            "flow_s": _median_s(lambda: motion.analyse(decoded.flow_frames, workers=scorer.flow_workers), args.repeats),
            "clip_s": _median_s(lambda: clip.embed(sampled, PROMPT), args.repeats),
            "total_s": _median_s(lambda: scorer.score_job("bench", video, image, PROMPT), args.repeats),
            "clip_device": clip.last_device,
        }
        scored = scorer.score_job("bench", video, image, PROMPT)
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    result["target_s"] = TARGETS_S[args.device]
    result["meets_target"] = result["total_s"] < TARGETS_S[args.device]
    result["check"] = {"smoothness": round(scored.smoothness or 0.0, 4), "clip_score": scored.clip_score}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
