"""The pipeline's UNet served from AOTInductor packages: one per input size, the eager UNet for every other size.

`PackagedUNet` stands in for `pipe.unet`. Called at a size it holds a package for, it runs the package; at any
other size (or with arguments the package was not made for) it runs the eager UNet, so a job never waits on a
build. Packages are found or made only while the worker warms up (`building()`): the first call at a size loads
`<folder>/<key>.pt2`, or exports and compiles the UNet right there and saves the package first. Making one is a
compile (counted in `graphs_total`, which the compile reporter turns into `compile` events); loading one is not
(each load is kept in `loads` for the worker to report as a `package_load` start-up stage).

A package's load and first call run inside a crash marker (generator/package_guard.py): a package that killed a
process is quarantined by the next one, which serves that size eager, as it does a package that raised on its
first call and one that another live process is still loading (each kept in `skips`, for the worker to report).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generator.package_guard import PackageGuard, crashed_path, marker_path
from generator.unet_package import (
    BuildTiming,
    UnloadablePackage,
    build_package,
    load_package,
    package_path,
    unet_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageLoad:
    """One package loaded from disk: which file, when, and how long opening it and binding the weights took."""

    path: Path
    started_at: float
    duration_s: float


@dataclass(frozen=True)
class PackageSkip:
    """A size whose package this process does not serve (the eager UNet runs it), and why.

    `reason`: "crashed" (it killed an earlier process: quarantined now), "failed" (its first call raised:
    quarantined now), "quarantined" (found so, from an earlier crash) or "busy" (another live process was still
    loading it; eager until this process restarts).
    """

    path: Path
    sample_shape: tuple[int, ...]
    reason: str
    message: str


# Reasons that mean a quarantined package, and of those the ones this process found out (each a crash counted).
QUARANTINED = ("crashed", "failed", "quarantined")
FOUND_NOW = ("crashed", "failed")
# How long a worker waits for another process's first load of a package (seconds on an H200) before it serves
# that size eager for now.
MARKER_WAIT_S = 120.0
WHAT_TO_DO = (
    "the size runs the eager UNet; to compile it anyway set GENERATOR_COMPILE_BACKEND=inductor (torch.compile), "
    "and delete the .crashed file to let the package be built again (after a driver or torch fix)"
)

Signature = tuple[tuple[Any, ...], ...]


def _signature(inputs: tuple[torch.Tensor, ...]) -> Signature:
    return tuple((tuple(t.shape), t.dtype, t.stride(), t.device) for t in inputs)


class PackagedUNet(torch.nn.Module):
    """Run AOTInductor packages of the UNet at the sizes it has them for, the eager UNet otherwise."""

    def __init__(
        self,
        eager: torch.nn.Module,
        folder: Path,
        device: torch.device,
        inductor_options: Mapping[str, Any],
        settings: Mapping[str, Any],
        guard: PackageGuard | None = None,
    ) -> None:
        """`settings`: what else the generated code depends on (the attention kernel), for the packages' key.

        `guard`: the crash markers (default: wait up to MARKER_WAIT_S for another process's).
        """
        super().__init__()
        self.eager = eager
        self.module = "unet"  # the name the compile reporter and i2v_compiles_total give it
        self.folder, self.target = folder, device
        self.inductor_options = dict(inductor_options)
        self.fingerprint = unet_fingerprint(eager, device, {**settings, "inductor": self.inductor_options})
        self.graphs_total = 0  # packages this process exported and compiled
        self.package_calls_total = 0  # calls a package served (the rest ran the eager UNet)
        self.loads: list[PackageLoad] = []
        self.builds: list[BuildTiming] = []  # for benchmarks: the worker reports builds through graphs_total
        self.skips: list[PackageSkip] = []
        self.guard = guard or PackageGuard(MARKER_WAIT_S)
        self._runners: dict[Signature, Any] = {}
        self._skipped: set[Signature] = set()  # tried once in this process: never again
        self._building = False

    def __getattr__(self, name: str) -> Any:
        # The pipeline reads `config`, `dtype` and `device` off its UNet: they are the eager one's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            eager = self.__dict__.get("_modules", {}).get("eager")
            if eager is None:
                raise
            return getattr(eager, name)

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Within this block, a call at a size without a package loads or makes one (the warm-up's calls)."""
        self._building = True
        try:
            yield
        finally:
            self._building = False

    def packaged_sizes(self) -> int:
        """Return how many input sizes run a package."""
        return len(self._runners)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        fps: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Return the UNet's output as the eager UNet would, from a package when one fits these inputs."""
        inputs = (sample, timestep, encoder_hidden_states, fps, image_latents, image_embeddings)
        runner = None
        # Packages are made for the pipeline's own call: tensors throughout, a tuple back, no attention kwargs.
        if not return_dict and cross_attention_kwargs is None and all(isinstance(t, torch.Tensor) for t in inputs):
            tensors: tuple[torch.Tensor, ...] = inputs
            signature = _signature(tensors)
            runner = self._runners.get(signature)
            if runner is None and self._building and signature not in self._skipped:
                output = self._first_call(signature, tensors)
                if output is not None:
                    return (output,)
        if runner is None:
            return self.eager(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                fps=fps,
                image_latents=image_latents,
                image_embeddings=image_embeddings,
                cross_attention_kwargs=cross_attention_kwargs,
                return_dict=return_dict,
            )
        self.package_calls_total += 1
        return (runner(*inputs),)

    def _first_call(self, signature: Signature, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """Load or build the package for `inputs` and call it once, inside its crash marker; None: run eager."""
        path = package_path(self.folder, self.fingerprint, inputs)
        if self.guard.is_quarantined(path):
            self._skip(signature, path, "quarantined", f"it crashed a process before: {crashed_path(path)}")
            return None
        built = not path.is_file()
        if built:
            # Built outside the marker: a build is minutes of work that a restart may cut short, and no package
            # existed to blame; the marker covers what a package does to its process, its load and first call.
            self._build(inputs, path)
        claim = self.guard.claim(path)
        if claim.outcome == "crashed":
            who = claim.holder.describe() if claim.holder else "a process whose marker cannot be read"
            detail = (
                f"it killed {who} (its marker {marker_path(path).name} stayed): quarantined as {crashed_path(path)}"
            )
            self._skip(signature, path, "crashed", detail)
            return None
        if claim.outcome == "busy":
            who = claim.holder.describe() if claim.holder else "another process"
            detail = f"{who} still loads it after {self.guard.wait_s:.0f} s; it runs eager until this process restarts"
            self._skip(signature, path, "busy", detail)
            return None
        try:
            # A package just built that cannot load is a bug to see, not a file to rebuild: it raises.
            runner = load_package(path, self.eager, self.target) if built else self._load_or_build(inputs, path)
        except BaseException:
            self.guard.release(path)  # an exception is no crash: the marker goes with it
            raise
        try:
            output = runner(*inputs)
            if self.target.type == "cuda":
                torch.cuda.synchronize(self.target)  # a fault in its kernels shows here, while the marker stands
        except torch.OutOfMemoryError:
            self.guard.release(path)  # the card's state, not the package's fault
            raise
        except RuntimeError as error:  # what the package's runner raises
            self.guard.quarantine(path)
            detail = f"its first call raised {str(error).splitlines()[0] if str(error) else error!r}"
            self._skip(signature, path, "failed", f"{detail}: quarantined as {crashed_path(path)}")
            return None
        self.guard.release(path)
        self._runners[signature] = runner
        self.package_calls_total += 1
        return output

    def _skip(self, signature: Signature, path: Path, reason: str, detail: str) -> None:
        self._skipped.add(signature)
        shape = signature[0][0]  # the sample's
        message = f"UNet package for sample {shape} not served: {detail}"
        if reason == "busy":
            log.warning("%s", message)
        else:
            message = f"{message}; {WHAT_TO_DO}"
            log.error("%s", message)
        self.skips.append(PackageSkip(path, shape, reason, message))

    def _load_or_build(self, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
        runner = self._load(path) if path.is_file() else None
        if runner is None:
            self._build(inputs, path)
            runner = load_package(path, self.eager, self.target)
        return runner

    def _build(self, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
        timing = build_package(self.eager, inputs, path, self.inductor_options)
        self.graphs_total += 1
        self.builds.append(timing)
        log.info(
            "UNet package built for sample %s in %.1f s (export %.1f s, AOTInductor %.1f s): %s, %d bytes",
            tuple(inputs[0].shape),
            timing.export_s + timing.compile_s,
            timing.export_s,
            timing.compile_s,
            path,
            timing.size_bytes,
        )

    def _load(self, path: Path) -> Any:
        started_at, started = time.time(), time.perf_counter()
        try:
            runner = load_package(path, self.eager, self.target)
        except UnloadablePackage as error:
            # Never a failed start: the file goes and the package is made anew.
            log.warning("UNet package unusable, building it anew: %s", error)
            path.unlink(missing_ok=True)
            return None
        load = PackageLoad(path, started_at, time.perf_counter() - started)
        self.loads.append(load)
        log.info("UNet package loaded in %.2f s: %s", load.duration_s, path)
        return runner
