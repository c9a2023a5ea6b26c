"""The UNet packaged ahead of time (aoti backend): built once, loaded on a restart without a compile, never trusted
blindly.

AOTInductor for real: a package of the tiny pipeline's UNet is a C++ build of about a minute on two CPU cores, so
the worker-level tests share one (the cold start's: a second worker on the same folder loads it, the agreement
with eager and the weights bound at load use it). Rebuilds (another fingerprint, a corrupt file) are shown on a toy
module with the UNet's call signature, whose package builds in about ten seconds through the same code; so is the
crash quarantine (markers written here as a crashed process would have left them, beside copies of real packages).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from generator import packaged_unet
from generator.acceleration import PACKAGES_FOLDER, Acceleration, Shape
from generator.package_guard import Holder, PackageGuard, crashed_path, marker_path
from generator.packaged_unet import PackagedUNet
from generator.unet_package import package_path, unet_fingerprint
from generator.worker import acceleration_view
from tests.generator.test_compile import CompiledWorker

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = Shape(64, 4)  # the smallest latents (8x8, 4 frames): the package's size does not change its build time


def aoti(cache_dir: Path) -> Acceleration:
    """Return the settings of a worker that packages the UNet at one size in `cache_dir`."""
    return Acceleration(compile=True, backend="aoti", cache_dir=cache_dir, warmup=(PACKAGED,))


@pytest.fixture(scope="module", autouse=True)
def quick_cpu_builds() -> Iterator[None]:
    """Build packages without vectorised kernels, at -O0 (`debug_compile`: the kernels' only switch): same results."""
    quick = {"cpp.simdlen": 0, "aot_inductor.compile_wrapper_opt_level": "O0", "aot_inductor.debug_compile": True}
    with torch._inductor.config.patch(quick):
        yield


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aoti-cache")


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[CompiledWorker]:
    with CompiledWorker(tmp_path_factory.mktemp("cold"), aoti(cache_dir)).running() as handle:
        yield handle


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, cold: CompiledWorker) -> Iterator[CompiledWorker]:
    with CompiledWorker(tmp_path_factory.mktemp("warm"), aoti(cache_dir)).running() as handle:
        yield handle


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
    (package,) = (cache_dir / PACKAGES_FOLDER).glob("unet-2x4x4x8x8-*.pt2")
    # Its first call returned: no crash marker stays, nothing is quarantined.
    assert sorted(p.name for p in package.parent.iterdir()) == [package.name]
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


def holder(**changes: Any) -> Holder:
    """Return a marker's holder: this process as it is now, with `changes`."""
    return dataclasses.replace(Holder.this_process(), **changes)


def leave_marker(package: Path, who: Holder, **more: Any) -> None:
    """Write `package`'s crash marker as the process `who` would have left it (`more`: a later version's fields)."""
    marker_path(package).write_text(json.dumps({**dataclasses.asdict(who), **more}))


@pytest.fixture(scope="module")
def after_a_crash(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, cold: CompiledWorker
) -> Iterator[CompiledWorker]:
    """A worker started where the last one died loading the package: its marker left beside it (same pid: the
    container's pid 1 of the run before, which had another run id)."""
    copy = tmp_path_factory.mktemp("crashed") / "cache"
    shutil.copytree(cache_dir, copy)
    (package,) = (copy / PACKAGES_FOLDER).glob("*.pt2")
    leave_marker(package, holder(run_id="an-earlier-run"))
    with CompiledWorker(tmp_path_factory.mktemp("after-crash"), aoti(copy)).running() as handle:
        yield handle


@pytest.mark.slow
def test_a_package_that_killed_the_last_process_is_quarantined_and_its_size_runs_eager(
    after_a_crash: CompiledWorker,
) -> None:
    worker, registry = after_a_crash.worker, after_a_crash.metrics.registry
    folder = worker.acceleration.packages_folder()
    (crashed,) = folder.glob("*.pt2.crashed")
    assert sorted(p.name for p in folder.iterdir()) == [crashed.name]  # no package to load, no marker
    assert after_a_crash.counter("warmup") == 0  # nor built again
    assert startup_stages(after_a_crash, "package_load") == []
    assert registry.get_sample_value("i2v_package_crashes_total", {"module": "unet"}) == 1
    assert registry.get_sample_value("i2v_packages_quarantined", {"module": "unet"}) == 1
    view = acceleration_view(worker.acceleration, [worker])
    assert view is not None
    (skipped,) = view["packages_skipped"]
    assert (skipped["size"], skipped["reason"]) == ("64x64x4", "crashed")
    assert str(crashed) in skipped["message"]
    assert "GENERATOR_COMPILE_BACKEND=inductor" in skipped["message"]
    unet = packaged(after_a_crash)

    job = after_a_crash.run(64, 4)

    assert job.state == "succeeded", job.error
    assert unet.package_calls_total == 0
    assert "its package for 64x64x4 crashed a process and is quarantined" in " ".join(job.notes)


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


def toy_packaged(folder: Path, attention: str = "auto", guard: PackageGuard | None = None) -> PackagedUNet:
    """Return a toy UNet served from packages in `folder`, after its warm-up call (which loads or builds one)."""
    torch.manual_seed(0)
    unet = PackagedUNet(ToyUNet(), folder, torch.device("cpu"), {}, {"attention": attention}, guard)
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
    assert not marker_path(load.path).exists()  # its first call returned


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


def exited_pid() -> int:
    """Return the pid of a process that has exited."""
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def parent() -> psutil.Process:
    return psutil.Process(os.getppid())


@pytest.mark.parametrize(
    "who",
    [
        lambda: holder(pid=exited_pid()),
        lambda: holder(run_id="an-earlier-run"),
        lambda: holder(pid=parent().pid, process_started_at=parent().create_time() - 3600),
        lambda: holder(host="another-host", since=time.time() - 3600),
    ],
    ids=["an-exited-process", "this-pid-in-an-earlier-run", "a-pid-now-reused", "another-host-an-hour-ago"],
)
def test_a_package_whose_marker_outlived_its_process_is_quarantined_and_never_loaded_or_built(
    tmp_path: Path, toy_folder: Path, caplog: pytest.LogCaptureFixture, who: Any
) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")
    (package,) = (tmp_path / "packages").glob("*.pt2")
    leave_marker(package, who())

    with caplog.at_level(logging.ERROR, logger="generator.packaged_unet"):
        unet = toy_packaged(tmp_path / "packages")

    assert (unet.graphs_total, unet.loads, unet.package_calls_total) == (0, [], 0)
    assert sorted(p.name for p in package.parent.iterdir()) == [crashed_path(package).name]
    assert [skip.reason for skip in unet.skips] == ["crashed"]
    assert "killed pid" in caplog.text
    assert "GENERATOR_COMPILE_BACKEND=inductor" in caplog.text
    assert torch.equal(toy_call(unet), toy_call(unet.eager))
    again = toy_packaged(tmp_path / "packages")  # the next process: quarantined, still neither loaded nor built
    assert (again.graphs_total, again.loads, [skip.reason for skip in again.skips]) == (0, [], ["quarantined"])


@pytest.mark.parametrize(
    "who",
    [lambda: holder(pid=parent().pid, process_started_at=parent().create_time()), lambda: holder(host="another-host")],
    ids=["another-live-process", "another-host-just-now"],
)
def test_a_marker_of_a_live_process_is_left_alone_and_the_size_runs_eager_for_now(
    tmp_path: Path, toy_folder: Path, who: Any
) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")
    (package,) = (tmp_path / "packages").glob("*.pt2")
    leave_marker(package, who(), written_by="a later version")  # its own fields too: still read
    marker = marker_path(package).read_text()

    unet = toy_packaged(tmp_path / "packages", guard=PackageGuard(wait_s=0))

    assert (unet.graphs_total, unet.loads, [skip.reason for skip in unet.skips]) == (0, [], ["busy"])
    assert package.is_file()
    assert marker_path(package).read_text() == marker
    assert not crashed_path(package).exists()


def test_a_process_waiting_on_a_live_marker_loads_the_package_once_it_goes(tmp_path: Path, toy_folder: Path) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")
    (package,) = (tmp_path / "packages").glob("*.pt2")
    leave_marker(package, holder(pid=parent().pid, process_started_at=parent().create_time()))
    pauses: list[float] = []

    def other_process_done(seconds: float) -> None:
        pauses.append(seconds)
        marker_path(package).unlink()  # its first call returned

    unet = toy_packaged(tmp_path / "packages", guard=PackageGuard(wait_s=60, poll_s=0.5, pause=other_process_done))

    assert pauses == [0.5]
    assert (unet.graphs_total, len(unet.loads), unet.skips) == (0, 1, [])
    assert unet.package_calls_total == 1
    assert not marker_path(package).exists()


def test_a_package_whose_first_call_raises_is_quarantined_and_the_call_runs_eager(
    tmp_path: Path, toy_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(toy_folder, tmp_path / "packages")
    (package,) = (tmp_path / "packages").glob("*.pt2")

    def failing_runner(*inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    # A runner that raises on its first call cannot be built on a CPU: the loader hands one out instead.
    monkeypatch.setattr(packaged_unet, "load_package", lambda *_: failing_runner)
    torch.manual_seed(0)
    unet = PackagedUNet(ToyUNet(), tmp_path / "packages", torch.device("cpu"), {}, {"attention": "auto"})
    with unet.building():
        output = toy_call(unet)

    assert torch.equal(output, toy_call(unet.eager))
    (skip,) = unet.skips
    assert skip.reason == "failed"
    assert "an illegal memory access" in skip.message
    assert sorted(p.name for p in package.parent.iterdir()) == [crashed_path(package).name]


GUARDED_EXIT = """
import os, signal, sys
from pathlib import Path
from generator.package_guard import PackageGuard

assert PackageGuard(0).claim(Path(sys.argv[1])).outcome == "held"
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("ending", "marker_stays"), [("clean", False), ("killed", True)])
def test_only_a_process_that_dies_holding_a_marker_leaves_it(tmp_path: Path, ending: str, marker_stays: bool) -> None:
    package = tmp_path / "unet-2x4x4x8x8-0.pt2"
    package.write_bytes(b"a package")

    subprocess.run([sys.executable, "-c", GUARDED_EXIT, str(package), ending], cwd=ROOT, timeout=120, check=False)

    assert marker_path(package).exists() == marker_stays
    claim = PackageGuard(wait_s=0).claim(package)
    assert claim.outcome == ("crashed" if marker_stays else "held")
    assert package.exists() != marker_stays
    if marker_stays:
        assert claim.holder is not None
        assert (claim.holder.host, claim.holder.torch) == (socket.gethostname(), torch.__version__)


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
