"""The UNet ahead of time: export it at one input size, compile it with AOTInductor to a `.pt2` file, load it back.

A package is a shared library of generated kernels for exactly one set of input shapes, dtypes and strides; loading
it is opening that library, so a restart with packages on disk traces and compiles nothing (torch.compile's caches
still make dynamo trace the whole UNet again, about 30 s on an H200).

The weights stay outside the package (`aot_inductor.package_constants_in_so=False`): the loaded package is pointed
at the eager UNet's own tensors (`load_constants(user_managed=True)`), so each size costs no second copy of the
weights on the card (1.4 G parameters, 2.8 GB in fp16) nor on disk, and a package stays valid for any weights of
the same layout. Its key therefore covers what the generated code depends on: the UNet's config and every tensor's
name, shape, dtype and strides (channels-last weights are other strides), the inputs' shapes, dtypes and strides,
the UNet's code (diffusers' version), torch and CUDA versions, the card's name, the attention kernel chosen at
export and the inductor options. A package whose constants do not all name eager tensors (inductor folded one
into a new constant) is refused at load rather than run on stale values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# The UNet's inputs as I2VGenXLPipeline passes them, in the order the package takes them.
INPUT_NAMES = ("sample", "timestep", "encoder_hidden_states", "fps", "image_latents", "image_embeddings")
PACKAGE_SUFFIX = ".pt2"


class UnloadablePackage(Exception):
    """A package file that cannot serve: unreadable, corrupt, or built for constants the UNet does not have."""


class UNetCall(torch.nn.Module):
    """The UNet's forward with the pipeline's inputs as six positional tensors and the noise prediction returned.

    What gets exported: the pipeline's keyword call (and `return_dict=False`) fixed, so the package's signature is
    six tensors in, one out.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        fps: torch.Tensor,
        image_latents: torch.Tensor,
        image_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Return the UNet's noise prediction."""
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            fps=fps,
            image_latents=image_latents,
            image_embeddings=image_embeddings,
            return_dict=False,
        )[0]


def _layout(tensor: torch.Tensor) -> list[Any]:
    return [list(tensor.shape), str(tensor.dtype), list(tensor.stride()), tensor.device.type]


def unet_fingerprint(unet: torch.nn.Module, device: torch.device, settings: Mapping[str, Any]) -> str:
    """Return a hash of everything but the input size that a package of `unet` depends on (never the weights' values).

    `settings`: the choices baked in at export and compile (attention kernel, inductor options).
    """
    tensors = {name: _layout(t) for name, t in [*unet.named_parameters(), *unet.named_buffers()]}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    described = {
        "unet": type(unet).__name__,
        # Without diffusers' private keys: `_use_default_values` is listed from a set, in another order each process.
        "config": {k: v for k, v in dict(getattr(unet, "config", {})).items() if not k.startswith("_")},
        "tensors": tensors,
        "diffusers": metadata.version("diffusers"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "card": card,
        "settings": dict(settings),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def package_path(cache_dir: Path, fingerprint: str, inputs: Sequence[torch.Tensor]) -> Path:
    """Return where the package for `inputs` lives: the sample's shape for people, a hash of the rest for safety."""
    signature = json.dumps([fingerprint, [_layout(t) for t in inputs]])
    digest = hashlib.sha256(signature.encode()).hexdigest()[:20]
    sample_shape = "x".join(str(n) for n in inputs[0].shape)
    return cache_dir / f"unet-{sample_shape}-{digest}{PACKAGE_SUFFIX}"


@dataclass(frozen=True)
class BuildTiming:
    """How long one package took to make: export (tracing) and AOTInductor's code generation and C++/CUDA build."""

    export_s: float
    compile_s: float
    size_bytes: int


def build_package(
    unet: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    path: Path,
    inductor_options: Mapping[str, Any],
    *,
    constants_in_so: bool = False,
) -> BuildTiming:
    """Export `unet` at `inputs`' exact shapes, compile it with AOTInductor and write the package to `path`.

    Written under a temporary name and renamed: a reader (another worker, the next start) never sees half a file.
    `constants_in_so` builds the weights into the package's library instead (a copy of them per size; the crash
    diagnosis compares the two, bench/aoti_diagnose.py).
    """
    started = time.perf_counter()
    with torch.no_grad():
        # Non-strict: the UNet's Python runs as written on fake tensors (strict mode's bytecode tracing is not
        # needed: its branches depend on shapes, which are static here, not on values).
        exported = torch.export.export(UNetCall(unet), tuple(inputs), strict=False)
    exported_at = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    # AOTInductor insists on a name ending in .pt2.
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=PACKAGE_SUFFIX)
    os.close(descriptor)
    try:
        options = {**inductor_options, "aot_inductor.package_constants_in_so": constants_in_so}
        torch._inductor.aoti_compile_and_package(exported, package_path=partial, inductor_configs=options)
        Path(partial).replace(path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return BuildTiming(
        export_s=exported_at - started,
        compile_s=time.perf_counter() - exported_at,
        size_bytes=path.stat().st_size,
    )


def load_package(path: Path, unet: torch.nn.Module, device: torch.device) -> Any:
    """Load the package at `path` and point it at `unet`'s tensors; raise UnloadablePackage if it cannot serve."""
    named = {f"unet.{name}": t for name, t in [*unet.named_parameters(), *unet.named_buffers()]}
    try:
        # A worker on cuda:N loads onto N; -1 is torch's "the current device" (and what a CPU package takes).
        index = device.index if device.type == "cuda" and device.index is not None else -1
        runner = torch._inductor.aoti_load_package(str(path), device_index=index)
        wanted = runner.get_constant_fqns()
    except RuntimeError as error:  # what torch raises for a missing, truncated or foreign file
        raise UnloadablePackage(f"{path.name}: {str(error).splitlines()[0] if str(error) else error}") from error
    unknown = sorted(set(wanted) - set(named))
    if unknown:
        raise UnloadablePackage(f"{path.name}: constants the UNet does not have: {', '.join(unknown[:3])}")
    # user_managed: the package reads the eager tensors in place (no copy); the eager UNet keeps them alive.
    runner.load_constants({name: named[name] for name in wanted}, check_full_update=True, user_managed=True)
    return runner
