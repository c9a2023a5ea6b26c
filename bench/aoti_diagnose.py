"""Why the UNet's package kills its process on the GPU: build it once, then load and call it in separate processes.

    python -m bench.aoti_diagnose --out $OUT/aoti_diagnose.json

Made for one device call (600 s; the budget defaults to 560 s). Each phase is its own process (run by
bench/compile_gpu.py's `run_phase`, with a deadline) with faulthandler on and its stderr captured into the JSON,
so a segfault leaves its exit code, the step it died in and every thread's Python stack:

  build            the model loaded, the UNet's inputs captured from one eager guided step at `--size` and saved;
                   its package found in `--cache-dir` under the generator's own key (a package a crashed run left
                   there, even quarantined, is the one diagnosed) or else built (~300 s on an H200 for the full UNet
                   at 512x16). Never loaded here.
  shared           load the package, read its constants' names, `load_constants(user_managed=True)` (the
                   generator's way: the package reads the eager UNet's tensors in place), one call, synchronize, and
                   the output against eager's.
  copied           the same with `load_constants(user_managed=False)`: the package holds a copy of the weights.
  generator        the generator's own path: PackagedUNet's warm-up call (its load, its crash marker, first call).
  restart          a new PackagedUNet on the same folder: it finds the marker `generator` left if it died, and
                   quarantines the package (that size runs eager), or else loads and runs it.
  shared_blocking  `shared` with CUDA_LAUNCH_BLOCKING=1: a kernel's fault shows at its own launch.

Every step of an attempt is recorded (and printed to stderr, flushed) before it runs and again once it returned: the
last step begun and not ended is where the process died. The summary gives each attempt's outcome and the verdict:
if copied constants work where shared ones crash, the fix candidate is a setting choosing copied constants.
CPU smoke run (the tiny model's build takes about 75 s): `--model tiny --device cpu --size 64x4`.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.compile_gpu import child_env, parse_size, run_phase

ROOT = Path(__file__).resolve().parents[1]
# In priority order: the two constant modes first (the question), then the generator's path and its restart.
ATTEMPTS = ("shared", "copied", "generator", "restart", "shared_blocking")
# With --constants in-so the package carries its own weights: one attempt, loading and calling it as it is.
IN_SO_ATTEMPTS = ("own_constants",)
PHASES = ("build", *ATTEMPTS, *IN_SO_ATTEMPTS)
BUILD_MIN_S = 120.0  # the model, the inputs and a package already on disk; a build needs ~300 s more
ATTEMPT_MIN_S = 30.0  # imports, the model, a load and a call
MARGIN_S = 4.0
FATAL_MARK = "Fatal Python error"
FATAL_CHARS = 8000


def main(argv: list[str] | None = None) -> int:
    """Run the build, then each attempt within the budget, writing the JSON as records arrive."""
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="i2v-aoti-diagnose-"))
    result: dict[str, Any] = {
        "benchmark": "aoti_diagnose",
        "command": " ".join(["python -m bench.aoti_diagnose", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": args.budget_s,
        "settings": {
            "model": args.model,
            "device": args.device,
            "size": f"{args.size[0]}x{args.size[0]}x{args.size[1]}",
            "guidance_scale": 9.0,
            "cache_dir": args.cache_dir,
            "constants": args.constants,
        },
        "phases": {},
        "summary": {},
        "complete": False,
    }
    write(args.out, result)
    try:
        for phase in ("build", *(IN_SO_ATTEMPTS if args.constants == "in-so" else ATTEMPTS)):
            remaining = args.budget_s - (time.monotonic() - started) - MARGIN_S
            needed = BUILD_MIN_S if phase == "build" else ATTEMPT_MIN_S
            if phase != "build" and not built(result):
                result["phases"][phase] = {"status": "skipped", "reason": "no package: the build phase failed"}
            elif remaining < needed:
                reason = f"{remaining:.0f} s of the budget left, {needed:.0f} s needed"
                result["phases"][phase] = {"status": "skipped", "reason": reason}
            else:
                env = child_env(Path(args.cache_dir))
                if phase == "shared_blocking":
                    env["CUDA_LAUNCH_BLOCKING"] = "1"
                records = work / f"{phase}.jsonl"
                command = child_command(args, phase, records, work)
                save = functools.partial(write, args.out, result)
                run_phase(result, phase, command, env, records, remaining, save, work / f"{phase}.stderr")
            write(args.out, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the records and stderr are in the JSON by now
    result["complete"] = all(p.get("status") == "complete" for p in result["phases"].values())
    result["took_s"] = round(time.monotonic() - started, 1)
    write(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the flags (the child's are internal)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "h200_aoti_diagnose.json")
    parser.add_argument("--budget-s", type=float, default=560.0, help="the whole run, the build included")
    parser.add_argument("--model", default="full", help="full (default) or tiny (a CPU smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=parse_size, default=(512, 16), help="RESOLUTIONxFRAMES, e.g. 512x16")
    # bench.aoti_gpu's folder: on a machine still warm from its run, its package is the one diagnosed.
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "i2v-aoti-cache"))
    parser.add_argument(
        "--constants",
        choices=("outside", "in-so"),
        default="outside",
        help="where the package's weights are: outside it, as the generator builds it (default), or in its library",
    )
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child_command(args: argparse.Namespace, phase: str, records: Path, work: Path) -> list[str]:
    """Return the command line that runs one phase in its own process."""
    return [
        sys.executable, "-m", "bench.aoti_diagnose", "--child", phase, "--records", str(records),
        "--work", str(work), "--spawned-at", str(time.time()), "--cache-dir", args.cache_dir,
        "--model", args.model, "--device", args.device, "--size", f"{args.size[0]}x{args.size[1]}",
        "--constants", args.constants,
    ]  # fmt: skip


def built(result: dict[str, Any]) -> bool:
    """Say whether the build phase left a package to load."""
    return any(r.get("kind") == "package" for r in result["phases"].get("build", {}).get("records", []))


def write(out: Path, result: dict[str, Any]) -> None:
    """Recompute the summary and replace the JSON file whole (never a half-written file)."""
    result["summary"] = summarise(result)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)


# --- the summary


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Say for each attempt how it ended and where, and what the outcomes together point to."""
    phases = result["phases"]
    build_records = {r["kind"]: r for r in phases.get("build", {}).get("records", [])}
    package = build_records.get("package", {})
    attempts = {name: outcome(phases[name]) for name in (*ATTEMPTS, *IN_SO_ATTEMPTS) if name in phases}
    return {
        "device": build_records.get("load", {}).get("device", {}).get("name"),
        "package": {k: package.get(k) for k in ("path", "built", "export_s", "aoti_compile_s", "package_bytes")},
        "build": outcome(phases["build"]) if "build" in phases else None,
        "attempts": attempts,
        "verdict": verdict(attempts),
        "phases": {name: entry.get("status") for name, entry in phases.items()},
    }


def outcome(entry: dict[str, Any]) -> dict[str, Any]:
    """Return how one attempt ended: ok, died (the signal, the step, the stacks), raised, timed out or skipped."""
    if entry.get("status") == "skipped":
        return {"outcome": "skipped", "reason": entry.get("reason")}
    records = entry.get("records", [])
    begun = [r["step"] for r in records if r.get("kind") == "step"]
    ended = {r["step"] for r in records if r.get("kind") == "step_done"}
    open_steps = [step for step in begun if step not in ended]
    errors = [r for r in records if r.get("kind") == "error"]
    exit_code = entry.get("exit_code")
    stderr = entry.get("stderr_tail", "")
    fatal = stderr[stderr.find(FATAL_MARK) :][:FATAL_CHARS] if FATAL_MARK in stderr else None
    found: dict[str, Any] = {"exit_code": exit_code, "steps_ended": [s for s in begun if s in ended]}
    if str(entry.get("status", "")).startswith("timed out"):
        found.update(outcome="timed out", step=open_steps[-1] if open_steps else None)
    elif exit_code is not None and exit_code < 0:
        found.update(outcome=f"died (signal {-exit_code})", step=open_steps[-1] if open_steps else None, fatal=fatal)
    elif errors:
        found.update(outcome="raised", step=errors[0].get("step"), error=errors[0].get("message"))
    elif entry.get("status") == "complete":
        found["outcome"] = "ok"
    else:
        found.update(outcome=f"failed (exit {exit_code})", step=open_steps[-1] if open_steps else None, fatal=fatal)
    for record in records:
        if record.get("kind") == "result":
            found["result"] = {k: v for k, v in record.items() if k != "kind"}
    return found


def verdict(attempts: dict[str, dict[str, Any]]) -> list[str]:
    """Say what the attempts' outcomes point to, in sentences."""
    said = []
    shared, copied = (attempts.get(name, {}).get("outcome") for name in ("shared", "copied"))
    if shared and copied and shared != "ok" and copied == "ok":
        said.append(
            "copied constants work where shared ones do not: the fix candidate is a setting that loads a package's "
            "constants as a copy (load_constants(user_managed=False); one more copy of the UNet's weights per size "
            "on the card)"
        )
    elif shared and copied and shared != "ok" and copied != "ok":
        steps = {attempts[name].get("step") for name in ("shared", "copied")}
        said.append(f"shared and copied constants both fail (in {', '.join(map(str, steps))}): not the sharing")
    elif shared == "ok" and copied == "ok":
        said.append("the package loads and runs with shared and copied constants alike in a process of its own")
    own = attempts.get("own_constants", {}).get("outcome")
    if own == "ok":
        said.append(
            "with its weights in its library the package loads and runs: the crash is in loading a package whose "
            "weights are outside it (compare a run with --constants outside on the same model and size)"
        )
    elif own and own != "skipped":
        found = attempts["own_constants"]
        said.append(f"with its weights in its library it fails too ({own} in {found.get('step')}): not the weights")
    for name in ("generator", "restart", "shared_blocking"):
        found = attempts.get(name)
        if found and found.get("outcome") not in ("ok", "skipped"):
            said.append(f"{name}: {found['outcome']} in {found.get('step')}")
    restart = attempts.get("restart", {}).get("result", {})
    if restart.get("skips"):
        said.append(f"restart: the package was not served ({', '.join(restart['skips'])}): its size ran eager")
    return said


# --- the children


def child_main(args: argparse.Namespace) -> int:
    """Run one phase in this process, recording each step before it runs and once it returned."""
    # A segfault ends the process without an exception: this leaves every thread's Python stack on stderr.
    faulthandler.enable(all_threads=True)
    from bench.aoti_measure import PackageBench
    from bench.compile_measure import Recorder

    record = Recorder(args.records)
    steps = Steps(record, args.child)
    steps.begin("imports")
    import torch

    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    bench = PackageBench(bench_args(args), record, device)
    try:
        steps.end()
        steps.begin("load_model")
        bench.load(time.time(), 0)
        steps.end()
        if args.child == "build":
            build(bench, args, steps)
        else:
            steps.begin("read_inputs")
            saved = torch.load(args.work / "inputs.pt", weights_only=False)
            inputs, package = tuple(saved["inputs"]), Path(saved["package"])
            steps.end()
            if args.child in ("generator", "restart"):
                generator_path(bench, args, steps, inputs, package)
            elif args.child == "own_constants":
                bare_package(bench, steps, inputs, package, user_managed=None)
            else:
                bare_package(bench, steps, inputs, package, user_managed=args.child != "copied")
    except Exception as error:  # noqa: BLE001  (the record says where and why; the parent reads it)
        message = f"{error.__class__.__name__}: {error}"[:2000]
        record("error", step=steps.step, message=message, trace=traceback.format_exc())
        return 1
    record("done", took_s=round(time.time() - args.spawned_at, 1))
    return 0


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """Return the settings compile_measure's `Bench` reads."""
    return argparse.Namespace(
        model=args.model, child=args.child, spawned_at=args.spawned_at, warmup_calls=0, repeats=1,
        backend="inductor", mode="default", cache_dir=args.cache_dir, agreement_steps=0,
    )  # fmt: skip


class Steps:
    """Record a step before it runs (and print it, flushed) and again once it returned, with what it found."""

    def __init__(self, record: Any, attempt: str) -> None:
        self.record, self.attempt = record, attempt
        self.step: str | None = None
        self.started = 0.0

    def begin(self, step: str) -> None:
        """Say that `step` starts now: if the process dies, this is the last thing it said."""
        self.step, self.started = step, time.perf_counter()
        self.record("step", step=step)
        print(f"[aoti_diagnose] {self.attempt}: {step}", file=sys.stderr, flush=True)

    def end(self, **found: Any) -> None:
        """Say that the step returned, with what it found."""
        self.record("step_done", step=self.step, s=round(time.perf_counter() - self.started, 3), **found)


def six_inputs(captured: dict[str, Any]) -> tuple[Any, ...]:
    """Return the UNet's call as the package takes it: six tensors in the generator's order."""
    from generator.unet_package import INPUT_NAMES

    named = {**dict(zip(INPUT_NAMES[:2], captured["args"], strict=False)), **captured["kwargs"]}
    return tuple(named[name] for name in INPUT_NAMES)


def build(bench: Any, args: argparse.Namespace, steps: Steps) -> None:
    """Capture the inputs, then find the package under the generator's key or build it; save both for the others."""
    import torch

    from generator.package_guard import crashed_path, marker_path
    from generator.unet_package import build_package, package_path

    steps.begin("capture")
    inputs = six_inputs(bench.capture(args.size))
    steps.end()
    unet = bench.packaged_unet(Path(args.cache_dir))
    in_so = args.constants == "in-so"
    # A package with its weights inside is not the generator's: its own key, so neither is taken for the other.
    path = package_path(unet.folder, f"{unet.fingerprint}|constants in so" if in_so else unet.fingerprint, inputs)
    restored = not path.is_file() and crashed_path(path).is_file()
    if restored:
        crashed_path(path).rename(path)  # quarantined by a run before: the very file to diagnose
    marker_path(path).unlink(missing_ok=True)  # each attempt starts from a clean folder
    timing = None
    if not path.is_file():
        steps.begin("build")
        timing = build_package(bench.eager_unet, inputs, path, unet.inductor_options, constants_in_so=in_so)
        steps.end(since_spawn_s=round(time.time() - args.spawned_at, 1))
    torch.save({"inputs": list(inputs), "package": str(path)}, args.work / "inputs.pt")
    bench.record(
        "package",
        path=str(path),
        built=timing is not None,
        restored_from_quarantine=restored,
        export_s=round(timing.export_s, 2) if timing else None,
        aoti_compile_s=round(timing.compile_s, 2) if timing else None,
        package_bytes=path.stat().st_size,
        inputs=[[list(t.shape), str(t.dtype), list(t.stride()), str(t.device)] for t in inputs],
    )


def bare_package(bench: Any, steps: Steps, inputs: tuple[Any, ...], package: Path, user_managed: bool | None) -> None:
    """Load the package step by step as generator/unet_package.py does, with shared or copied constants.

    `user_managed` None: the package holds its own weights, so none are handed to it.
    """
    import torch

    from bench.compile_measure import UNET_RELATIVE_TOLERANCE, compare
    from generator.unet_package import UNetCall

    device = bench.device
    index = device.index if device.type == "cuda" and device.index is not None else -1
    named = {f"unet.{name}": t for name, t in [*bench.eager_unet.named_parameters(), *bench.eager_unet.named_buffers()]}
    steps.begin("load")
    runner = torch._inductor.aoti_load_package(str(package), device_index=index)
    steps.end(metadata=runner.get_metadata())
    steps.begin("get_constant_fqns")
    wanted = runner.get_constant_fqns()
    chosen = [named[name] for name in wanted if name in named]
    steps.end(
        constants=len(wanted),
        missing=sorted(set(wanted) - set(named))[:20],
        devices=sorted({str(t.device) for t in chosen}),
        dtypes=sorted({str(t.dtype) for t in chosen}),
        not_contiguous=sum(not t.is_contiguous() for t in chosen),
    )
    if user_managed is not None:
        allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        steps.begin("load_constants")
        runner.load_constants(
            {name: named[name] for name in wanted if name in named}, check_full_update=True, user_managed=user_managed
        )
        steps.end(
            user_managed=user_managed,
            added_bytes=torch.cuda.memory_allocated(device) - allocated if allocated is not None else None,
        )
    with torch.no_grad():
        steps.begin("call")
        output = runner(*inputs)
        steps.end()
        steps.begin("synchronize")
        bench.sync()
        steps.end()
        steps.begin("compare")
        reference = UNetCall(bench.eager_unet)(*inputs)
        steps.end(agreement=compare(output.float(), reference.float(), UNET_RELATIVE_TOLERANCE))


def generator_path(bench: Any, args: argparse.Namespace, steps: Steps, inputs: tuple[Any, ...], package: Path) -> None:
    """Run the generator's warm-up call on the package: PackagedUNet's load, crash marker and first call."""
    from generator.package_guard import crashed_path, marker_path
    from generator.unet_package import package_path

    unet = bench.packaged_unet(Path(args.cache_dir))
    if package_path(unet.folder, unet.fingerprint, inputs) != package:
        raise RuntimeError(f"the generator's key names another file than {package.name}: it would build one")
    steps.begin("first_call")  # load_package (load, constants' names, shared constants), the call, synchronize
    sample, timestep, text, fps, image_latents, image_embeddings = inputs
    with unet.building():
        unet(
            sample, timestep, encoder_hidden_states=text, fps=fps, image_latents=image_latents,
            image_embeddings=image_embeddings, return_dict=False,
        )  # fmt: skip
    bench.sync()
    steps.end()
    bench.record(
        "result",
        served_by_package=unet.package_calls_total,
        loads=len(unet.loads),
        builds=len(unet.builds),
        skips=[f"{skip.reason}: {skip.message}" for skip in unet.skips],
        package_exists=package.is_file(),
        quarantined=crashed_path(package).is_file(),
        marker_left=marker_path(package).is_file(),
    )


if __name__ == "__main__":
    sys.exit(main())
