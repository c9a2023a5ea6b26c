"""The compiled UNet against eager on the GPU, in priority order within one budget; a cut-short run keeps its figures.

    python -m bench.compile_gpu --out $OUT/compile.json --budget-s 400

Made for one device call (the device stops a call at 600 s; the full random-weight model takes 30-60 s to build).
Two child processes (bench/compile_measure.py), each with a deadline (killed past it, what it recorded stays); the
JSON is rewritten as each record arrives, summary included:

  cold  (a) eager UNet step at 512x512x16 with guidance (batch 2): warm-up calls, then timed calls, median and
        spread; (f) its FLOPs (torch.utils.flop_counter), TFLOP/s and share of the card's dense fp16 peak;
        (b) the generator's compile with static shapes at 512x16: compile time, compiled step, speed-up;
        (c) seeded latents after a few steps, eager twice and compiled, compared; the Mega-Cache file written.
  warm  (d) a new process on the cold one's on-disk caches (inductor FX graph cache, AOTAutograd cache, Triton,
        Mega-Cache): imports, model load, the first compiled call, cache hits and misses; SDPA kernels (flash,
        efficient, cuDNN) on eager at 512x16; (e) 1024x16 eager (and FLOPs), then compiled, while budget lasts.

`--scope regional` compiles the UNet's repeated blocks one by one instead of the whole UNet (the generator's
GENERATOR_COMPILE_SCOPE); `--skip` leaves tasks out by name (the figures already measured), so that the regional
compile's cold cost, its step against eager and its warm start fit one device call:

    python -m bench.compile_gpu --scope regional --skip sdpa --out $OUT/compile_regional.json --budget-s 520

The caches live in a fresh temporary folder (removed at the end unless --cache-dir names one). A CPU smoke run of
the same code paths: `--model tiny --device cpu --backend eager --size 256x8 --large-size 256x16` (figures
meaningless).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Dense fp16/bf16 tensor-core peaks from NVIDIA's datasheets (the sparsity figures halved), by device name, the
# most specific name first. --peak-tflops overrides.
PEAK_FP16_TFLOPS = [
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),
    ("A100", 312.0),
]
# The warm process is worth starting only if it can load the model and load the compiled graph from the caches.
WARM_MIN_S = 75.0
# Left for the parent to write the last JSON after a child is stopped.
MARGIN_S = 4.0
# Each phase's tasks in priority order (bench/compile_measure.py runs them); --skip names some to leave out.
TASKS = {
    "cold": ("eager", "compiled", "agreement", "mega_cache"),
    "warm": ("warm_start", "sdpa", "large_eager", "large_compiled"),
}
# Without these there is nothing to compare or restart on.
REQUIRED_TASKS = ("eager", "compiled", "warm_start")
# A child's stderr kept in the JSON when captured: a fatal error's stacks of every thread fit.
STDERR_TAIL_CHARS = 12000


def main(argv: list[str] | None = None) -> int:
    """Run the cold then the warm process within the budget, writing the JSON as records arrive."""
    args = parse_args(argv)
    if args.child:
        from bench.compile_measure import child_main

        return child_main(args)
    started = time.monotonic()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    own_cache = args.cache_dir is None
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="i2v-compile-cache-"))
    if cache_dir.exists():
        shutil.rmtree(cache_dir)  # the cold start starts from nothing
    cache_dir.mkdir(parents=True)
    records_dir = Path(tempfile.mkdtemp(prefix="i2v-compile-records-"))
    result: dict[str, Any] = {
        "benchmark": "compile_gpu",
        "command": " ".join(["python -m bench.compile_gpu", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": args.budget_s,
        "settings": {
            "model": args.model,
            "device": args.device,
            "backend": args.backend,
            "mode": args.mode,
            "scope": args.scope,
            "skipped_tasks": list(args.skip),
            "dynamic": False,
            "size": size_name(args.size),
            "large_size": size_name(args.large_size),
            "guidance_scale": 9.0,
            "warmup_calls": args.warmup_calls,
            "repeats": args.repeats,
            "agreement_steps": args.agreement_steps,
            "cache_dir": str(cache_dir),
            "cpu_count": os.cpu_count(),
        },
        "phases": {},
        "summary": {},
        "complete": False,
    }
    write(out, result, args.peak_tflops)
    try:
        for phase in ("cold", "warm"):
            remaining = args.budget_s - (time.monotonic() - started) - MARGIN_S
            if phase == "warm" and not compiled_ok(result):
                result["phases"][phase] = {"status": "skipped", "reason": "the cold process did not compile"}
            elif phase == "warm" and remaining < args.warm_min_s:
                result["phases"][phase] = {
                    "status": "skipped",
                    "reason": f"{remaining:.0f} s of the budget left, {args.warm_min_s:.0f} s needed",
                }
            else:
                run_child(args, phase, cache_dir, records_dir, remaining, result, out)
            write(out, result, args.peak_tflops)
    finally:
        shutil.rmtree(records_dir, ignore_errors=True)  # every record is in the JSON by now
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    result["complete"] = all(p.get("status") == "complete" for p in result["phases"].values())
    result["took_s"] = round(time.monotonic() - started, 1)
    write(out, result, args.peak_tflops)
    print(json.dumps(result["summary"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the flags (the child's are internal)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "h200_compile.json")
    parser.add_argument("--budget-s", type=float, default=400.0, help="the whole run, model loads and compiles")
    parser.add_argument("--model", default="full", help="full (default) or tiny (a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="inductor", help="inductor, or eager (dynamo only) for a CPU smoke run")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument(
        "--scope", choices=("whole", "regional"), default="whole", help="compile the whole UNet or its repeated blocks"
    )
    parser.add_argument(
        "--skip",
        type=parse_skip,
        default=(),
        help=f"tasks to leave out, comma-separated: {', '.join(t for ts in TASKS.values() for t in ts)}",
    )
    parser.add_argument("--size", type=parse_size, default=(512, 16), help="main size, RESOLUTIONxFRAMES")
    parser.add_argument("--large-size", type=parse_size, default=(1024, 16), help="the size measured last")
    parser.add_argument("--warmup-calls", type=int, default=2, help="untimed UNet calls before the timed ones")
    parser.add_argument("--repeats", type=int, default=8, help="timed UNet calls per variant")
    parser.add_argument("--variant-repeats", type=int, default=3, help="timed calls per SDPA kernel")
    parser.add_argument("--agreement-steps", type=int, default=4, help="denoising steps before latents compare")
    parser.add_argument("--warm-min-s", type=float, default=WARM_MIN_S, help="least budget worth a warm restart")
    parser.add_argument("--cache-dir", help="compile caches (emptied first; default a temporary folder)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak (default: by device name)")
    parser.add_argument("--child", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_skip(text: str) -> tuple[str, ...]:
    """Parse "sdpa,large_eager" into task names, refusing unknown ones and the ones every figure needs."""
    names = tuple(filter(None, (name.strip() for name in text.split(","))))
    known = {task for tasks in TASKS.values() for task in tasks}
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(f"{name!r} is no task ({', '.join(sorted(known))})")
        if name in REQUIRED_TASKS:
            raise argparse.ArgumentTypeError(f"{name!r} cannot be skipped: the later figures need it")
    return names


def parse_size(text: str) -> tuple[int, int]:
    """Parse "512x16" into (resolution, frames)."""
    try:
        resolution, frames = text.split("x")
        return int(resolution), int(frames)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not RESOLUTIONxFRAMES (e.g. 512x16)") from None


def size_name(size: tuple[int, int]) -> str:
    """Name a (resolution, frames) size as the API does: 512x512x16."""
    return f"{size[0]}x{size[0]}x{size[1]}"


def child_command(args: argparse.Namespace, phase: str, cache_dir: Path, records: Path) -> list[str]:
    """Return the command line that runs one phase in its own process."""
    return [
        sys.executable, "-m", "bench.compile_gpu", "--child", phase,
        "--records", str(records), "--spawned-at", str(time.time()), "--cache-dir", str(cache_dir),
        "--model", args.model, "--device", args.device, "--backend", args.backend, "--mode", args.mode,
        "--scope", args.scope, "--skip", ",".join(args.skip),
        "--size", f"{args.size[0]}x{args.size[1]}", "--large-size", f"{args.large_size[0]}x{args.large_size[1]}",
        "--warmup-calls", str(args.warmup_calls), "--repeats", str(args.repeats),
        "--variant-repeats", str(args.variant_repeats), "--agreement-steps", str(args.agreement_steps),
    ]  # fmt: skip


def child_env(cache_dir: Path) -> dict[str, str]:
    """Return the child's environment: this repository before whatever PYTHONPATH holds, and the caches on."""
    # Prepended, never replaced: the device installs the carried wheels into a folder named by PYTHONPATH.
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def run_child(
    args: argparse.Namespace,
    phase: str,
    cache_dir: Path,
    records_dir: Path,
    deadline_s: float,
    result: dict[str, Any],
    out: Path,
) -> None:
    """Run one phase in its own process until it ends or its deadline (see `run_phase`)."""
    records = records_dir / f"{phase}.jsonl"
    command = child_command(args, phase, cache_dir, records)
    run_phase(
        result, phase, command, child_env(cache_dir), records, deadline_s, lambda: write(out, result, args.peak_tflops)
    )


def run_phase(
    result: dict[str, Any],
    phase: str,
    command: list[str],
    env: dict[str, str],
    records: Path,
    deadline_s: float,
    save: Callable[[], None],
    stderr_path: Path | None = None,
) -> None:
    """Run a phase's child until it ends or its deadline, merging the records it appends into the result and
    saving the result whenever a record arrives (a run cut short keeps what it measured).

    `stderr_path`: where the child's stderr goes (else it is this process's); its tail is kept in the phase's entry.
    """
    entry: dict[str, Any] = {"status": "running", "deadline_s": round(deadline_s, 1), "records": []}
    result["phases"][phase] = entry
    started = time.monotonic()
    with stderr_path.open("wb") if stderr_path else contextlib.nullcontext() as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stderr=stderr)
    seen = 0
    while process.poll() is None:
        if time.monotonic() - started > deadline_s:
            stop(process)
            entry["status"] = "timed out (the budget ran out)"
            break
        time.sleep(0.5)  # the child appends a record every few seconds at most
        entry["records"] = read_records(records)
        if len(entry["records"]) != seen:
            seen = len(entry["records"])
            save()
    entry["records"] = read_records(records)
    entry["wall_s"] = round(time.monotonic() - started, 1)
    entry["exit_code"] = process.returncode  # negative: the signal that ended it (-11: a segfault)
    if stderr_path:
        entry["stderr_tail"] = stderr_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:]
    if entry["status"] == "running":
        done = any(r.get("kind") == "done" for r in entry["records"])
        errors = [r for r in entry["records"] if r.get("kind") == "error"]
        ok = process.returncode == 0 and done and not errors
        entry["status"] = "complete" if ok else f"failed (exit {process.returncode}, {len(errors)} error(s))"


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a child past its deadline: SIGTERM to its process group (inductor's compile workers too), then SIGKILL."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
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


def compiled_ok(result: dict[str, Any]) -> bool:
    """Say whether the cold process compiled the main size (the warm restart needs its caches)."""
    return any(r.get("kind") == "compiled_compile" for r in result["phases"].get("cold", {}).get("records", []))


def write(out: Path, result: dict[str, Any], peak_override: float | None) -> None:
    """Recompute the summary and replace the JSON file whole (never a half-written file)."""
    result["summary"] = summarise(result, peak_override)
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


WARM_START_PARTS = (
    ("load", "imports_s"),
    ("load", "cache_load_s"),
    ("load", "pipeline_imports_s"),
    ("load", "model_load_s"),
    ("load", "device_info_s"),
    ("warm_start_compiling", "dynamo_import_s"),
    ("warm_start_compiling", "wrap_s"),
    ("warm_start_compile", "compile_s"),
)


def unexplained_s(warm: dict[str, dict[str, Any]]) -> float | None:
    """Return the warm start's seconds that no recorded part names (None while a part is missing)."""
    ready = warm.get("warm_start_compile", {}).get("since_spawn_s")
    parts = [warm.get(kind, {}).get(field) for kind, field in WARM_START_PARTS]
    if ready is None or None in parts:
        return None
    return round(ready - sum(parts), 2)


def summarise(result: dict[str, Any], peak_override: float | None) -> dict[str, Any]:
    """Build the README's table from the records so far: per size eager and compiled step, speed-up, TFLOP/s."""
    phases = result["phases"]
    cold = {r["kind"]: r for r in phases.get("cold", {}).get("records", [])}
    warm = {r["kind"]: r for r in phases.get("warm", {}).get("records", [])}
    device = cold.get("load", {}).get("device", {}).get("name")
    peak = peak_for(device, peak_override)
    sizes = [
        size_row(cold.get("eager"), cold.get("eager_flop"), cold.get("compiled_compile"), cold.get("compiled"), peak),
        size_row(
            warm.get("large_eager"),
            warm.get("large_eager_flop"),
            warm.get("large_compiled_compile"),
            warm.get("large_compiled"),
            peak,
        ),
    ]
    agreement = cold.get("agreement", {})
    warm_start = warm.get("warm_start_compile", {})
    caches = warm_start.get("cache_counters", {})
    return {
        "device": device,
        "scope": result.get("settings", {}).get("scope", "whole"),
        "peak_fp16_tflops": peak,
        "model_load_s": cold.get("load", {}).get("model_load_s"),
        "sizes": [row for row in sizes if row],
        "latents_agree": agreement.get("compiled_vs_eager", {}).get("agree"),
        "latents_relative_max_diff": agreement.get("compiled_vs_eager", {}).get("relative_max_diff"),
        "eager_rerun_relative_max_diff": agreement.get("eager_vs_eager", {}).get("relative_max_diff"),
        "graphs_built_during_agreement": agreement.get("graphs_built"),
        "warm_start": {
            "ready_s": warm_start.get("since_spawn_s"),
            "imports_s": warm.get("load", {}).get("imports_s"),
            "model_load_s": warm.get("load", {}).get("model_load_s"),
            "compile_from_cache_s": warm_start.get("compile_s"),
            "graphs_built": warm_start.get("graphs_built"),
            "fx_graph_cache_hits": caches.get("inductor", {}).get("fxgraph_cache_hit"),
            "fx_graph_cache_misses": caches.get("inductor", {}).get("fxgraph_cache_miss"),
            "autograd_cache_hits": caches.get("aot_autograd", {}).get("autograd_cache_hit"),
            "mega_cache_artifacts_loaded": warm.get("load", {}).get("mega_cache_artifacts_loaded"),
            "cache_load_s": warm.get("load", {}).get("cache_load_s"),
            "pipeline_imports_s": warm.get("load", {}).get("pipeline_imports_s"),
            "device_info_s": warm.get("load", {}).get("device_info_s"),
            "dynamo_import_s": warm.get("warm_start_compiling", {}).get("dynamo_import_s"),
            "wrap_s": warm.get("warm_start_compiling", {}).get("wrap_s"),
            "unexplained_s": unexplained_s(warm),
        }
        if warm_start
        else None,
        "mega_cache_bytes": cold.get("mega_cache", {}).get("bytes"),
        "sdpa_eager_step_s": {
            name: timing.get("median_s", timing.get("error"))
            for name, timing in warm.get("sdpa", {}).get("eager", {}).items()
        },
        "errors": [
            f"{phase}: {r['task']}: {r['message'][:200]}"
            for phase, entry in phases.items()
            for r in entry.get("records", [])
            if r.get("kind") == "error"
        ],
        "phases": {name: entry.get("status") for name, entry in phases.items()},
    }


def size_row(
    eager: dict[str, Any] | None,
    flop: dict[str, Any] | None,
    compile_record: dict[str, Any] | None,
    compiled: dict[str, Any] | None,
    peak: float | None,
) -> dict[str, Any] | None:
    """Return one size's row: step seconds, TFLOP/s and share of peak eager and compiled, compile time, speed-up."""
    if eager is None:
        return None
    flop_per_step = (flop or {}).get("flop_per_step")
    row: dict[str, Any] = {"size": eager["size"], "flop_per_step": flop_per_step}
    for variant, record in (("eager", eager), ("compiled", compiled)):
        step_s = (record or {}).get("step", {}).get("median_s")
        tflops = flop_per_step / step_s / 1e12 if flop_per_step and step_s else None
        row[f"{variant}_step_s"] = step_s
        row[f"{variant}_step_spread_s"] = [(record or {}).get("step", {}).get(k) for k in ("min_s", "max_s")]
        row[f"{variant}_tflops"] = round(tflops, 1) if tflops else None
        row[f"{variant}_share_of_peak"] = round(tflops / peak, 3) if tflops and peak else None
    row["compile_s"] = (compile_record or {}).get("compile_s")
    row["graphs_built"] = (compile_record or {}).get("graphs_built")
    eager_s, compiled_s = row["eager_step_s"], row["compiled_step_s"]
    row["speedup"] = round(eager_s / compiled_s, 3) if eager_s and compiled_s else None
    row["unet_outputs_agree"] = ((compiled or {}).get("unet_agreement") or {}).get("agree")
    return row


if __name__ == "__main__":
    sys.exit(main())
