"""The UNet packaged ahead of time (aoti backend) against torch.compile and eager, in one command within a budget.

    python -m bench.aoti_gpu --out $OUT/aoti.json --cache-dir /tmp/i2v-aoti-cache --budget-s 560

Three phases, each its own process (bench/aoti_measure.py) with a deadline, in priority order; the JSON is
rewritten as each record arrives, summary included, so a cut-short run keeps its figures:

  packages  per size (default 512x16 and 1024x16, guidance, batch 2): the eager step; the package loaded, or else
            exported and compiled (cold build seconds: export and AOTInductor apart, file size); the packaged step
            and its output against eager; seeded latents after 4 guided steps, eager twice and packaged.
  restart   a fresh process running the generator's own worker on those packages: seconds from spawn to ready
            (imports, model load, package loads, the warm-up job), and the compiles it ran (none expected).
  compiled  torch.compile at each size from the same cache folder: compile seconds and the compiled step.

The cache folder is kept (`--cache-dir`): running the same command again finds the packages (the first phase then
loads instead of building) and the inductor caches, so a second call reaches the phases the first had no time for.
`--fresh` empties it first (cold figures). CPU smoke run (figures meaningless):
`--model tiny --device cpu --sizes 64x4 --phases packages,restart --repeats 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.compile_gpu import child_env, parse_size, run_phase

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("packages", "restart", "compiled")
# A phase is worth starting only if it can load the model and do something with it.
PHASE_MIN_S = 60.0
MARGIN_S = 4.0


def main(argv: list[str] | None = None) -> int:
    """Run the phases in order within the budget, writing the JSON as records arrive."""
    args = parse_args(argv)
    if args.child:
        from bench.aoti_measure import child_main

        return child_main(args)
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir)
    if args.fresh and cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    packages_before = sorted(p.name for p in cache_dir.glob("unet-packages/*.pt2"))
    result: dict[str, Any] = {
        "benchmark": "aoti_gpu",
        "command": " ".join(["python -m bench.aoti_gpu", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": args.budget_s,
        "settings": {
            "model": args.model,
            "device": args.device,
            "sizes": [name(size) for size in args.sizes],
            "guidance_scale": 9.0,
            "warmup_calls": args.warmup_calls,
            "repeats": args.repeats,
            "agreement_steps": args.agreement_steps,
            "cache_dir": str(cache_dir),
            "packages_before": packages_before,
            "cpu_count": os.cpu_count(),
        },
        "phases": {},
        "summary": {},
        "complete": False,
    }
    write(args.out, result)
    records_dir = Path(tempfile.mkdtemp(prefix="i2v-aoti-records-"))
    try:
        for phase in args.phases:
            remaining = args.budget_s - (time.monotonic() - started) - MARGIN_S
            if remaining < args.phase_min_s:
                reason = f"{remaining:.0f} s of the budget left, {args.phase_min_s:.0f} s needed"
                result["phases"][phase] = {"status": "skipped", "reason": reason}
            else:
                run_child(args, phase, records_dir, remaining, result)
            write(args.out, result)
    finally:
        shutil.rmtree(records_dir, ignore_errors=True)  # every record is in the JSON by now
    result["complete"] = all(p.get("status") == "complete" for p in result["phases"].values())
    result["took_s"] = round(time.monotonic() - started, 1)
    write(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the flags (the child's are internal)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "h200_aoti.json")
    parser.add_argument("--budget-s", type=float, default=560.0, help="the whole run, model loads and builds")
    parser.add_argument("--model", default="full", help="full (default) or tiny (a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=parse_sizes, default=[(512, 16), (1024, 16)], help="e.g. 512x16,1024x16")
    parser.add_argument("--phases", type=parse_phases, default=list(PHASES), help=f"of {','.join(PHASES)}")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "i2v-aoti-cache"))
    parser.add_argument("--fresh", action="store_true", help="empty the cache folder first (cold builds)")
    parser.add_argument("--warmup-calls", type=int, default=2, help="untimed UNet calls before the timed ones")
    parser.add_argument("--repeats", type=int, default=8, help="timed UNet calls per variant")
    parser.add_argument("--agreement-steps", type=int, default=4, help="denoising steps before latents compare")
    parser.add_argument("--phase-min-s", type=float, default=PHASE_MIN_S, help="least budget worth a phase")
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse "512x16,1024x16" into (resolution, frames) sizes."""
    return [parse_size(item.strip()) for item in text.split(",") if item.strip()]


def parse_phases(text: str) -> list[str]:
    """Parse "packages,restart" into phases, in the order given."""
    phases = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {', '.join(unknown)}: choose from {', '.join(PHASES)}")
    return phases


def name(size: tuple[int, int]) -> str:
    """Name a (resolution, frames) size as the API does: 512x512x16."""
    return f"{size[0]}x{size[0]}x{size[1]}"


def child_command(args: argparse.Namespace, phase: str, records: Path) -> list[str]:
    """Return the command line that runs one phase in its own process."""
    return [
        sys.executable, "-m", "bench.aoti_gpu", "--child", phase,
        "--records", str(records), "--spawned-at", str(time.time()), "--cache-dir", args.cache_dir,
        "--model", args.model, "--device", args.device, "--sizes", ",".join(f"{r}x{f}" for r, f in args.sizes),
        "--warmup-calls", str(args.warmup_calls), "--repeats", str(args.repeats),
        "--agreement-steps", str(args.agreement_steps),
    ]  # fmt: skip


def run_child(
    args: argparse.Namespace, phase: str, records_dir: Path, deadline_s: float, result: dict[str, Any]
) -> None:
    """Run one phase in its own process until it ends or its deadline (see bench/compile_gpu.py's `run_phase`)."""
    records = records_dir / f"{phase}.jsonl"
    command = child_command(args, phase, records)
    run_phase(
        result, phase, command, child_env(Path(args.cache_dir)), records, deadline_s, lambda: write(args.out, result)
    )


def write(out: Path, result: dict[str, Any]) -> None:
    """Recompute the summary and replace the JSON file whole (never a half-written file)."""
    result["summary"] = summarise(result)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Build the README's rows: per size eager, packaged and compiled step, build and load seconds, agreement."""
    records = {phase: {r["kind"]: r for r in entry.get("records", [])} for phase, entry in result["phases"].items()}
    packages, compiled = records.get("packages", {}), records.get("compiled", {})
    rows = []
    for size in result["settings"]["sizes"]:
        eager_s = step_s(packages.get(f"eager_{size}"))
        packaged_s = step_s(packages.get(f"packaged_{size}"))
        compiled_s = step_s(compiled.get(f"compiled_{size}"))
        package = packages.get(f"package_{size}", {})
        rows.append(
            {
                "size": size,
                "eager_step_s": eager_s,
                "packaged_step_s": packaged_s,
                "compiled_step_s": compiled_s,
                "packaged_speedup": ratio(eager_s, packaged_s),
                "compiled_speedup": ratio(eager_s, compiled_s),
                "package_built": package.get("built"),
                "package_export_s": package.get("export_s"),
                "package_aoti_compile_s": package.get("aoti_compile_s"),
                "package_bytes": package.get("package_bytes"),
                "package_load_s": package.get("load_s"),
                "torch_compile_s": compiled.get(f"compiled_{size}_compile", {}).get("compile_s"),
                "packaged_unet_agrees": (packages.get(f"packaged_{size}", {}).get("unet_agreement") or {}).get("agree"),
            }
        )
    agreement = packages.get("agreement", {})
    restart = records.get("restart", {}).get("restart")
    return {
        "device": packages.get("load", {}).get("device", {}).get("name"),
        "sizes": rows,
        "latents_agree": agreement.get("packaged_vs_eager", {}).get("agree"),
        "latents_relative_max_diff": agreement.get("packaged_vs_eager", {}).get("relative_max_diff"),
        "eager_rerun_relative_max_diff": agreement.get("eager_vs_eager", {}).get("relative_max_diff"),
        "warm_restart": {
            "ready_s": restart.get("since_spawn_s"),
            "compiles": restart.get("compiles"),
            "packaged_sizes": restart.get("packaged_sizes"),
            "stages_s": {
                s["stage"]: s["duration_s"] for s in restart.get("stages", []) if s["stage"] != "package_load"
            },
            "package_loads_s": [s["duration_s"] for s in restart.get("stages", []) if s["stage"] == "package_load"],
        }
        if restart
        else None,
        "errors": [
            f"{phase}: {r['task']}: {r['message'][:200]}"
            for phase, entry in result["phases"].items()
            for r in entry.get("records", [])
            if r.get("kind") == "error"
        ],
        "phases": {phase: entry.get("status") for phase, entry in result["phases"].items()},
    }


def step_s(record: dict[str, Any] | None) -> float | None:
    """Return a timing record's median step in seconds."""
    return ((record or {}).get("step") or {}).get("median_s")


def ratio(eager_s: float | None, other_s: float | None) -> float | None:
    """Return eager's step over another's: the speed-up."""
    return round(eager_s / other_s, 3) if eager_s and other_s else None


if __name__ == "__main__":
    sys.exit(main())
