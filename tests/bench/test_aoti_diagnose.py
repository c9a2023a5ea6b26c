"""bench/aoti_diagnose.py without a GPU: how it reads its children's records, exit codes and stderr.

Its phases run end to end on the CPU with the tiny model (`--model tiny --device cpu --size 64x4`), but the build
alone takes a minute or more on two cores, so the suite checks the reading of what the children leave.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.aoti_diagnose import parse_args, summarise
from bench.compile_gpu import run_phase

FATAL = """[aoti_diagnose] shared: load_constants
Fatal Python error: Segmentation fault

Current thread 0x00007f (most recent call first):
  File "/repo/bench/aoti_diagnose.py", line 290 in bare_package
"""


def steps(*names: str, ended: int) -> list[dict[str, Any]]:
    """Return the records of an attempt that began `names` and ended the first `ended` of them."""
    records: list[dict[str, Any]] = []
    for index, name in enumerate(names):
        records.append({"kind": "step", "step": name})
        if index < ended:
            records.append({"kind": "step_done", "step": name, "s": 0.1})
    return records


def test_a_segfault_in_shared_constants_beside_working_copies_names_the_fix_candidate() -> None:
    result = {
        "phases": {
            "build": {
                "status": "complete",
                "records": [
                    {"kind": "load", "device": {"name": "NVIDIA H200"}},
                    {"kind": "package", "path": "/c/unet.pt2", "built": True, "aoti_compile_s": 287.3},
                ],
            },
            "shared": {
                "status": "failed (exit -11, 0 error(s))",
                "exit_code": -11,
                "records": steps("load", "get_constant_fqns", "load_constants", ended=2),
                "stderr_tail": "some warnings\n" + FATAL,
            },
            "copied": {
                "status": "complete",
                "exit_code": 0,
                "records": [*steps("load", "get_constant_fqns", "load_constants", "call", ended=4), {"kind": "done"}],
            },
            "restart": {
                "status": "complete",
                "exit_code": 0,
                "records": [{"kind": "result", "skips": ["crashed: UNet package ... quarantined"]}, {"kind": "done"}],
            },
        }
    }

    summary = summarise(result)

    shared = summary["attempts"]["shared"]
    assert (shared["outcome"], shared["step"], shared["steps_ended"]) == (
        "died (signal 11)",
        "load_constants",
        ["load", "get_constant_fqns"],
    )
    assert shared["fatal"].startswith("Fatal Python error: Segmentation fault")
    assert "bare_package" in shared["fatal"]
    assert summary["attempts"]["copied"]["outcome"] == "ok"
    assert summary["device"] == "NVIDIA H200"
    assert summary["package"]["aoti_compile_s"] == 287.3
    assert summary["verdict"][0].startswith("copied constants work where shared ones do not")
    assert any(line.startswith("restart: the package was not served (crashed") for line in summary["verdict"])


def test_an_attempt_that_raised_or_ran_out_of_time_says_where() -> None:
    result = {
        "phases": {
            "shared": {
                "status": "failed (exit 1, 1 error(s))",
                "exit_code": 1,
                "records": [{"kind": "error", "step": "load_model", "message": "OutOfMemoryError: ..."}],
            },
            "copied": {"status": "timed out (the budget ran out)", "records": steps("load", "call", ended=1)},
            "generator": {"status": "skipped", "reason": "10 s of the budget left, 30 s needed"},
        }
    }

    attempts = summarise(result)["attempts"]

    assert (attempts["shared"]["outcome"], attempts["shared"]["step"]) == ("raised", "load_model")
    assert (attempts["copied"]["outcome"], attempts["copied"]["step"]) == ("timed out", "call")
    assert attempts["generator"]["outcome"] == "skipped"


def test_the_flags_default_to_the_generators_first_size_and_the_aoti_benchs_folder() -> None:
    args = parse_args([])

    assert args.size == (512, 16)
    assert args.cache_dir.endswith("i2v-aoti-cache")
    assert args.constants == "outside"  # the generator's packages
    assert parse_args(["--size", "64x4", "--model", "tiny"]).size == (64, 4)


def test_a_package_with_its_own_weights_that_runs_points_at_the_weights_outside() -> None:
    ran = {"status": "complete", "exit_code": 0, "records": [*steps("load", "call", "compare", ended=3)]}
    died = {"status": "failed (exit -11)", "exit_code": -11, "records": steps("load", ended=0)}

    assert summarise({"phases": {"own_constants": ran}})["verdict"][0].startswith(
        "with its weights in its library the package loads and runs"
    )
    assert summarise({"phases": {"own_constants": died}})["verdict"] == [
        "with its weights in its library it fails too (died (signal 11) in load): not the weights"
    ]


CRASHING_CHILD = """
import ctypes, faulthandler, json, sys

faulthandler.enable(all_threads=True)
with open(sys.argv[1], "a") as records:
    records.write(json.dumps({"kind": "step", "step": "call"}) + "\\n")
print("[aoti_diagnose] shared: call", file=sys.stderr, flush=True)
ctypes.string_at(0)  # a read at address 0: the segfault a package's native code would cause
"""


def test_a_child_that_segfaults_is_reported_with_its_step_and_its_stack(tmp_path: Path) -> None:
    result: dict[str, Any] = {"phases": {}}
    records = tmp_path / "shared.jsonl"
    command = [sys.executable, "-c", CRASHING_CHILD, str(records)]

    run_phase(result, "shared", command, dict(os.environ), records, 60, lambda: None, tmp_path / "shared.stderr")

    shared = summarise(result)["attempts"]["shared"]
    assert (shared["outcome"], shared["step"], shared["exit_code"]) == ("died (signal 11)", "call", -11)
    assert shared["fatal"].startswith("Fatal Python error: Segmentation fault")
    assert "string_at" in shared["fatal"]  # where it died, from faulthandler's stack
