"""Make the pipeline faster than eager PyTorch: torch.compile with its on-disk cache, the attention kernel, layout.

Compiling is paid once per size and process: dynamo traces the module and guards the traced graph on what it
assumed (shapes, dtypes); inductor generates and tunes kernels. Shapes are static: one graph per warm-up size,
compiled before `/ready`, and a size the warm-up did not compile runs eager (the worker never compiles inside a
job unless a guard fails, which it reports). Dynamic shapes stay a setting: one graph for every size, but its
first compile did not finish in 400 s on an H200, where one static size took 147 s.

The inductor, AOTAutograd, Triton and autotune caches under one folder make a restart reuse the kernels (dynamo
still traces, which is most of a warm start); the Mega-Cache file (`torch.compiler.save_cache_artifacts`) holds the
same artifacts in one file that can be copied to another host with the same GPU, torch and Triton. It is unpacked
into the folder once: a restart on a folder that already holds what the file holds does not load it again.

The scope says what is compiled: the whole UNet, one graph per size, or (regional) its repeated blocks one by one,
identical blocks sharing a graph, so that a start traces one small graph per distinct block, not the whole UNet.

`CompileWatch` is the backend handed to `torch.compile`: it counts the graphs the module builds and passes each to
the real compiler, so the worker can tell which stage of which job had to wait for a compile.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from common.sizing import LIMITS, RESOLUTIONS
from generator.regional import compile_blocks, count_blocks

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# aoti: the UNet exported and compiled ahead of time into a package per warm-up size (generator/packaged_unet.py),
# which a restart loads without tracing. eager and aot_eager run dynamo (tracing, guards, recompiles) without
# generating code: tests and debugging.
BACKENDS = ("inductor", "aoti", "eager", "aot_eager")
# A package is plain generated code: the modes that add CUDA graphs are torch.compile's runtime, not the package's.
AOTI_MODES = ("default", "max-autotune-no-cudagraphs")
PACKAGES_FOLDER = "unet-packages"
# whole: the UNet is one graph per size. regional: its repeated blocks are compiled one by one, identical blocks
# sharing a graph (generator/regional.py), so a start traces a small graph per distinct block, not the whole UNet.
SCOPES = ("whole", "regional")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
MEGA_CACHE_FILE = "mega-cache.bin"
MEGA_CACHE_UNPACKED = "mega-cache.unpacked"  # the stamp of the file whose artifacts the folder holds
# Guidance as the warm-up runs it: with guidance the pipeline batches both passes (batch 2), which is what jobs
# send unless they ask for guidance_scale 1.
WARMUP_GUIDANCE = 9.0


@dataclass(frozen=True, order=True)
class Shape:
    """A job's size as the UNet sees it: square resolution in pixels and frame count."""

    resolution: int
    num_frames: int

    def __str__(self) -> str:
        return f"{self.resolution}x{self.resolution}x{self.num_frames}"


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """Parse "512x16,1024x32" (resolution x frames) into shapes inside the API's limits; "" is none."""
    shapes = []
    low, high = LIMITS["num_frames"]
    for item in filter(None, (part.strip() for part in text.split(","))):
        resolution, _, frames = item.partition("x")
        try:
            shape = Shape(int(resolution), int(frames))
        except ValueError:
            raise ValueError(f"GENERATOR_COMPILE_WARMUP: {item!r} is not RESOLUTIONxFRAMES, e.g. 512x16") from None
        if shape.resolution not in RESOLUTIONS or not low <= shape.num_frames <= high:
            raise ValueError(
                f"GENERATOR_COMPILE_WARMUP: {item!r} is outside the API's sizes "
                f"(resolution {', '.join(map(str, RESOLUTIONS))}; frames {low:g}-{high:g})"
            )
        shapes.append(shape)
    return tuple(shapes)


# The form's default size (512x16) and the largest resolution at the same frames: each static size costs its own
# compile at start (about 2.5 min cold on an H200, less from the cache), so the default list is short; operators
# add the sizes their users ask for.
DEFAULT_WARMUP = "512x16,1024x16"


@dataclass(frozen=True)
class Acceleration:
    """How the pipeline runs: compiled or eager, which compiler mode, cache folder and warm-up, kernels, layout."""

    compile: bool = False
    mode: str = "default"
    backend: str = "inductor"
    scope: str = "whole"
    dynamic: bool = False
    cache_dir: Path | None = None
    warmup: tuple[Shape, ...] = parse_shapes(DEFAULT_WARMUP)
    compile_vae: bool = False
    attention: str = "auto"
    channels_last: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the setting to change."""
        if self.mode not in MODES:
            raise ValueError(f"GENERATOR_COMPILE_MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"GENERATOR_COMPILE_BACKEND must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"GENERATOR_COMPILE_SCOPE must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.backend == "aoti":
            if self.scope != "whole":
                raise ValueError("GENERATOR_COMPILE_SCOPE regional needs torch.compile (aoti packages the whole UNet)")
            if self.mode not in AOTI_MODES:
                raise ValueError(f"GENERATOR_COMPILE_MODE {self.mode!r} does not apply to packages (aoti backend)")
            if self.dynamic or self.compile_vae:
                raise ValueError("the aoti backend packages the UNet at static sizes only (no dynamic, no VAE)")
        elif self.backend != "inductor" and self.mode != "default":
            raise ValueError(f"GENERATOR_COMPILE_MODE {self.mode!r} needs the inductor backend")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"GENERATOR_ATTENTION must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}"
            )

    def packages_folder(self) -> Path:
        """Return the folder of the UNet's AOTInductor packages (aoti backend): inside the compile cache."""
        return (self.cache_dir or Path(tempfile.gettempdir()) / "i2v-compile-cache") / PACKAGES_FOLDER

    def inductor_options(self) -> dict[str, Any]:
        """Return the inductor options the compile mode stands for (what AOTInductor builds a package with)."""
        return dict(torch._inductor.list_mode_options(self.mode)) if self.mode != "default" else {}

    def describe(self) -> dict[str, Any]:
        """Return the settings as plain values, for /health and the start-up log."""
        return {
            "compile": self.compile,
            "mode": self.mode,
            "backend": self.backend,
            "scope": self.scope,
            "dynamic": self.dynamic,
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "warmup": [str(shape) for shape in self.warmup],
            "compile_vae": self.compile_vae,
            "attention": self.attention,
            "channels_last": self.channels_last,
        }


class CompiledModule(Protocol):
    """A module compiled ahead of its calls (a torch.compile watch, the UNet's packages): what is reported of it."""

    module: str  # its name in events and i2v_compiles_total
    graphs_total: int  # graphs (or packages) built so far: each one is a compile
    eager: Any  # the module uncompiled, which the worker runs at sizes not compiled


class CompileWatch:
    """A torch.compile backend that counts the graphs it builds and hands each to the real compiler.

    One per compiled module: `graphs_total` grows by one for every graph dynamo builds (the first compile, a
    recompile after a guard failed, or each piece of a graph break), and only while that module compiles.
    """

    def __init__(self, module: str, backend: str = "inductor", mode: str = "default", dynamic: bool = False) -> None:
        self.module = module
        self.graphs_total = 0
        self.eager: torch.nn.Module | None = None
        if backend == "inductor":
            # What torch.compile(mode=...) itself builds: the mode's inductor options (and the CUPTI settings
            # CUDA graphs need). A backend callable cannot be combined with `mode=`, so it is built here.
            self._inner: Callable[..., Any] = torch._TorchCompileInductorWrapper(mode, None, dynamic)
        else:
            self._inner = torch._dynamo.lookup_backend(backend)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """Count the graph and compile it."""
        self.graphs_total += 1
        return self._inner(graph, example_inputs)

    def __getattr__(self, name: str) -> Any:
        # Dynamo asks the backend for `compiler_name`, `get_compiler_config` and `reset` when it has them.
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def compile(self, module: torch.nn.Module, dynamic: bool, sizes: int = 1) -> torch.nn.Module:
        """Return `module` compiled through this watch (the original stays in `eager`).

        `sizes`: how many static graphs it will hold (one per warm-up size).
        """
        self.eager = module
        self._prepare(dynamic, graphs_per_code=sizes)
        # dynamic=True marks every input dimension dynamic from the first trace (one graph for every size);
        # False keeps every shape static, a graph per size, and never turns dimensions dynamic on a second size.
        return torch.compile(module, backend=self, dynamic=dynamic)

    def compile_blocks(
        self, module: torch.nn.Module, block_classes: Collection[str], dynamic: bool, sizes: int = 1
    ) -> torch.nn.Module:
        """Return a copy of `module` with its blocks of `block_classes` compiled through this watch (regional).

        The original, uncompiled, stays in `eager` and shares its weights with the copy. Every block of a class
        shares that class's graphs: one per distinct shape the class meets, at each of `sizes` static sizes.
        """
        self.eager = module
        # At worst every instance of a class meets shapes of its own: that many graphs per size on its forward.
        most_instances = max(count_blocks(module, block_classes).values(), default=1)
        self._prepare(dynamic, graphs_per_code=most_instances * sizes)
        return compile_blocks(module, block_classes, lambda block: torch.compile(block, backend=self, dynamic=dynamic))

    @staticmethod
    def _prepare(dynamic: bool, graphs_per_code: int) -> None:
        """Set dynamo's process-wide limits so that the graphs a module needs are never refused."""
        import torch._dynamo.config
        import torch.fx.experimental._config

        if dynamic:
            # Duck sizing gives equal dimensions one symbol (frames == latent height at 256p and 32 frames), and
            # the graph then needs them equal: a later size where they differ would recompile.
            torch.fx.experimental._config.use_duck_shape = False
        else:
            # Dynamo keeps this many graphs per code object (a module class's forward) and past it runs that code
            # eager silently: each static size is a graph, and under regional each distinct block at each size.
            wanted = graphs_per_code + 4
            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, wanted)
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, wanted)


def prepare_cache(cache_dir: Path) -> int:
    """Point every torch.compile cache at `cache_dir` and load its Mega-Cache file; return artifacts loaded.

    Must run before the first compile: inductor reads the folder from the environment when it first needs it.
    """
    import torch._functorch.config
    import torch._inductor.config

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    os.environ["TRITON_CACHE_DIR"] = str((cache_dir / "triton").resolve())
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    mega_cache = cache_dir / MEGA_CACHE_FILE
    if not mega_cache.is_file():
        return 0
    unpacked = cache_dir / MEGA_CACHE_UNPACKED
    if unpacked.is_file() and unpacked.read_text() == _stamp(mega_cache):
        log.info("compile cache %s already holds %s's artifacts", cache_dir, MEGA_CACHE_FILE)
        return 0
    # torch itself refuses a file it cannot read (another torch version) with a warning and None.
    try:
        info = torch.compiler.load_cache_artifacts(mega_cache.read_bytes())
    except OSError as error:  # unreadable file or a full disk: the on-disk caches still work, so go on
        log.warning("ignoring the compile Mega-Cache %s: %s", mega_cache, error)
        return 0
    loaded = sum(len(v) for v in info.artifacts.values()) if info is not None else 0
    log.info("loaded %d compile artifacts from %s", loaded, mega_cache)
    if info is not None:
        _mark_unpacked(cache_dir)
    return loaded


def save_cache(cache_dir: Path) -> int:
    """Write the artifacts this process compiled or loaded to the Mega-Cache file; return its size in bytes."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, _ = saved
    # A file of its own per writer: workers on several GPUs save at about the same time.
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=f"{MEGA_CACHE_FILE}.", delete=False) as partial:
        partial.write(data)
    Path(partial.name).replace(cache_dir / MEGA_CACHE_FILE)
    _mark_unpacked(cache_dir)  # written from this folder's caches, which hold it already
    return len(data)


def _stamp(path: Path) -> str:
    """Return what tells one Mega-Cache file from another copied or saved over it: its size and change time."""
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _mark_unpacked(cache_dir: Path) -> None:
    """Note that the folder's caches hold the Mega-Cache file's artifacts as it is now."""
    try:
        (cache_dir / MEGA_CACHE_UNPACKED).write_text(_stamp(cache_dir / MEGA_CACHE_FILE))
    except OSError as error:  # the next start loads the file again: slower, never wrong
        log.warning("could not mark the compile Mega-Cache as unpacked: %s", error)


def use_attention(name: str) -> None:
    """Make `name` scaled_dot_product_attention's first choice for the whole process; the others stay behind it.

    The flags are process-wide (one setting serves every worker thread); kernels are chosen when a graph is
    traced, so this runs before compiling. The public `sdpa_kernel` context restores the flags when it exits,
    hence the function underneath it.
    """
    if name == "auto":
        return
    from torch.nn.attention import SDPBackend, _sdpa_kernel

    by_name = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    first = by_name[name]
    # The math kernel last: it materialises the attention matrix, which at 1024p does not fit any card.
    _sdpa_kernel([first, *(b for b in by_name.values() if b != first)], set_priority=True)


def to_channels_last(module: torch.nn.Module) -> None:
    """Store every 2-D convolution's weight channels-last (NHWC), which cuDNN's fastest kernels use.

    Only Conv2d: the UNet's temporal Conv3d weights are 5-D, which channels_last cannot describe.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.to(memory_format=torch.channels_last)
