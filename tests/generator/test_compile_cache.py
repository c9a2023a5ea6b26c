"""The compile cost is paid once: a new process on an empty cache folder holding only the Mega-Cache file reuses the
first process's kernels instead of compiling them, the whole module's and regionally compiled blocks' alike; a
restart on a folder that holds them already does not unpack the file again.

Inductor for real (C++ builds of small CPU kernels), on a two-layer module and a stack of two equal blocks, in two
fresh processes: a compile inside this one would hit its own in-memory caches and prove nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

COMPILE_ONCE = """
import json, sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from generator.acceleration import CompileWatch, prepare_cache, save_cache

cache = Path(sys.argv[1])
loaded = prepare_cache(cache)
watch = CompileWatch("mlp", "inductor", "default", dynamic=True)
model = watch.compile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), dynamic=True)
# Regional: the two equal Linear blocks share one graph, cached like any other.
blocks = CompileWatch("blocks", "inductor", "default", dynamic=False)
stack = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
stack = blocks.compile_blocks(stack, ["Linear"], dynamic=False)
with torch.no_grad():
    model(torch.randn(4, 8))
    model(torch.randn(6, 8))  # another batch size: the same dynamic graph
    stack(torch.randn(4, 8))
print(json.dumps({
    "loaded": loaded,
    "graphs": watch.graphs_total,
    "block_graphs": blocks.graphs_total,
    "inductor": dict(counters["inductor"]),
    "mega_cache_bytes": save_cache(cache),
}))
"""


def compile_in_a_new_process(cache: Path) -> dict:
    if shutil.which("g++") is None:
        pytest.fail("g++ is missing (inductor builds CPU kernels with it): run scripts/install-system-deps.sh")
    completed = subprocess.run(
        [sys.executable, "-c", COMPILE_ONCE, str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def test_a_restart_and_a_new_host_with_only_the_mega_cache_file_compile_nothing(tmp_path: Path) -> None:
    first = compile_in_a_new_process(tmp_path / "first")

    assert first["loaded"] == 0
    assert (first["graphs"], first["block_graphs"]) == (1, 1)
    assert first["inductor"].get("fxgraph_cache_miss", 0) == 2
    assert first["mega_cache_bytes"] > 0

    restart = compile_in_a_new_process(tmp_path / "first")
    assert restart["loaded"] == 0  # the folder's caches hold what the file holds: not unpacked again
    assert restart["inductor"].get("fxgraph_cache_hit", 0) == 2
    assert restart["inductor"].get("fxgraph_cache_miss", 0) == 0

    new_host = tmp_path / "new-host"
    new_host.mkdir()
    shutil.copy(tmp_path / "first" / "mega-cache.bin", new_host / "mega-cache.bin")
    second = compile_in_a_new_process(new_host)

    assert second["loaded"] > 0
    assert (second["graphs"], second["block_graphs"]) == (1, 1)  # dynamo traces: the cache keeps the kernels
    assert second["inductor"].get("fxgraph_cache_hit", 0) == 2
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0
