"""bench/aoti_gpu.py without a GPU: its summary from recorded figures and its flags.

Its phases run end to end on the CPU with the tiny model (`--model tiny --device cpu --sizes 64x4`), but each
builds a package of the UNet (a minute or more on two cores), so the suite checks the arithmetic and the flags, and
the generator's own tests cover the packages themselves (tests/generator/test_aoti.py).
"""

from __future__ import annotations

import argparse

import pytest

from bench.aoti_gpu import parse_args, summarise

SIZE = "512x512x16"


def test_the_summary_sets_packaged_compiled_and_eager_side_by_side() -> None:
    packages = [
        {"kind": "load", "device": {"name": "NVIDIA H200"}},
        {"kind": f"eager_{SIZE}", "step": {"median_s": 0.21}},
        {"kind": f"package_{SIZE}", "built": True, "export_s": 20.0, "aoti_compile_s": 150.0, "load_s": None},
        {"kind": f"packaged_{SIZE}", "step": {"median_s": 0.14}, "unet_agreement": {"agree": True}},
        {"kind": "agreement", "packaged_vs_eager": {"agree": True, "relative_max_diff": 0.004}},
    ]
    restart = [
        {
            "kind": "restart",
            "since_spawn_s": 21.5,
            "compiles": 0.0,
            "packaged_sizes": [SIZE],
            "stages": [
                {"stage": "model_load", "duration_s": 4.0},
                {"stage": "package_load", "duration_s": 1.5},
                {"stage": "warmup", "duration_s": 2.0},
            ],
        }
    ]
    compiled = [
        {"kind": f"compiled_{SIZE}_compile", "compile_s": 134.0},
        {"kind": f"compiled_{SIZE}", "step": {"median_s": 0.137}},
    ]
    result = {
        "settings": {"sizes": [SIZE]},
        "phases": {
            "packages": {"records": packages},
            "restart": {"records": restart},
            "compiled": {"records": compiled},
        },
    }

    summary = summarise(result)

    (row,) = summary["sizes"]
    assert row["packaged_speedup"] == pytest.approx(1.5)
    assert row["compiled_speedup"] == pytest.approx(0.21 / 0.137, abs=1e-3)
    assert (row["package_export_s"], row["package_aoti_compile_s"], row["torch_compile_s"]) == (20.0, 150.0, 134.0)
    assert row["packaged_unet_agrees"] is True
    assert summary["latents_agree"] is True
    assert summary["warm_restart"]["ready_s"] == 21.5
    assert summary["warm_restart"]["package_loads_s"] == [1.5]
    assert summary["warm_restart"]["stages_s"] == {"model_load": 4.0, "warmup": 2.0}


def test_a_run_cut_short_during_a_build_still_summarises_the_eager_step() -> None:
    packages = [{"kind": f"eager_{SIZE}", "step": {"median_s": 0.21}}]
    result = {"settings": {"sizes": [SIZE]}, "phases": {"packages": {"records": packages, "status": "timed out"}}}

    summary = summarise(result)

    assert summary["sizes"][0]["eager_step_s"] == 0.21
    assert summary["sizes"][0]["packaged_step_s"] is None
    assert summary["warm_restart"] is None


def test_the_flags_name_sizes_and_phases() -> None:
    args = parse_args(["--sizes", "512x16,1024x16", "--phases", "restart,packages"])

    assert args.sizes == [(512, 16), (1024, 16)]
    assert args.phases == ["restart", "packages"]
    with pytest.raises(SystemExit):
        parse_args(["--phases", "packages,warm"])
    assert isinstance(parse_args([]), argparse.Namespace)
