"""Which of the monitor's NVML duties slows a GPU job: each one alone, beside a UNet-like load, in rotated pairs.

    python -m bench.nvml_interference --out bench/results/nvml_interference.json   # one GPU, about a minute

The GPU acceptance run measured 512p/16 jobs 3% slower in denoising with the monitor running than with it paused
(SIGSTOP), at 0.5 s and at 2 s sampling alike, before any clip was scored: a cost that does not scale with the
sampling period. This isolates the monitor's NVML work (monitor/collection/nvml.py's `NvmlReader`, as the monitor
builds it) from the rest of the monitor. Each duty runs in a process of its own, as the monitor is, all started at
once and kept frozen (SIGSTOP) except the one under test:
- `idle`: no NVML at all (every child frozen);
- `sampling`: `read()` every 0.5 s with the Xid listener off (memory, utilisation, power, processes, energy,
  health on their own cadences);
- `xid`: only the Xid listener thread (an `nvmlEventSetWait` of 500 ms, over and over);
- `full`: both, as `python -m monitor` runs them.
The load is the UNet's kind of work on fp16 tensors (3x3 convolutions, group norms, attention over 4,096
positions, many small kernels), timed in trials of 10 iterations with the device synchronised; conditions are
rotated each round, and each is compared with the `idle` trial of the same round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DUTIES = ("sampling", "xid", "full")


def duty(name: str) -> None:
    """Run one NVML duty until killed (a child process)."""
    from monitor.collection.nvml import NvmlReader

    reader = NvmlReader(xid_events=name in ("xid", "full"), xid_thread=name in ("xid", "full"))
    reader.read()  # init, and register the Xid event set where asked
    print("ready", flush=True)
    while True:
        if name in ("sampling", "full"):
            reader.read()
        time.sleep(0.5)


def load_trial(iterations: int) -> float:
    """Return the seconds of `iterations` UNet-like iterations on the GPU (synchronised)."""
    import torch
    import torch.nn.functional as F

    state = load_trial.__dict__.setdefault("state", {})
    if not state:
        device = torch.device("cuda")
        state["x"] = torch.randn(32, 320, 64, 64, device=device, dtype=torch.float16)
        state["w"] = torch.randn(320, 320, 3, 3, device=device, dtype=torch.float16) * 0.02
        state["q"] = torch.randn(32, 8, 4096, 40, device=device, dtype=torch.float16)
    x, w, q = state["x"], state["w"], state["q"]
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iterations):
        h = x
        for _ in range(6):
            h = F.conv2d(F.silu(F.group_norm(h, 32)), w, padding=1) + h
        F.scaled_dot_product_attention(q, q, q)
        for _ in range(200):  # the many small kernels of a UNet step: launch-bound
            h = h[:1, :8, :8, :8] * 1.0001 + 0.0001
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the rotated rounds; write and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--duty", choices=DUTIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duty:
        duty(args.duty)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bench.nvml_interference", "--duty", name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in DUTIES
    }
    try:
        for child in children.values():
            assert child.stdout is not None
            child.stdout.readline()  # "ready"
            child.send_signal(signal.SIGSTOP)
        load_trial(3)  # warm-up: allocations, kernel choice
        conditions = ("idle", *DUTIES)
        trials: dict[str, list[float]] = {name: [] for name in conditions}
        for round_index in range(args.rounds):
            shift = round_index % len(conditions)
            for name in conditions[shift:] + conditions[:shift]:
                child = children.get(name)
                if child is not None:
                    child.send_signal(signal.SIGCONT)
                    time.sleep(0.6)  # its first tick
                trials[name].append(load_trial(args.iterations))
                if child is not None:
                    child.send_signal(signal.SIGSTOP)
        result: dict[str, Any] = {"benchmark": "nvml_interference", "rounds": args.rounds, "trials_s": trials}
        import torch

        result["device"] = torch.cuda.get_device_name(0)
        result["median_trial_s"] = {name: round(statistics.median(v), 4) for name, v in trials.items()}
        for name in DUTIES:
            logs = [math.log(a / b) for a, b in zip(trials[name], trials["idle"], strict=True)]
            mean, spread = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
            result[f"{name}_over_idle"] = {
                "ratio": round(math.exp(mean), 4),
                "ci95": [round(math.exp(mean - 2 * spread), 4), round(math.exp(mean + 2 * spread), 4)],
            }
    finally:
        for child in children.values():
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
