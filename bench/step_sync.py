"""What timing and reporting every denoising step costs the pipeline: diffusers alone against the stage timer.

    python -m bench.step_sync --out bench/results/step_sync.json        # one GPU, full model, about 3 minutes
    python -m bench.step_sync --model tiny --resolution 64 --num-frames 8 --steps 4 --rounds 2   # CPU smoke

The GPU acceptance run found jobs about 3% slower in denoising with the monitor running than with it paused,
whatever the sampling period, before any clip was scored; NVML alone was cleared (bench/nvml_interference.py).
What the monitor's presence changes in the generator's process is the event sender: with the monitor paused it
sits in one unanswered request, with it running it posts every step's event, taking the GIL right when the step
ends, which is when the pipeline thread must queue the next step on an idle GPU.

Each round runs one call of every mode, in rotated order, on pipelines that share the same modules:
- `diffusers`: the pipeline as shipped, nothing timed;
- `at_once_quiet`: the stage timer booking each step as it ends (a device-wide synchronize per step, as the
  generator did before), with a listener that only keeps the timings;
- `at_once_sender`: the same, each stage's event emitted through a real `EventSender` to an HTTP sink in another
  process (the monitor's place), as the worker does;
- `in_flight_quiet` and `in_flight_sender`: the timer as the generator runs it on a GPU now, one step in flight.

Each call runs to the latents (no decode) with the same seed and is timed with the device synchronised. Every mode
is compared with `diffusers` of the same round (geometric mean of the paired ratios, bootstrap 95% interval). On
CUDA one more call per mode runs under `torch.cuda.set_sync_debug_mode("warn")` and counts the synchronizing
operations it warns about.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import machine
from bench.spread import describe, paired_ratio

ROOT = Path(__file__).resolve().parent.parent
MODES = ("diffusers", "at_once_quiet", "at_once_sender", "in_flight_quiet", "in_flight_sender")


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"accepted": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


def serve_sink() -> None:
    """Accept every POST with a 200, as a healthy monitor's ingest does (a child process)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def fresh_copy(pipe: Any) -> Any:
    """Return a pipeline that shares `pipe`'s modules with an unwrapped scheduler of its own."""
    return type(pipe)(**{**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})


def main(argv: list[str] | None = None) -> int:
    """Run the rotated rounds; write and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", default="full")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        serve_sink()
        return 0

    import torch
    from PIL import Image

    from generator.device_clock import clock_for
    from generator.events import EventSender
    from generator.pipeline import load_pipeline, pick_device
    from generator.stages import StageTimer, StageTiming
    from generator.validation import JobParams
    from generator.worker import stage_event

    device, dtype = pick_device()
    work = Path(tempfile.mkdtemp(prefix="step-sync-"))
    pipe = load_pipeline(args.model, device, dtype, work / "cache")
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.step_sync", "--sink"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None
    sender = EventSender(f"http://127.0.0.1:{sink.stdout.readline().strip()}", work / "spool", spool_max_bytes=1 << 30)
    call = {
        "prompt": "a red fox running through snow",
        "image": Image.new("RGB", (args.resolution, args.resolution), (120, 90, 60)),
        "height": args.resolution,
        "width": args.resolution,
        "num_frames": args.num_frames,
        "num_inference_steps": args.steps,
        "output_type": "latent",
    }

    params = JobParams(args.resolution, args.num_frames, args.steps, 9.0, 8)

    def emit(timing: StageTiming) -> None:  # what the worker sends for each stage
        sender.emit(stage_event("bench", "bench", str(device.index or 0), timing, params))

    def timed(in_flight: int, listener: Callable[[StageTiming], None]) -> Callable[[], Any]:
        timer = StageTimer(fresh_copy(pipe), clock_for(device), steps_in_flight=in_flight)
        return lambda: timer.run(listener, lambda: False, **call)

    raw = fresh_copy(pipe)
    runs: dict[str, Callable[[], Any]] = {
        "diffusers": lambda: raw(**call),
        "at_once_quiet": timed(0, lambda _: None),
        "at_once_sender": timed(0, emit),
        "in_flight_quiet": timed(1, lambda _: None),
        "in_flight_sender": timed(1, emit),
    }

    def trial(mode: str) -> float:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        runs[mode]()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    try:
        for mode in MODES:  # warm-up: kernel choice, allocator growth, the sink's first connection
            trial(mode)
        syncs = {mode: count_syncs(functools.partial(trial, mode)) for mode in MODES} if device.type == "cuda" else {}
        trials: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_index in range(args.rounds):
            shift = round_index % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                trials[mode].append(trial(mode))
        sender.flush(30)
    finally:
        sender.close()
        sink.kill()
        sink.wait()
        sink.stdout.close()
    result: dict[str, Any] = {
        "benchmark": "step_sync",
        "command": "python -m bench.step_sync " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "job": {"model": args.model, "resolution": args.resolution, "num_frames": args.num_frames, "steps": args.steps},
        "rounds": args.rounds,
        "call_s": {mode: describe(values) for mode, values in trials.items()},
        "over_diffusers": {
            mode: paired_ratio(list(zip(trials[mode], trials["diffusers"], strict=True))) for mode in MODES[1:]
        },
        "sender_cost": {
            kind: paired_ratio(list(zip(trials[f"{kind}_sender"], trials[f"{kind}_quiet"], strict=True)))
            for kind in ("at_once", "in_flight")
        },
        "in_flight_over_at_once_with_sender": paired_ratio(
            list(zip(trials["in_flight_sender"], trials["at_once_sender"], strict=True))
        ),
        "synchronizing_ops_per_call": syncs,
        "median_call_s": {mode: round(statistics.median(v), 4) for mode, v in trials.items()},
        "events_delivered": sender.delivered_total,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def count_syncs(run: Callable[[], Any]) -> int:
    """Run once with CUDA's sync debug mode warning, and count the synchronizing operations it names."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    raise SystemExit(main())
