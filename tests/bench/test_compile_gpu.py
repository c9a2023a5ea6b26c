"""bench/compile_gpu.py without a GPU: its arithmetic, its child processes' environment, and every code path once.

The figures are measured only on a card; here the tiny model runs the same phases on the CPU with dynamo's
`eager` backend (tracing, guards and the static-shape recompile, no code generation), so the one GPU call does
not fail on a typo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.compile_gpu import ROOT, child_env, main, parse_args, peak_for, read_records, summarise


def test_the_summary_turns_recorded_steps_into_tflops_share_of_peak_and_speedup() -> None:
    # The issue's own measurement: 41.9 TFLOP per step, 0.216 s eager, 0.135 s compiled after 147 s.
    cold = [
        {"kind": "load", "model_load_s": 40.0, "device": {"name": "NVIDIA H200"}},
        {"kind": "eager", "size": "512x512x16", "step": {"median_s": 0.216, "min_s": 0.215, "max_s": 0.22}},
        {"kind": "eager_flop", "size": "512x512x16", "flop_per_step": 41_900_000_000_000},
        {"kind": "compiled_compile", "size": "512x512x16", "compile_s": 147.0},
        {"kind": "compiled", "size": "512x512x16", "step": {"median_s": 0.135}, "unet_agreement": {"agree": True}},
    ]
    warm = [{"kind": "warm_start_compile", "since_spawn_s": 24.5, "compile_s": 9.0, "cache_counters": {}}]
    result = {"phases": {"cold": {"records": cold}, "warm": {"records": warm}}}

    summary = summarise(result, None)

    (row,) = summary["sizes"]
    assert row["eager_tflops"] == pytest.approx(194.0, abs=0.1)
    assert row["compiled_tflops"] == pytest.approx(310.4, abs=0.1)
    assert row["compiled_share_of_peak"] == pytest.approx(310.4 / 989.5, abs=1e-3)
    assert row["speedup"] == pytest.approx(1.6)
    assert (row["compile_s"], row["unet_outputs_agree"]) == (147.0, True)
    assert summary["warm_start"]["ready_s"] == 24.5


def test_the_warm_start_is_split_into_its_recorded_parts_and_the_rest() -> None:
    # The H200's regional warm start (34.74 s to the first compiled step), with made-up values for the parts that
    # run did not record yet.
    warm = [
        {"kind": "load", "imports_s": 4.4, "model_load_s": 1.31, "cache_load_s": 5.2, "pipeline_imports_s": 1.5,
         "device_info_s": 1.1},
        {"kind": "warm_start_compiling", "since_spawn_s": 24.17, "capture_s": 2.66, "dynamo_import_s": 2.0,
         "wrap_s": 3.0},
        {"kind": "warm_start_compile", "since_spawn_s": 34.74, "compile_s": 13.23, "cache_counters": {}},
    ]  # fmt: skip

    warm_start = summarise({"phases": {"warm": {"records": warm}}}, None)["warm_start"]

    assert warm_start["unexplained_s"] == pytest.approx(34.74 - (4.4 + 5.2 + 1.5 + 1.31 + 1.1 + 2.0 + 3.0 + 13.23))
    assert (warm_start["device_info_s"], warm_start["dynamo_import_s"]) == (1.1, 2.0)
    # A run recorded before a part was measured names no remainder rather than a wrong one.
    del warm[1]["dynamo_import_s"]
    assert summarise({"phases": {"warm": {"records": warm}}}, None)["warm_start"]["unexplained_s"] is None


def test_a_run_cut_short_after_the_eager_step_still_summarises_it() -> None:
    cold = [
        {"kind": "load", "device": {"name": "NVIDIA H200"}},
        {"kind": "eager", "size": "512x512x16", "step": {"median_s": 0.2}},
    ]

    summary = summarise({"phases": {"cold": {"records": cold, "status": "timed out"}}}, None)

    assert summary["sizes"][0]["eager_step_s"] == 0.2
    assert summary["sizes"][0]["compiled_step_s"] is None
    assert summary["warm_start"] is None


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_the_peak_comes_from_the_device_name(name: str, peak: float | None) -> None:
    assert peak_for(name, None) == peak


def test_a_record_line_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "cold.jsonl"
    path.write_text('{"kind": "load", "model_load_s": 1.0}\n{"kind": "ea')

    assert read_records(path) == [{"kind": "load", "model_load_s": 1.0}]


def test_children_find_the_repository_before_the_installed_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device installs the carried wheels into a folder named by PYTHONPATH: replacing it loses diffusers.
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")

    env = child_env(tmp_path)

    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/tmp/site"]
    assert (env["TORCHINDUCTOR_CACHE_DIR"], env["TORCHINDUCTOR_FX_GRAPH_CACHE"]) == (str(tmp_path), "1")


def test_every_phase_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path) -> None:
    # The scope the next device call measures (the whole UNet's path differs by one setting, which
    # tests/generator/test_compile.py runs), and a task left out.
    out = tmp_path / "compile.json"
    argv = ["--out", str(out), "--model", "tiny", "--device", "cpu", "--backend", "eager", "--scope", "regional"]
    argv += ["--skip", "mega_cache", "--size", "64x4", "--large-size", "64x8", "--repeats", "2", "--warmup-calls", "1"]
    argv += ["--variant-repeats", "1", "--agreement-steps", "2", "--warm-min-s", "1", "--budget-s", "300"]

    assert main(argv) == 0

    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["errors"] == []
    assert summary["phases"] == {"cold": "complete", "warm": "complete"}
    assert summary["scope"] == "regional"
    assert [row["size"] for row in summary["sizes"]] == ["64x64x4", "64x64x8"]
    for row in summary["sizes"]:
        assert min(row["eager_step_s"], row["compiled_step_s"], row["flop_per_step"]) > 0
        assert row["unet_outputs_agree"] is True
    assert summary["latents_agree"] is True
    assert summary["graphs_built_during_agreement"] == 0  # the pipeline's other timesteps reuse the graphs
    assert summary["warm_start"]["ready_s"] > 0
    # Every part of the warm start is named: what is left is the records' own bookkeeping.
    assert abs(summary["warm_start"]["unexplained_s"]) < 1.0
    assert set(summary["sdpa_eager_step_s"]) == {"flash", "efficient", "cudnn", "default"}
    kinds = [r["kind"] for r in result["phases"]["cold"]["records"]]
    assert kinds[:3] == ["load", "eager", "eager_flop"]  # the eager figure first: the one a cut-short run keeps
    assert "mega_cache" not in kinds
    # A graph per distinct block (13 for the tiny UNet's 25), traced again by a new process (the kernels are what
    # the caches keep), and static shapes: the second size builds its own, once.
    graphs = summary["sizes"][0]["graphs_built"]
    assert graphs > 1
    assert summary["warm_start"]["graphs_built"] == graphs
    large = next(r for r in result["phases"]["warm"]["records"] if r["kind"] == "large_compiled")
    assert summary["sizes"][1]["graphs_built"] == graphs
    assert large["graphs_built_while_timing"] == 0
    assert result["complete"] is True


@pytest.mark.parametrize(
    ("skip", "message"),
    [("sdpa,large", "'large' is no task"), ("compiled", "'compiled' cannot be skipped")],
)
def test_a_task_to_skip_must_exist_and_not_be_one_the_others_need(
    skip: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--skip", skip])

    assert message in capsys.readouterr().err
