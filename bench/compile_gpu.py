"""The compiled UNet against eager on the GPU: step time, TFLOP/s and share of peak per size; cold and warm start.

    python -m bench.compile_gpu --out bench/results/h200_compile.json [--quick] [--budget-s 560]

Made for one device call of at most about 9 minutes, compiles included. This process spends a time budget on
child processes (bench/compile_measure.py, one per phase) in order of importance, each with a deadline (a child
past it is killed, and what it recorded stays), and rewrites the JSON every few seconds, so a run cut short still
leaves every figure it took:

  cold      an empty compile cache; the generator's own Worker starts (model, compile warm-up at 512x16, warm-up
            job): the cold start. Then per size, 512p and 1024p first: the first pipeline step at that size (did
            it compile? 1024x32 compiles the second graph), UNet calls eager and compiled interleaved
            on the pipeline's own inputs (median and spread), FLOPs of one call (torch.utils.flop_counter), peak
            memory, the two outputs compared; then a seeded 3-step clip eager (twice) and compiled, frames compared.
  warm      a second process on the cache the cold one left, with the generator's default warm-up (512x16 and
            1024x32): the warm start. Then one step at every size class (4 resolutions x 8/16/24/32 frames): none
            may compile. Then eager variants: each attention kernel alone (flash, efficient, cuDNN), channels-last
            weights, VAE decode chunk sizes.
  optional  each in its own process while the budget lasts, else listed with the command that runs it alone:
            megacache (an empty cache folder holding only the Mega-Cache file: a new host), vae (the VAE decoder
            compiled), static (static shapes at 512x16: what dynamic shapes cost), reduce-overhead (CUDA graphs),
            max-autotune-no-cudagraphs (usually longer than one call: run it alone).

The cache lives in var/compile-bench-cache (emptied by the cold phase): on a machine still warm, a second call can
run `--only warm` (or megacache, vae) on it. A "step" here is one UNet call of a denoising step: with guidance the
pipeline batches both passes into one call (batch 2), so that call is the step's work (the scheduler's update is a
few element-wise kernels).
`--model tiny --device cpu --backend eager --quick` runs the same harness on a CPU (figures meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The sizes the issue's targets name first (512p, 1024p). 1024x32 compiles the second graph (diffusers' upsampler
# branches at batch x frames >= 64): its first call records what that compile costs, and the warm phase then finds
# both graphs in the cache.
SIZES = [(512, 16), (1024, 32), (1024, 16), (256, 16), (768, 16), (512, 32), (256, 32), (768, 32)]
# A 32-frame size too: the warm phase's start then finds both graphs in the cache.
QUICK_SIZES = [(512, 16), (1024, 32)]
COVERAGE = [(r, f) for r in (256, 512, 768, 1024) for f in (8, 16, 24, 32)]
QUICK_COVERAGE = [(256, 8), (512, 16), (768, 24), (1024, 32)]
# Dense fp16 tensor-core peaks from NVIDIA's datasheets (the sparsity figures halved), by device name; the most
# specific name first. --peak-tflops overrides.
PEAK_FP16_TFLOPS = [
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),
    ("A100", 312.0),
]
# Each phase: the settings its Worker starts with, whether it starts from an empty cache, and the least time
# worth starting it with (a cold full-UNet compile took 147 s on the H200 for one size).
PHASES: dict[str, dict[str, Any]] = {
    # The cold start compiles only the first warm-up size (the 16-frame graph) before ready, so that a slow compile
    # cannot leave the run without step times; the warm phase starts with the whole warm-up, from the cache.
    "cold": {"fresh_cache": True, "min_s": 240, "first_warmup_only": True},
    "warm": {"fresh_cache": False, "min_s": 60},
    "megacache": {"fresh_cache": False, "min_s": 60},
    "vae": {"fresh_cache": False, "min_s": 90, "settings": {"compile_vae": True}},
    "static": {
        "fresh_cache": True,
        "min_s": 200,
        "settings": {"dynamic": False},
        "warmup": "512x16",
        "sizes": [(512, 16)],
    },
    "reduce-overhead": {
        "fresh_cache": True,
        "min_s": 200,
        "settings": {"mode": "reduce-overhead"},
        "warmup": "512x16",
        "sizes": [(512, 16)],
    },
    "max-autotune-no-cudagraphs": {
        "fresh_cache": True,
        "min_s": 480,
        "settings": {"mode": "max-autotune-no-cudagraphs"},
        "warmup": "512x16",
        "sizes": [(512, 16)],
    },
}
OPTIONAL = ["megacache", "vae", "static", "reduce-overhead", "max-autotune-no-cudagraphs"]


def main(argv: list[str] | None = None) -> int:
    """Run the phases within the budget and write the JSON; a child process runs one phase."""
    args = parse_args(argv)
    if args.child:
        from bench.compile_measure import child_main

        return child_main(args)
    started = time.monotonic()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    phases = args.only.split(",") if args.only else ["cold", "warm", *([] if args.quick else OPTIONAL)]
    # The cold phase empties and fills it, the others read it. Under var/ (ignored by git), so a later call on a
    # machine still warm can run `--only warm` (or megacache, vae) on what the cold phase left.
    cache_dir = Path(args.cache_dir)
    if "cold" in phases and cache_dir.exists():
        shutil.rmtree(cache_dir)
    result: dict[str, Any] = {
        "benchmark": "compile_gpu",
        "command": " ".join(["python -m bench.compile_gpu", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "settings": {
            "model": args.model,
            "device": args.device,
            "backend": args.backend,
            "mode": args.mode,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "sizes": [f"{r}x{r}x{f}" for r, f in args.sizes],
            "coverage": [f"{r}x{r}x{f}" for r, f in args.coverage],
            "guidance_scale": 9.0,
            "cache_dir": str(cache_dir),
            "cpu_count": os.cpu_count(),
        },
        "phases": {},
        "complete": False,
    }
    write(out, result)
    records_dir = Path(tempfile.gettempdir()) / f"i2v-compile-bench-{os.getpid()}"
    for phase in phases:
        remaining = args.budget_s - (time.monotonic() - started)
        spec = PHASES[phase]
        if remaining < spec["min_s"]:
            # A phase that starts from the cold phase's cache needs the cold phase before it.
            only = phase if spec["fresh_cache"] else f"cold,{phase}"
            result["phases"][phase] = {
                "status": "skipped",
                "reason": f"{remaining:.0f} s of the budget left, {spec['min_s']} s needed",
                "run_alone": f"python -m bench.compile_gpu --only {only} --out {alone_path(out, phase)}",
            }
            write(out, result)
            continue
        deadline_s = remaining - 5
        if phase == "cold" and "warm" in phases:
            deadline_s -= PHASES["warm"]["min_s"] + 60  # the warm start is the second figure that matters
        records_dir.mkdir(exist_ok=True)
        run_child(args, phase, cache_dir, records_dir, deadline_s, result, out)
    result["summary"] = summarise(result, args.peak_tflops)
    result["complete"] = all(p.get("status") == "complete" for p in result["phases"].values())
    result["took_s"] = round(time.monotonic() - started, 1)
    write(out, result)
    shutil.rmtree(records_dir, ignore_errors=True)  # every record is in the JSON now
    print(json.dumps(result["summary"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the flags (the child's are internal)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "h200_compile.json")
    parser.add_argument("--quick", action="store_true", help="2 sizes, 2 repeats, 4 coverage sizes, no options")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=560.0,
        help="the whole run, compiles included (the device allows 600 s a call)",
    )
    parser.add_argument("--only", help="comma-separated phases: " + ", ".join(PHASES))
    parser.add_argument("--model", default="full", help="full (default) or tiny (a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="inductor", help="inductor, or eager for a CPU smoke run")
    parser.add_argument("--mode", default="default", help="the compile mode of the cold and warm phases")
    parser.add_argument("--warmup", default="512x16,1024x32", help="the generator's warm-up sizes")
    parser.add_argument("--repeats", type=int, help="timed calls per size and variant (default 5, quick 2)")
    parser.add_argument(
        "--cache-dir",
        default=str(ROOT / "var" / "compile-bench-cache"),
        help="compile cache the cold phase fills (emptied first) and the others read",
    )
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak (default: by device name)")
    parser.add_argument("--sizes", type=parse_sizes, help="RxF,... timed in the cold phase (default: 8 sizes)")
    parser.add_argument("--coverage", type=parse_sizes, help="RxF,... checked in the warm phase (default: 16)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else SIZES
    if args.coverage is None:
        args.coverage = QUICK_COVERAGE if args.quick else COVERAGE
    unknown = set(args.only.split(",")) - set(PHASES) if args.only else set()
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}: choose among {', '.join(PHASES)}")
    return args


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse "512x16,1024x32" into (resolution, frames) pairs."""
    try:
        return [(int(r), int(f)) for r, f in (item.split("x") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not RxF,RxF (e.g. 512x16,1024x32)") from None


def alone_path(out: Path, phase: str) -> Path:
    """Return where a phase run alone writes its JSON, beside the main one."""
    return out.with_name(f"{out.stem}_{phase.replace('-', '_')}.json")


def run_child(
    args: argparse.Namespace,
    phase: str,
    cache_dir: Path,
    records_dir: Path,
    deadline_s: float,
    result: dict[str, Any],
    out: Path,
) -> None:
    """Run one phase in a child process until it ends or its deadline, merging its records as they come."""
    records = records_dir / f"{phase}.jsonl"
    phase_cache = cache_dir
    if phase == "megacache":  # a new host: only the Mega-Cache file, copied into an empty folder
        phase_cache = records_dir / "megacache-cache"
        phase_cache.mkdir(exist_ok=True)
        if (cache_dir / "mega-cache.bin").is_file():
            shutil.copy(cache_dir / "mega-cache.bin", phase_cache / "mega-cache.bin")
    elif PHASES[phase]["fresh_cache"] and phase != "cold":
        phase_cache = records_dir / f"{phase}-cache"
    command = [
        sys.executable,
        "-m",
        "bench.compile_gpu",
        "--child",
        phase,
        "--records",
        str(records),
        "--spawned-at",
        str(time.time()),
        "--cache-dir",
        str(phase_cache),
        "--model",
        args.model,
        "--device",
        args.device,
        "--backend",
        args.backend,
        "--mode",
        args.mode,
        "--warmup",
        args.warmup.split(",")[0]
        if PHASES[phase].get("first_warmup_only")
        else PHASES[phase].get("warmup", args.warmup),
        "--repeats",
        str(args.repeats),
        "--sizes",
        ",".join(f"{r}x{f}" for r, f in args.sizes),
        "--coverage",
        ",".join(f"{r}x{f}" for r, f in args.coverage),
        *(["--quick"] if args.quick else []),
    ]
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTHONPATH": str(ROOT)}
    entry: dict[str, Any] = {"status": "running", "deadline_s": round(deadline_s, 1), "records": []}
    result["phases"][phase] = entry
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    while process.poll() is None:
        if time.monotonic() - started > deadline_s:
            stop(process)
            entry["status"] = "timed out"
            break
        time.sleep(2)
        entry["records"] = read_records(records)
        write(out, result)
    entry["records"] = read_records(records)
    entry["wall_s"] = round(time.monotonic() - started, 1)
    if entry["status"] == "running":
        done = any(r.get("kind") == "done" for r in entry["records"])
        entry["status"] = "complete" if process.returncode == 0 and done else f"failed (exit {process.returncode})"
    write(out, result)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a child past its deadline: SIGTERM to its process group, SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_records(path: Path) -> list[dict[str, Any]]:
    """Return the complete JSON lines a child has written so far."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when we read
            break
    return records


def write(out: Path, result: dict[str, Any]) -> None:
    """Replace the JSON file whole (never a half-written file)."""
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)


def peak_for(name: str | None, override: float | None) -> float | None:
    """Return the card's dense fp16 peak in TFLOP/s, from the override or the device name."""
    if override:
        return override
    for key, peak in PEAK_FP16_TFLOPS:
        if name and key in name:
            return peak
    return None


def summarise(result: dict[str, Any], peak_override: float | None) -> dict[str, Any]:
    """Build the table the README takes: per size eager and compiled step, speed-up, TFLOP/s, share of peak."""
    phases = result["phases"]
    cold = phases.get("cold", {}).get("records", [])
    warm = phases.get("warm", {}).get("records", [])
    start = next((r for r in cold if r.get("kind") == "start"), {})
    peak = peak_for(start.get("device", {}).get("name"), peak_override)
    rows = []
    for record in (r for r in cold if r.get("kind") == "size"):
        flop = record.get("flop_per_call")
        row = {"size": record["size"], "flop_per_step": flop, "compiled_during_first_call": record.get("graphs_built")}
        for variant in ("eager", "compiled"):
            median = record.get(variant, {}).get("median_s")
            row[f"{variant}_step_s"] = median
            tflops = flop / median / 1e12 if flop and median else None
            row[f"{variant}_tflops"] = round(tflops, 1) if tflops else None
            row[f"{variant}_share_of_peak"] = round(tflops / peak, 3) if tflops and peak else None
        eager, compiled = row["eager_step_s"], row["compiled_step_s"]
        row["speedup"] = round(eager / compiled, 3) if eager and compiled else None
        row["outputs_agree"] = record.get("agreement", {}).get("agree")
        rows.append(row)
    warm_start = next((r for r in warm if r.get("kind") == "start"), {})
    coverage = [r for r in warm if r.get("kind") == "coverage"]
    variants: dict[str, Any] = {}
    for name in OPTIONAL:
        records = phases.get(name, {}).get("records", [])
        if records:
            variants[name] = {
                "ready_s": next((r.get("ready_s") for r in records if r.get("kind") == "start"), None),
                "sizes": {
                    r["size"]: {"eager_s": r["eager"]["median_s"], "compiled_s": r["compiled"]["median_s"]}
                    for r in records
                    if r.get("kind") == "size"
                },
                "decode": {r["size"]: _medians(r["seconds_by_chunk"]) for r in records if r.get("kind") == "decode"},
            }
    return {
        "device": start.get("device", {}).get("name"),
        "peak_fp16_tflops": peak,
        "cold_start_ready_s": start.get("ready_s"),
        "warm_start_ready_s": warm_start.get("ready_s"),
        # Kernels the warm start could not find in the cache (the cold phase ended before compiling them): then
        # the warm start includes cold compiles and is not the figure it names.
        "warm_start_cache_misses": warm_start.get("cache_counters", {}).get("inductor", {}).get("fxgraph_cache_miss"),
        "sizes": rows,
        "coverage_sizes_checked": len(coverage),
        "coverage_sizes_that_compiled": [r["size"] for r in coverage if r.get("graphs_built")],
        "frames_agree": next((r.get("agree") for r in cold if r.get("kind") == "pipeline_agreement"), None),
        "eager_attention_s": {r["size"]: _medians(r["eager"]) for r in warm if r.get("kind") == "attention"},
        "eager_channels_last_s": {
            r["size"]: {
                "contiguous": r["eager_contiguous"]["median_s"],
                "channels_last": r["eager_channels_last"]["median_s"],
            }
            for r in warm
            if r.get("kind") == "channels_last"
        },
        "decode_s_by_chunk": {r["size"]: _medians(r["seconds_by_chunk"]) for r in warm if r.get("kind") == "decode"},
        "variants": variants,
        "phases": {name: phase.get("status") for name, phase in phases.items()},
    }


def _medians(timings: dict[str, Any]) -> dict[str, Any]:
    """Return each variant's median seconds, or its error."""
    return {name: t.get("median_s", t.get("error")) for name, t in timings.items()}


if __name__ == "__main__":
    sys.exit(main())
