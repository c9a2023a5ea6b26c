"""One phase of bench/compile_gpu.py, in its own process: start the generator's Worker, measure, record as it goes.

Every figure is one JSON line, flushed at once (the parent may kill this process at its deadline). The Worker is
the generator's own, with its own compile warm-up; the UNet calls are timed on the inputs the pipeline itself gave
the UNet, captured by a hook, so eager and compiled see exactly what a job sends.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.compile_gpu import PHASES

VARIANT_SIZES = [(512, 16), (1024, 32)]
DECODE_CHUNKS = (1, 4, 8)
# The eager variants (attention kernels, channels-last) are second-order figures: fewer calls each.
VARIANT_REPEATS = 3
# Agreement thresholds for fp16: the compiled graph fuses and reorders floating-point work.
UNET_RELATIVE_TOLERANCE = 1e-2
FRAMES_MEAN_TOLERANCE = 1 / 255


class Recorder:
    """Append one JSON line per record, flushed at once: the parent may kill this process at any moment."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def __call__(self, kind: str, **fields: Any) -> None:
        """Write one record."""
        self._file.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
        self._file.flush()


def child_main(args: argparse.Namespace) -> int:
    """Run one phase: start the generator's Worker, then the phase's measurements, recording as it goes."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    record = Recorder(args.records)
    import torch

    from generator.acceleration import prepare_cache

    imported_at = time.time()

    spec = PHASES[args.child]
    settings = {"mode": args.mode, **spec.get("settings", {})}
    cache_dir = Path(args.cache_dir)
    loaded = prepare_cache(cache_dir)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    bench = Bench(args, record, device)
    try:
        bench.start(settings, cache_dir, loaded, imported_at)
    except Exception as error:  # noqa: BLE001  (nothing runs without the worker: the record says why)
        record("error", task="start", message=f"{error.__class__.__name__}: {error}", trace=traceback.format_exc())
        return 1
    tasks: list[tuple[str, Callable[[], None]]]
    if args.child == "cold":
        tasks = [(f"size {r}x{f}", bench.size_task(r, f)) for r, f in args.sizes]
        tasks.append(("pipeline agreement", bench.pipeline_agreement))
    elif args.child == "warm":
        tasks = [("coverage", lambda: bench.coverage(args.coverage))]
        variant_sizes = args.sizes[:1] if args.quick else args.sizes[:2]
        tasks += [(f"attention {r}x{f}", bench.attention_task(r, f)) for r, f in variant_sizes]
        tasks += [(f"channels-last {r}x{f}", bench.channels_last_task(r, f)) for r, f in variant_sizes]
        tasks += [(f"decode {r}x{f}", bench.decode_task(r, f)) for r, f in variant_sizes]
    elif args.child == "megacache":
        tasks = []
    elif args.child == "vae":
        tasks = [(f"compiled decode {r}x{f}", bench.decode_task(r, f, chunks=(1,))) for r, f in args.sizes[:2]]
    else:  # a compiler variant: its step times beside eager at the sizes that matter most
        tasks = [(f"size {r}x{f}", bench.size_task(r, f)) for r, f in spec.get("sizes", VARIANT_SIZES)]
    for name, task in tasks:
        try:
            task()
        except Exception as error:  # noqa: BLE001  (the record says why this figure is missing; the next runs)
            record("error", task=name, message=f"{error.__class__.__name__}: {str(error)[:2000]}")
            bench.release()
    record("done", took_s=round(time.time() - args.spawned_at, 1))
    bench.close()
    return 0


class Bench:
    """One child's measurements on the Worker the generator itself would run."""

    def __init__(self, args: argparse.Namespace, record: Recorder, device: Any) -> None:
        import torch

        self.torch = torch
        self.args, self.record, self.device = args, record, device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.root = Path(tempfile.mkdtemp(prefix="i2v-compile-bench-"))
        self.worker: Any = None
        self.events: list[dict[str, Any]] = []
        self.variant_repeats = min(VARIANT_REPEATS, args.repeats)

    def sync(self) -> None:
        """Wait for the GPU's queued work, so a clock read measures it."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Give cached GPU memory back between tasks (a failed task's tensors are gone by now)."""
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def start(self, settings: dict[str, Any], cache_dir: Path, loaded: int, imported_at: float) -> None:
        """Start the generator's Worker as `python -m generator` would and record how long until it was ready."""
        from generator.acceleration import Acceleration, parse_shapes
        from generator.events import EventSender
        from generator.jobs import JobBook
        from generator.metrics import GeneratorMetrics
        from generator.worker import Worker

        acceleration = replace(
            Acceleration(compile=True, backend=self.args.backend, cache_dir=cache_dir),
            warmup=parse_shapes(self.args.warmup),
            **settings,
        )
        event_log = logging.getLogger("generator.event")
        event_log.setLevel(logging.INFO)
        event_log.addHandler(_EventList(self.events, self.record))
        event_log.propagate = False
        self.metrics = GeneratorMetrics()
        self.worker = Worker(
            book=JobBook(self.root / "state", 4),
            events=EventSender(None, self.root / "spool", spool_max_bytes=2**20),
            metrics=self.metrics,
            model=self.args.model,
            device=self.device,
            dtype=self.dtype,
            outputs=self.root / "outputs",
            cache_dir=self.root / "cache",
            host_name="bench",
            acceleration=acceleration,
        )
        self.worker.start()
        while not self.worker.ready.is_set():
            if self.worker.load_error:
                raise RuntimeError(self.worker.load_error)
            time.sleep(0.05)
        ready_at = time.time()
        from torch._dynamo.utils import compilation_time_metrics, counters

        self.record(
            "start",
            ready_s=round(ready_at - self.args.spawned_at, 2),
            imports_s=round(imported_at - self.args.spawned_at, 2),
            mega_cache_artifacts_loaded=loaded,
            acceleration=acceleration.describe(),
            device=self.device_info(),
            events=[_brief(e) for e in self.events],
            graphs=[w.graphs_total for w in self.worker.watches],
            dynamo_seconds={k: round(sum(v), 2) for k, v in compilation_time_metrics.items()},
            cache_counters={k: dict(counters[k]) for k in ("inductor", "aot_autograd") if k in counters},
            mega_cache_bytes=(cache_dir / "mega-cache.bin").stat().st_size
            if (cache_dir / "mega-cache.bin").is_file()
            else None,
        )

    def device_info(self) -> dict[str, Any]:
        """Describe the card and the software that compiled for it."""
        torch = self.torch
        info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
        for name in ("diffusers", "triton"):
            try:
                info[name] = __import__(name).__version__
            except ImportError:  # no Triton on a CPU-only torch
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

    def close(self) -> None:
        """Stop the worker and remove its job book, clips and tokenizer files."""
        self.worker.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- the pipeline, as the worker runs it

    def params(self, resolution: int, frames: int, steps: int = 1, guidance: float = 9.0, seed: int = 0) -> Any:
        """Return job parameters at this size."""
        from generator.validation import JobParams

        return JobParams(resolution, frames, steps, guidance, 8, seed)

    def step_once(self, resolution: int, frames: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run one compiled denoising step through the worker's own path; return timings and the UNet's inputs."""
        from PIL import Image

        captured: dict[str, Any] = {}
        unet = self.worker.pipe.unet

        def keep(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.update(args=args, kwargs=kwargs)

        hook = unet.register_forward_pre_hook(keep, with_kwargs=True)
        steps: list[Any] = []
        graphs = [w.graphs_total for w in self.worker.watches]
        started = time.perf_counter()
        try:
            self.worker._call_pipeline(
                self.params(resolution, frames),
                Image.new("RGB", (resolution, resolution), (90, 140, 200)),
                "a sailing boat on a calm sea at sunset",
                lambda timing: steps.append(timing) if timing.stage == "denoising_step" else None,
                output="latent",
            )
        finally:
            hook.remove()
        self.sync()
        first = {
            "first_call_s": round(time.perf_counter() - started, 3),
            "first_step_s": round(steps[0].duration_s, 3) if steps else None,
            "graphs_built": sum(w.graphs_total for w in self.worker.watches) - sum(graphs),
        }
        return first, captured

    # --- tasks

    def size_task(self, resolution: int, frames: int) -> Callable[[], None]:
        """Return the task that measures one size eager against compiled."""
        return lambda: self.measure_size(resolution, frames)

    def measure_size(self, resolution: int, frames: int) -> None:
        """Time the UNet eager and compiled on one size's real inputs, count its FLOPs, compare the outputs."""
        torch = self.torch
        first, inputs = self.step_once(resolution, frames)
        watch = self.worker.watches[0]
        modules = {"eager": watch.eager, "compiled": self.worker.pipe.unet}
        args, kwargs = inputs["args"], inputs["kwargs"]
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        peaks: dict[str, int] = {}
        outputs: dict[str, Any] = {}
        graphs_before = watch.graphs_total
        with torch.no_grad():
            for rep in range(self.args.repeats + 1):
                # Interleaved, the order alternating, so a clock or thermal drift hits both alike.
                for name in ("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager"):
                    if rep == 0 and self.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.device)
                    self.sync()
                    started = time.perf_counter()
                    out = modules[name](*args, **kwargs)[0]
                    self.sync()
                    elapsed = time.perf_counter() - started
                    if rep == 0:  # the untimed call: outputs and peak memory
                        outputs[name] = out.float()
                        if self.device.type == "cuda":
                            peaks[name] = torch.cuda.max_memory_allocated(self.device)
                    else:
                        times[name].append(elapsed)
            flop = self.count_flop(modules["eager"], args, kwargs)
        self.record(
            "size",
            size=f"{resolution}x{resolution}x{frames}",
            resolution=resolution,
            frames=frames,
            batch=int(args[0].shape[0]),
            **first,
            graphs_built_while_timing=watch.graphs_total - graphs_before,
            eager=spread(times["eager"]),
            compiled=spread(times["compiled"]),
            flop_per_call=flop,
            peak_allocated_bytes=peaks,
            agreement=compare(outputs["compiled"], outputs["eager"], UNET_RELATIVE_TOLERANCE),
        )
        outputs.clear()
        self.release()

    def count_flop(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """Count one eager call's FLOPs (matmuls, convolutions, attention) with torch's FLOP counter."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            module(*args, **kwargs)
        return int(counter.get_total_flops())

    def pipeline_agreement(self) -> None:
        """Run one seeded 3-step clip eager twice and compiled once; compare the frames.

        Eager against eager is the run-to-run noise (kernels that reduce in a different order each run); compiled
        against eager is judged beside it.
        """
        from PIL import Image

        pipe, watch = self.worker.pipe, self.worker.watches[0]
        compiled = pipe.unet
        resolution, frames = (256, 16)
        clips = {}
        image = Image.new("RGB", (resolution, resolution), (90, 140, 200))
        try:
            for name, unet in (("eager", watch.eager), ("eager_again", watch.eager), ("compiled", compiled)):
                pipe.unet = unet
                generator = self.torch.Generator(device=self.device).manual_seed(7)
                result = self.worker.timer.run(
                    lambda _: None,
                    lambda: False,
                    prompt="a sailing boat on a calm sea at sunset",
                    image=image,
                    height=resolution,
                    width=resolution,
                    num_frames=frames,
                    num_inference_steps=3,
                    guidance_scale=9.0,
                    target_fps=8,
                    generator=generator,
                    output_type="np",
                )
                clips[name] = self.torch.from_numpy(result.frames[0])
        finally:
            pipe.unet = compiled
        diff = (clips["compiled"] - clips["eager"]).abs()
        noise = (clips["eager_again"] - clips["eager"]).abs()
        self.record(
            "pipeline_agreement",
            size=f"{resolution}x{resolution}x{frames}",
            steps=3,
            seed=7,
            finite=bool(all(self.torch.isfinite(clip).all() for clip in clips.values())),
            max_abs_diff_8bit=round(float(diff.max()) * 255, 3),
            mean_abs_diff_8bit=round(float(diff.mean()) * 255, 4),
            eager_rerun_max_abs_diff_8bit=round(float(noise.max()) * 255, 3),
            eager_rerun_mean_abs_diff_8bit=round(float(noise.mean()) * 255, 4),
            tolerance_mean_8bit=FRAMES_MEAN_TOLERANCE * 255,
            agree=bool(diff.mean() <= FRAMES_MEAN_TOLERANCE),
        )

    def coverage(self, sizes: list[tuple[int, int]]) -> None:
        """Run one step at every size class after the warm start: a size that compiles is one a job would wait on."""
        for resolution, frames in sizes:
            first, _ = self.step_once(resolution, frames)
            self.record("coverage", size=f"{resolution}x{resolution}x{frames}", **first)
            self.release()

    def attention_task(self, resolution: int, frames: int) -> Callable[[], None]:
        """Return the task that times the eager UNet with each attention kernel alone."""
        return lambda: self.attention(resolution, frames)

    def attention(self, resolution: int, frames: int) -> None:
        """Time the eager UNet with only one SDPA kernel allowed, per kernel (a kernel that cannot run says why)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        _, inputs = self.step_once(resolution, frames)
        eager = self.worker.watches[0].eager
        results: dict[str, Any] = {"default": self.time_calls(eager, inputs, self.variant_repeats)}
        for name, backend in (
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ):
            # torch says why a kernel cannot run in warnings, before the error that none could.
            with warnings.catch_warnings(record=True) as reasons:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        results[name] = self.time_calls(eager, inputs, self.variant_repeats)
                except RuntimeError as error:
                    why = sorted({str(w.message).strip()[:300] for w in reasons})[:6]
                    results[name] = {"error": str(error).splitlines()[0][:300], "reasons": why}
            self.release()
        self.record("attention", size=f"{resolution}x{resolution}x{frames}", eager=results)

    def channels_last_task(self, resolution: int, frames: int) -> Callable[[], None]:
        """Return the task that times the eager UNet with channels-last convolution weights."""
        return lambda: self.channels_last(resolution, frames)

    def channels_last(self, resolution: int, frames: int) -> None:
        """Time the eager UNet with contiguous and with channels-last weights (restored afterwards)."""
        torch = self.torch
        from generator.acceleration import to_channels_last

        _, inputs = self.step_once(resolution, frames)
        eager = self.worker.watches[0].eager
        contiguous = self.time_calls(eager, inputs, self.variant_repeats)
        to_channels_last(eager)
        try:
            last = self.time_calls(eager, inputs, self.variant_repeats)
        finally:
            for layer in eager.modules():
                if isinstance(layer, torch.nn.Conv2d):
                    layer.to(memory_format=torch.contiguous_format)
        self.record(
            "channels_last",
            size=f"{resolution}x{resolution}x{frames}",
            eager_contiguous=contiguous,
            eager_channels_last=last,
        )

    def decode_task(self, resolution: int, frames: int, chunks: tuple[int, ...] = DECODE_CHUNKS) -> Callable[[], None]:
        """Return the task that times the VAE decode of one clip per chunk size."""
        return lambda: self.decode(resolution, frames, chunks)

    def decode(self, resolution: int, frames: int, chunks: tuple[int, ...]) -> None:
        """Time decode_latents on random latents of this size (the pipeline's default chunk is 1 frame)."""
        torch = self.torch
        pipe = self.worker.pipe
        latents = torch.randn((1, 4, frames, resolution // 8, resolution // 8), device=self.device, dtype=self.dtype)
        results: dict[str, Any] = {}
        graphs = [w.graphs_total for w in self.worker.watches]
        with torch.no_grad():
            for chunk in chunks:
                try:
                    results[str(chunk)] = self.time_calls(
                        lambda chunk=chunk: pipe.decode_latents(latents, decode_chunk_size=chunk), None, repeats=2
                    )
                except torch.cuda.OutOfMemoryError as error:
                    results[str(chunk)] = {"error": str(error).splitlines()[0][:300]}
                self.release()
        self.record(
            "decode",
            size=f"{resolution}x{resolution}x{frames}",
            vae_compiled=len(self.worker.watches) > 1,
            graphs_built=sum(w.graphs_total for w in self.worker.watches) - sum(graphs),
            seconds_by_chunk=results,
        )

    def time_calls(self, module: Any, inputs: dict[str, Any] | None, repeats: int | None = None) -> dict[str, Any]:
        """Call once untimed, then time `repeats` calls; a module with inputs is called on them."""
        torch = self.torch
        count = repeats or self.args.repeats
        samples = []
        with torch.no_grad():
            for rep in range(count + 1):
                self.sync()
                started = time.perf_counter()
                if inputs is None:
                    module()
                else:
                    module(*inputs["args"], **inputs["kwargs"])
                self.sync()
                if rep:
                    samples.append(time.perf_counter() - started)
        return spread(samples)


class _EventList(logging.Handler):
    """Keep the generator's events (its log records carry each whole) in a list, and record each start-up stage at once.

    A compile that outlasts the phase's deadline still leaves the stages before it in the JSON.
    """

    def __init__(self, events: list[dict[str, Any]], record: Recorder) -> None:
        super().__init__()
        self.events = events
        self.record = record

    def emit(self, record: logging.LogRecord) -> None:
        """Parse and keep one event."""
        event = record.event  # type: ignore[attr-defined]  # the generator logs each event whole
        self.events.append(event)
        if event.get("job_id") == "startup":
            self.record("startup_stage", **_brief(event))


def _brief(event: dict[str, Any]) -> dict[str, Any]:
    """Keep what a start-up stage event says: the stage, its size and its seconds."""
    params = event.get("params", {})
    return {
        "stage": event.get("stage"),
        "size": f"{params.get('resolution')}x{params.get('resolution')}x{params.get('num_frames')}",
        "duration_s": round(event.get("duration_s", 0.0), 3),
    }


def spread(samples: list[float]) -> dict[str, Any]:
    """Return the median, min, max and every sample, in seconds."""
    if not samples:
        return {"median_s": None, "samples_s": []}
    return {
        "median_s": round(statistics.median(samples), 5),
        "min_s": round(min(samples), 5),
        "max_s": round(max(samples), 5),
        "samples_s": [round(s, 5) for s in samples],
    }


def compare(ours: Any, reference: Any, tolerance: float) -> dict[str, Any]:
    """Compare two outputs: largest difference relative to the reference's largest value, and cosine."""
    import torch

    finite = bool(torch.isfinite(ours).all() and torch.isfinite(reference).all())
    diff = (ours - reference).abs()
    scale = float(reference.abs().max()) or 1.0
    relative = float(diff.max()) / scale
    cosine = float(torch.nn.functional.cosine_similarity(ours.flatten(), reference.flatten(), dim=0))
    return {
        "finite": finite,
        "max_abs_diff": float(diff.max()),
        "reference_max_abs": scale,
        "relative_max_diff": relative,
        "mean_abs_diff": float(diff.mean()),
        "cosine": cosine,
        "tolerance_relative": tolerance,
        "agree": finite and relative <= tolerance,
    }
