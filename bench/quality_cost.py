"""Quality scoring of one 16-frame 512x512 clip on the CPU, through bench/bench_quality.py.

A random-weight CLIP of ViT-B/32's size is saved and loaded through the scorer's production path; decode, flow,
CLIP and the whole `score_job` are each timed (median of the repeats). The H100 figures are read from
bench/results/h100_quality_*.json by the table.
"""

from __future__ import annotations

import json

from bench.harness import Context, Result, at_most, info, run_script

TARGET_CPU_S = 1.5  # the quality issue's: flow + a ViT-B/32-sized CLIP on the CPU


def run(ctx: Context) -> Result:
    """Score one clip on the CPU and report the median time per stage."""
    folder = ctx.scratch("quality")
    args = ["bench/bench_quality.py", "--device", "cpu"]
    args += ["--model", "tiny", "--frames", "4", "--size", "128", "--repeats", "1"] if ctx.quick else ["--repeats", "5"]
    completed = run_script(args, timeout_s=900, log_path=folder / "bench_quality.log")
    data = json.loads(completed.stdout)
    how = (
        f"median of {data['repeats']}: decode {data['decode_s']} s, flow {data['flow_s']} s, CLIP {data['clip_s']} s "
        f"({data['cpu_dtype']}, {data['cpu_threads']} threads; bench/bench_quality.py)"
    )
    name = (
        f"Quality scoring, {data['frames']}-frame {data['size']}x{data['size']} clip, CLIP {data['model']} on the CPU"
    )
    figure = (
        info(name, data["total_s"], "s", how) if ctx.quick else at_most(name, data["total_s"], TARGET_CPU_S, "s", how)
    )
    return Result([figure], data)
