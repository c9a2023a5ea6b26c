"""The UNet packaged ahead of time (aoti backend): built once, loaded on a restart without a compile, never trusted
blindly.

AOTInductor for real: a package of the tiny pipeline's UNet is a C++ build of about a minute on two CPU cores, so
the worker-level tests share one (the cold start's: a second worker on the same folder loads it, the agreement
with eager and the weights bound at load use it). Rebuilds (another fingerprint, a corrupt file) are shown on a toy
module with the UNet's call signature, whose package builds in about ten seconds through the same code.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from generator.acceleration import PACKAGES_FOLDER, Acceleration, Shape
from generator.packaged_unet import PackagedUNet
from generator.unet_package import package_path, unet_fingerprint
from tests.generator.test_compile import CompiledWorker

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = Shape(64, 4)  # the smallest latents (8x8, 4 frames): the package's size does not change its build time


def aoti(cache_dir: Path) -> Acceleration:
    """Return the settings of a worker that packages the UNet at one size in `cache_dir`."""
    return Acceleration(compile=True, backend="aoti", cache_dir=cache_dir, warmup=(PACKAGED,))


@pytest.fixture(scope="module", autouse=True)
def quick_cpu_builds() -> Iterator[None]:
    """Build packages without vectorised kernels and with an unoptimised wrapper: half the C++ work, same results."""
    with torch._inductor.config.patch({"cpp.simdlen": 0, "aot_inductor.compile_wrapper_opt_level": "O0"}):
        yield


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aoti-cache")


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[CompiledWorker]:
    handle = CompiledWorker(tmp_path_factory.mktemp("cold"), aoti(cache_dir))
    handle.start()
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, cold: CompiledWorker) -> Iterator[CompiledWorker]:
    handle = CompiledWorker(tmp_path_factory.mktemp("warm"), aoti(cache_dir))
    handle.start()
    try:
        yield handle
    finally:
        handle.close()


def packaged(handle: CompiledWorker) -> PackagedUNet:
    unet = handle.worker.watches[0]
    assert isinstance(unet, PackagedUNet)
    return unet


def startup_stages(handle: CompiledWorker, stage: str) -> list[dict[str, Any]]:
    return [e for e in handle.lines.events if e["job_id"] == "startup" and e["stage"] == stage]


@pytest.mark.slow
def test_a_cold_start_builds_the_package_as_a_compile_and_jobs_run_it(cold: CompiledWorker, cache_dir: Path) -> None:
    (event,) = cold.lines.compiles("startup")
    assert (event["params"]["resolution"], event["params"]["num_frames"]) == (64, 4)
    assert cold.counter("warmup") == 1
    assert startup_stages(cold, "package_load") == []  # made, not loaded
    assert len(list((cache_dir / PACKAGES_FOLDER).glob("unet-2x4x4x8x8-*.pt2"))) == 1
    unet = packaged(cold)
    served = unet.package_calls_total

    job = cold.run(64, 4)

    assert job.state == "succeeded", job.error
    assert unet.package_calls_total == served + 2  # both steps (guidance batched in each)
    assert cold.lines.compiles(job.job_id) == []
    assert not any("uncompiled" in note for note in job.notes)
    assert unet.graphs_total == 1


@pytest.mark.slow
def test_a_size_without_a_package_runs_eager_and_says_why(cold: CompiledWorker) -> None:
    unet = packaged(cold)
    served, built = unet.package_calls_total, unet.graphs_total

    job = cold.run(96, 4)

    assert job.state == "succeeded", job.error
    assert (unet.package_calls_total, unet.graphs_total) == (served, built)
    assert "the UNet runs uncompiled: 96x96x4 is not among the compiled warm-up sizes" in " ".join(job.notes)
    assert cold.counter("job") == 0


@pytest.mark.slow
def test_the_package_agrees_with_eager_and_runs_the_current_weights(cold: CompiledWorker) -> None:
    unet = packaged(cold)
    captured: dict[str, Any] = {}

    def keep(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.update(args=args, kwargs=kwargs)

    hook = unet.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        assert cold.run(64, 4).state == "succeeded"
    finally:
        hook.remove()
    args, kwargs = captured["args"], captured["kwargs"]
    served = unet.package_calls_total
    weight = unet.eager.conv_out.weight

    with torch.no_grad():
        ours, reference = unet(*args, **kwargs)[0], unet.eager(*args, **kwargs)[0]
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)
        # The weights are the eager UNet's own tensors, not a copy in the package: a change shows at once.
        weight.mul_(2)
        try:
            changed, changed_reference = unet(*args, **kwargs)[0], unet.eager(*args, **kwargs)[0]
        finally:
            weight.div_(2)
    assert unet.package_calls_total == served + 2
    assert not torch.allclose(changed, reference, rtol=1e-3)
    assert torch.allclose(changed, changed_reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_restart_loads_the_package_without_compiling(cold: CompiledWorker, warm: CompiledWorker) -> None:
    assert warm.lines.compiles("startup") == []
    assert warm.counter("warmup") == 0
    assert packaged(warm).graphs_total == 0
    (load,) = startup_stages(warm, "package_load")
    (built,) = cold.lines.compiles("startup")
    assert load["params"]["resolution"] == 64
    assert load["duration_s"] < built["duration_s"] / 10  # opening a library, not building one
    served = packaged(warm).package_calls_total

    job = warm.run(64, 4)

    assert job.state == "succeeded", job.error
    assert packaged(warm).package_calls_total == served + 2


class ToyUNet(torch.nn.Module):
    """The UNet's call signature around one linear layer: a package of it builds in seconds, not a minute."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, **inputs: Any) -> tuple[Any]:
        """Mix every input into the output, so that the package takes them all."""
        mixed = self.proj(sample + inputs["image_latents"]) * timestep
        return (
            mixed + encoder_hidden_states.mean() + inputs["fps"].float().mean() + inputs["image_embeddings"].mean(),
        )


TOY_INPUTS = (
    torch.randn(2, 4, 4, 8, 8),
    torch.tensor(981),
    torch.randn(2, 7, 8),
    torch.tensor([8, 8]),
    torch.randn(2, 4, 4, 8, 8),
    torch.randn(2, 1, 8),
)


def toy_call(unet: torch.nn.Module) -> torch.Tensor:
    """Call `unet` as I2VGenXLPipeline calls its UNet."""
    sample, timestep, text, fps, image_latents, image_embeddings = TOY_INPUTS
    with torch.no_grad():
        (output,) = unet(
            sample,
            timestep,
            encoder_hidden_states=text,
            fps=fps,
            image_latents=image_latents,
            image_embeddings=image_embeddings,
            return_dict=False,
        )
    return output


def toy_packaged(folder: Path, attention: str = "auto") -> PackagedUNet:
    """Return a toy UNet served from packages in `folder`, after its warm-up call (which loads or builds one)."""
    torch.manual_seed(0)
    unet = PackagedUNet(ToyUNet(), folder, torch.device("cpu"), {}, {"attention": attention})
    with unet.building():
        toy_call(unet)
    return unet


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toy-packages")
    assert toy_packaged(folder).graphs_total == 1
    return folder


def test_a_package_on_disk_is_loaded_and_agrees(toy_folder: Path) -> None:
    unet = toy_packaged(toy_folder)

    assert unet.graphs_total == 0
    (load,) = unet.loads
    assert load.path.parent == toy_folder
    served = toy_call(unet)
    assert unet.package_calls_total == 2
    assert torch.allclose(served, toy_call(unet.eager), atol=1e-6)


def test_another_fingerprint_builds_its_own_package(tmp_path: Path, toy_folder: Path) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")

    unet = toy_packaged(tmp_path / "packages", attention="flash")

    assert (unet.graphs_total, unet.loads) == (1, [])
    assert len(list((tmp_path / "packages").glob("*.pt2"))) == 2  # the other one stays for its own settings


def test_a_corrupt_package_is_built_anew_with_a_warning(
    tmp_path: Path, toy_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")
    (package,) = (tmp_path / "packages").glob("*.pt2")
    package.write_bytes(package.read_bytes()[:4096])  # a copy cut short

    with caplog.at_level(logging.WARNING, logger="generator.packaged_unet"):
        unet = toy_packaged(tmp_path / "packages")

    assert "UNet package unusable, building it anew" in caplog.text
    assert (unet.graphs_total, unet.loads) == (1, [])
    assert package.stat().st_size > 4096
    assert unet.package_calls_total == 1


def test_the_key_changes_with_the_size_the_layout_and_the_settings() -> None:
    unet = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3))
    cpu = torch.device("cpu")
    fingerprint = unet_fingerprint(unet, cpu, {"attention": "auto"})
    inputs = [torch.zeros(2, 4, 4, 8, 8), torch.tensor(1), torch.zeros(2, 77, 32)]
    path = package_path(Path("p"), fingerprint, inputs)

    larger = package_path(Path("p"), fingerprint, [torch.zeros(2, 4, 8, 8, 8), *inputs[1:]])
    assert larger != path
    assert larger.name.startswith("unet-2x4x8x8x8-")
    assert unet_fingerprint(unet, cpu, {"attention": "flash"}) != fingerprint
    assert package_path(Path("p"), fingerprint, [inputs[0].half(), *inputs[1:]]) != path
    with torch.no_grad():
        unet[0].weight.mul_(3)  # the weights' values are not in the package: same key
    assert unet_fingerprint(unet, cpu, {"attention": "auto"}) == fingerprint
    unet.to(memory_format=torch.channels_last)  # other strides: other generated code
    assert unet_fingerprint(unet, cpu, {"attention": "auto"}) != fingerprint
    assert unet_fingerprint(unet.double(), cpu, {"attention": "auto"}) != fingerprint


FINGERPRINT = """
import torch
from pathlib import Path
from generator.pipeline import load_pipeline
from generator.unet_package import unet_fingerprint

pipe = load_pipeline("tiny", torch.device("cpu"), torch.float32, Path(__import__("tempfile").mkdtemp()))
print(unet_fingerprint(pipe.unet, torch.device("cpu"), {"attention": "auto"}))
"""


def test_the_key_is_the_same_in_the_next_process() -> None:
    # What a restart relies on: nothing in the key may depend on the process (hash seeds order sets).
    fingerprints = set()
    for seed in ("1", "2"):
        completed = subprocess.run(
            [sys.executable, "-c", FINGERPRINT],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        fingerprints.add(completed.stdout.split()[-1])
    assert len(fingerprints) == 1


def test_the_aoti_backend_refuses_what_a_package_cannot_do() -> None:
    with pytest.raises(ValueError, match="does not apply to packages"):
        Acceleration(compile=True, backend="aoti", mode="reduce-overhead").validate()
    with pytest.raises(ValueError, match="static sizes only"):
        Acceleration(compile=True, backend="aoti", compile_vae=True).validate()
    Acceleration(compile=True, backend="aoti", mode="max-autotune-no-cudagraphs").validate()
