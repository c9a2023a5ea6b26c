"""Does torch's AOTInductor load any package on this machine? A two-layer MLP, built, then loaded in a fresh process.

The smallest reproducer of the crash `bench.aoti_diagnose` found with the UNet: nothing of this project runs here.
Run each step in its own process, as on the lent H200 (torch 2.11.0+cu130), where the load step died with SIGSEGV
inside `_load_aoti` (bench/results/h200_aoti_minimal.txt):
    timeout 200 python bench/aoti_minimal.py build; timeout 100 python bench/aoti_minimal.py load
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time

import torch

PACKAGE = "/tmp/probe/linear.pt2"


def build() -> None:
    """Export the MLP on cuda in fp16 and compile it ahead of time into a package."""
    from torch._inductor import aoti_compile_and_package

    os.makedirs(os.path.dirname(PACKAGE), exist_ok=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).cuda().half()
    example = torch.randn(8, 64, device="cuda", dtype=torch.half)
    started = time.time()
    exported = torch.export.export(model, (example,))
    built = aoti_compile_and_package(exported, package_path=PACKAGE)
    print("built", built, round(time.time() - started, 1), "s", os.path.getsize(PACKAGE), "bytes", flush=True)


def load() -> None:
    """Load the package in this fresh process and call it once."""
    from torch._inductor import aoti_load_package

    started = time.time()
    print("loading", flush=True)
    runner = aoti_load_package(PACKAGE)
    print("loaded", round(time.time() - started, 1), flush=True)
    print("called", runner(torch.randn(8, 64, device="cuda", dtype=torch.half)).shape, flush=True)


if __name__ == "__main__":
    faulthandler.enable()  # a crash in the loader prints the Python stack that reached it
    {"build": build, "load": load}[sys.argv[1]]()
