"""The pipeline's UNet served from AOTInductor packages: one per input size, the eager UNet for every other size.

`PackagedUNet` stands in for `pipe.unet`. Called at a size it holds a package for, it runs the package; at any
other size (or with arguments the package was not made for) it runs the eager UNet, so a job never waits on a
build. Packages are found or made only while the worker warms up (`building()`): the first call at a size loads
`<folder>/<key>.pt2`, or exports and compiles the UNet right there and saves the package first. Making one is a
compile (counted in `graphs_total`, which the compile reporter turns into `compile` events); loading one is not
(each load is kept in `loads` for the worker to report as a `package_load` start-up stage).
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
    ) -> None:
        """`settings`: what else the generated code depends on (the attention kernel), for the packages' key."""
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
        self._runners: dict[Signature, Any] = {}
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
            runner = self._runners.get(_signature(tensors))
            if runner is None and self._building:
                runner = self._load_or_build(tensors)
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

    def _load_or_build(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        path = package_path(self.folder, self.fingerprint, inputs)
        runner = self._load(path) if path.is_file() else None
        if runner is None:
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
            # A package just built that cannot load is a bug to see, not a file to rebuild: it raises.
            runner = load_package(path, self.eager, self.target)
        self._runners[_signature(inputs)] = runner
        return runner

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
