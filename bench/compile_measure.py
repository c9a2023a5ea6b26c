"""One process of bench/compile_gpu.py: load the pipeline, measure in priority order, one JSON line per figure.

Every record is flushed at once (the parent kills this process at its deadline; what it wrote stays). The UNet is
timed on the inputs the pipeline itself gave it (captured by a hook on one eager step), so eager and compiled see
exactly what a job's denoising step sends. Compiling goes through the generator's own `accelerate` with the
generator's static-shape settings (the whole UNet, or its repeated blocks with --scope regional), and the caches
through its own `prepare_cache`/`save_cache`. --skip leaves tasks out.

  cold   (a) eager step at the main size with its FLOPs (f), (b) the static-shape compile there and the compiled
         step, (c) seeded latents after a few steps, eager twice (run-to-run noise) and compiled, compared; the
         Mega-Cache file written.
  warm   (d) a new process on the cache the cold one left: imports, model load, the first compiled call (the
         compile, now from the caches), with the caches' hit and miss counters; then SDPA kernels on eager at the
         main size; then (e) the large size eager (with its FLOPs), then compiled.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compile_gpu import TASKS

PROMPT = "a sailing boat on a calm sea at sunset"
# Latents after a few fp16 steps: the compiled graph fuses and reorders floating-point work, so they differ from
# eager by rounding, which the steps carry forward. Judged against eager's own run-to-run noise and this bound on
# the largest difference relative to the latents' largest value.
LATENTS_RELATIVE_TOLERANCE = 2e-2
UNET_RELATIVE_TOLERANCE = 1e-2


class Recorder:
    """Append one JSON line per record, flushed at once: the parent may kill this process at any moment."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def __call__(self, kind: str, **fields: Any) -> None:
        """Write one record."""
        self._file.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
        self._file.flush()


def child_main(args: argparse.Namespace) -> int:
    """Run one phase (cold or warm), recording as it goes; a failed task is recorded and the next one runs."""
    # A segfault in compiled code ends the process without an exception: this leaves its Python stack on stderr.
    faulthandler.enable(all_threads=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    record = Recorder(args.records)
    import torch

    from generator.acceleration import prepare_cache

    imported_at = time.time()
    loaded = prepare_cache(Path(args.cache_dir))
    cache_load_s = time.time() - imported_at
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    bench = Bench(args, record, device)
    try:
        bench.load(imported_at, loaded, cache_load_s)
    except Exception as error:  # noqa: BLE001  (nothing runs without the model: the record says why)
        record("error", task="load", message=f"{error.__class__.__name__}: {error}", trace=traceback.format_exc())
        return 1
    everything: dict[str, Callable[[], None]] = {
        "eager": lambda: bench.eager(args.size, "eager"),
        "compiled": lambda: bench.compiled(args.size, "compiled"),
        "agreement": lambda: bench.agreement(args.size),
        "mega_cache": bench.save_mega_cache,
        "warm_start": lambda: bench.compiled(args.size, "warm_start"),
        "sdpa": lambda: bench.sdpa(args.size),
        "large_eager": lambda: bench.eager(args.large_size, "large_eager"),
        "large_compiled": lambda: bench.compiled(args.large_size, "large_compiled"),
    }
    tasks = [(name, everything[name]) for name in TASKS[args.child] if name not in args.skip]
    for name, task in tasks:
        try:
            task()
        except Exception as error:  # noqa: BLE001  (the record says why this figure is missing; the next runs)
            record("error", task=name, message=f"{error.__class__.__name__}: {str(error)[:2000]}")
            if name in ("compiled", "warm_start"):
                break  # every later task needs the compiled UNet
        bench.release()
    record("done", took_s=round(time.time() - args.spawned_at, 1))
    return 0


class Bench:
    """One process's pipeline, its eager and compiled UNet, and the inputs captured per size."""

    def __init__(self, args: argparse.Namespace, record: Recorder, device: Any) -> None:
        import torch

        self.torch = torch
        self.args, self.record, self.device = args, record, device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.pipe: Any = None
        self.eager_unet: Any = None
        self.compiled_unet: Any = None
        self.watch: Any = None
        self.inputs: dict[tuple[int, int], dict[str, Any]] = {}
        self.eager_step_s: dict[tuple[int, int], float] = {}
        self.eager_output: dict[tuple[int, int], Any] = {}
        self.capture_s: dict[tuple[int, int], float] = {}

    def sync(self) -> None:
        """Wait for the GPU's queued work, so a clock read measures it."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Give cached GPU memory back between tasks."""
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def load(self, imported_at: float, mega_cache_artifacts: int, cache_load_s: float) -> None:
        """Build the pipeline as the generator does and record the device and the time so far."""
        importing = time.time()
        from generator.pipeline import load_pipeline  # diffusers and transformers: seconds of their own

        started = time.time()
        self.pipe = load_pipeline(self.args.model, self.device, self.dtype, Path(tempfile.mkdtemp(prefix="i2v-cb-")))
        self.sync()
        self.eager_unet = self.pipe.unet
        loaded = time.time()
        device = self.device_info()
        self.record(
            "load",
            phase=self.args.child,
            imports_s=round(imported_at - self.args.spawned_at, 2),
            pipeline_imports_s=round(started - importing, 2),
            model_load_s=round(loaded - started, 2),
            mega_cache_artifacts_loaded=mega_cache_artifacts,
            cache_load_s=round(cache_load_s, 2),
            # Its imports (triton's among them) come before the warm start's compile, in the bench's seconds.
            device_info_s=round(time.time() - loaded, 2),
            device=device,
        )

    def device_info(self) -> dict[str, Any]:
        """Describe the card and the software that compiles for it."""
        torch = self.torch
        info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
        for name in ("diffusers", "transformers", "triton"):
            try:
                info[name] = __import__(name).__version__
            except ImportError:  # no Triton beside a CPU-only torch
                info[name] = None
        if self.device.type == "cuda":
            properties = torch.cuda.get_device_properties(self.device)
            info.update(
                name=torch.cuda.get_device_name(self.device),
                capability=list(torch.cuda.get_device_capability(self.device)),
                memory_bytes=properties.total_memory,
                multiprocessors=properties.multi_processor_count,
            )
        else:
            info["name"] = "cpu"
        return info

    # --- inputs

    def capture(self, size: tuple[int, int]) -> dict[str, Any]:
        """Run one eager guided step at `size` and keep the UNet's inputs (batch 2: both guidance passes)."""
        if size in self.inputs:
            return self.inputs[size]
        from PIL import Image

        captured: dict[str, Any] = {}

        def keep(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.update(args=args, kwargs=kwargs)

        resolution = size[0]
        self.pipe.unet = self.eager_unet
        hook = self.eager_unet.register_forward_pre_hook(keep, with_kwargs=True)
        started = time.perf_counter()
        try:
            self.run_pipeline(size, steps=1, seed=0, image=Image.new("RGB", (resolution, resolution), (90, 140, 200)))
        finally:
            hook.remove()
        self.capture_s[size] = time.perf_counter() - started
        self.inputs[size] = captured
        return captured

    def run_pipeline(self, size: tuple[int, int], steps: int, seed: int, image: Any = None) -> Any:
        """Run the pipeline to latents (no decode) with guidance, as a job's denoising runs; return the latents."""
        from PIL import Image

        resolution, frames = size
        # The global generator too: the pipeline samples the image's latents from it.
        self.torch.manual_seed(seed)
        result = self.pipe(
            prompt=PROMPT,
            image=image or Image.new("RGB", (resolution, resolution), (90, 140, 200)),
            height=resolution,
            width=resolution,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=9.0,
            target_fps=8,
            generator=self.torch.Generator(device=self.device).manual_seed(seed),
            output_type="latent",
        )
        self.sync()
        return result.frames

    def call(self, module: Any, inputs: dict[str, Any]) -> Any:
        """Call the UNet once on captured inputs and return its noise prediction."""
        with self.torch.no_grad():
            return module(*inputs["args"], **inputs["kwargs"])[0]

    def time_calls(self, module: Any, inputs: dict[str, Any], warmup: int, repeats: int) -> dict[str, Any]:
        """Call `warmup` times untimed, then time `repeats` calls one by one; return their spread."""
        for _ in range(warmup):
            self.call(module, inputs)
        samples = []
        for _ in range(repeats):
            self.sync()
            started = time.perf_counter()
            self.call(module, inputs)
            self.sync()
            samples.append(time.perf_counter() - started)
        return spread(samples)

    def count_flop(self, inputs: dict[str, Any]) -> int:
        """Count one eager step's FLOPs (matmuls, convolutions, attention) with torch's FLOP counter."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.call(self.eager_unet, inputs)
        return int(counter.get_total_flops())

    # --- tasks

    def eager(self, size: tuple[int, int], kind: str) -> None:
        """(a)/(e) Time the eager UNet step at `size`, count its FLOPs, keep its output for the comparison."""
        torch = self.torch
        inputs = self.capture(size)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timing = self.time_calls(self.eager_unet, inputs, self.args.warmup_calls, self.args.repeats)
        self.eager_step_s[size] = timing["median_s"]
        self.eager_output[size] = self.call(self.eager_unet, inputs).float()
        self.record(
            kind,
            size=size_name(size),
            batch=int(inputs["args"][0].shape[0]),
            capture_s=round(self.capture_s[size], 3),
            step=timing,
            peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
        )
        # After the timing: the counter's own dispatch slows the call it counts.
        self.record(f"{kind}_flop", size=size_name(size), flop_per_step=self.count_flop(inputs))

    def compile_unet(self) -> None:
        """Wrap the UNet as the generator does with compile on: static shapes, the scope asked, its own watch."""
        if self.compiled_unet is not None:
            return
        from generator.acceleration import Acceleration
        from generator.pipeline import accelerate

        self.pipe.unet = self.eager_unet
        settings = Acceleration(
            compile=True, backend=self.args.backend, mode=self.args.mode, scope=self.args.scope, dynamic=False
        )
        (self.watch,) = accelerate(self.pipe, settings)
        self.compiled_unet = self.pipe.unet
        self.pipe.unet = self.eager_unet

    def compiled(self, size: tuple[int, int], kind: str) -> None:
        """(b)/(d)/(e) Compile at `size` (the first call), then time the compiled step and compare its output."""
        importing = time.perf_counter()
        from torch._dynamo.utils import counters

        dynamo_import_s = time.perf_counter() - importing
        inputs = self.capture(size)
        wrapping = time.perf_counter()
        self.compile_unet()
        wrap_s = time.perf_counter() - wrapping
        graphs_before = self.watch.graphs_total
        self.record(
            f"{kind}_compiling",
            size=size_name(size),
            since_spawn_s=round(time.time() - self.args.spawned_at, 2),
            # What came before the compile, to account for a warm start's seconds: the eager step that captured
            # the inputs (the generator's warm-up has none), importing dynamo and wrapping the UNet for torch.compile.
            capture_s=round(self.capture_s.get(size, 0.0), 2),
            dynamo_import_s=round(dynamo_import_s, 2),
            wrap_s=round(wrap_s, 2),
        )
        self.sync()
        started = time.perf_counter()
        output = self.call(self.compiled_unet, inputs).float()
        self.sync()
        compile_s = time.perf_counter() - started
        ready_at = time.time()
        graphs_compiled = self.watch.graphs_total
        caches = {name: dict(counters[name]) for name in ("inductor", "aot_autograd") if name in counters}
        self.record(
            f"{kind}_compile",
            size=size_name(size),
            compile_s=round(compile_s, 2),
            graphs_built=graphs_compiled - graphs_before,
            # Process start to a compiled step done, less the eager step that captured the inputs (the generator's
            # warm-up runs the compiled UNet directly): the warm start's figure (the cold process measured more
            # before compiling).
            since_spawn_s=round(ready_at - self.args.spawned_at - self.capture_s.get(size, 0.0), 2),
            cache_counters=caches,
            compile_times_s=compile_times(),
        )
        timing = self.time_calls(self.compiled_unet, inputs, self.args.warmup_calls, self.args.repeats)
        agreement = None
        if size in self.eager_output:
            agreement = compare(output, self.eager_output[size], UNET_RELATIVE_TOLERANCE)
        self.record(
            kind,
            size=size_name(size),
            step=timing,
            graphs_built_while_timing=self.watch.graphs_total - graphs_compiled,
            eager_step_s=self.eager_step_s.get(size),
            unet_agreement=agreement,
        )

    def agreement(self, size: tuple[int, int]) -> None:
        """(c) Seeded latents after a few guided steps: eager twice (its noise) and compiled, compared."""
        torch = self.torch
        steps = self.args.agreement_steps
        latents, seconds = {}, {}
        graphs_before = self.watch.graphs_total
        runs = (("eager", self.eager_unet), ("eager_again", self.eager_unet), ("compiled", self.compiled_unet))
        for name, unet in runs:
            self.pipe.unet = unet
            started = time.perf_counter()
            latents[name] = self.run_pipeline(size, steps=steps, seed=7).float()
            seconds[name] = round(time.perf_counter() - started, 3)
        self.pipe.unet = self.eager_unet
        self.record(
            "agreement",
            size=size_name(size),
            steps=steps,
            seed=7,
            pipeline_s=seconds,
            # The compiled size through the pipeline's own calls (other timesteps): it must not compile again.
            graphs_built=self.watch.graphs_total - graphs_before,
            compiled_vs_eager=compare(latents["compiled"], latents["eager"], LATENTS_RELATIVE_TOLERANCE),
            eager_vs_eager=compare(latents["eager_again"], latents["eager"], LATENTS_RELATIVE_TOLERANCE),
            finite=bool(all(torch.isfinite(x).all() for x in latents.values())),
        )

    def save_mega_cache(self) -> None:
        """Write the Mega-Cache file (what a new host or an empty volume would load) and record its size."""
        from generator.acceleration import save_cache

        started = time.perf_counter()
        size_bytes = save_cache(Path(self.args.cache_dir))
        self.record("mega_cache", bytes=size_bytes, save_s=round(time.perf_counter() - started, 2))

    def sdpa(self, size: tuple[int, int]) -> None:
        """Time the eager UNet with one SDPA kernel allowed at a time (a kernel that cannot run says why)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        inputs = self.capture(size)
        results: dict[str, Any] = {}
        for name, backend in (
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ):
            with warnings.catch_warnings(record=True) as reasons:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        results[name] = self.time_calls(self.eager_unet, inputs, 1, self.args.variant_repeats)
                except RuntimeError as error:
                    why = sorted({str(w.message).strip()[:300] for w in reasons})[:4]
                    results[name] = {"error": str(error).splitlines()[0][:300], "reasons": why}
        results["default"] = self.time_calls(self.eager_unet, inputs, 1, self.args.variant_repeats)
        self.record("sdpa", size=size_name(size), eager=results)


def size_name(size: tuple[int, int]) -> str:
    """Name a (resolution, frames) size as the API does: 512x512x16."""
    return f"{size[0]}x{size[0]}x{size[1]}"


def compile_times() -> dict[str, float]:
    """Return dynamo's own seconds per compile phase so far (tracing, AOT, inductor codegen)."""
    from torch._dynamo.utils import compilation_time_metrics

    return {name: round(sum(values), 2) for name, values in compilation_time_metrics.items()}


def spread(samples: list[float]) -> dict[str, Any]:
    """Return the median, min, max and every sample, in seconds."""
    return {
        "median_s": round(statistics.median(samples), 5),
        "min_s": round(min(samples), 5),
        "max_s": round(max(samples), 5),
        "samples_s": [round(s, 5) for s in samples],
    }


def compare(ours: Any, reference: Any, tolerance: float) -> dict[str, Any]:
    """Compare two outputs: largest difference relative to the reference's largest value, mean, and cosine."""
    import torch

    finite = bool(torch.isfinite(ours).all() and torch.isfinite(reference).all())
    diff = (ours - reference).abs()
    scale = float(reference.abs().max()) or 1.0
    relative = float(diff.max()) / scale
    cosine = float(torch.nn.functional.cosine_similarity(ours.flatten(), reference.flatten(), dim=0))
    return {
        "max_abs_diff": float(diff.max()),
        "reference_max_abs": scale,
        "relative_max_diff": relative,
        "mean_abs_diff": float(diff.mean()),
        "cosine": cosine,
        "tolerance_relative": tolerance,
        "agree": finite and relative <= tolerance,
    }
