"""One process of bench/aoti_gpu.py: one phase, one JSON line per figure, flushed at once (the parent may kill it).

  packages  the model loaded; per size: the eager step (inputs captured from the pipeline's own call), the package
            loaded or else exported and compiled (export and AOTInductor seconds, file size), the packaged step
            and its output against eager; then seeded latents after a few guided steps, eager twice and packaged.
  restart   the generator's own worker started on the packages the first phase left: seconds from process spawn
            to ready, with its start-up stage events (model load, package loads, compiles: none expected).
  compiled  torch.compile (the generator's static-shape settings) at each size from the same cache folder: compile
            seconds and the compiled step, for the three-way comparison.

Steps are timed by bench/compile_measure.py's `Bench` (median of timed calls after warm-up calls, synchronised).
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compile_measure import LATENTS_RELATIVE_TOLERANCE, UNET_RELATIVE_TOLERANCE, Bench, Recorder, compare

Size = tuple[int, int]


def child_main(args: argparse.Namespace) -> int:
    """Run one phase, recording as it goes; a failed task is recorded and the next one runs."""
    # A segfault in a package (its load or its call) ends the process without an exception: this leaves its
    # Python stack on stderr.
    faulthandler.enable(all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    record = Recorder(args.records)
    import torch

    from generator.acceleration import prepare_cache

    prepare_cache(Path(args.cache_dir))  # torch.compile's caches; the packages have a folder of their own inside
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    if args.child == "restart":
        return restart(args, record, device)
    bench = PackageBench(bench_args(args), record, device)
    imported_at = time.time()
    try:
        bench.load(imported_at, 0)
    except Exception as error:  # noqa: BLE001  (nothing runs without the model: the record says why)
        record("error", task="load", message=f"{error.__class__.__name__}: {error}", trace=traceback.format_exc())
        return 1
    tasks: list[tuple[str, Callable[[], None]]] = []
    for size in args.sizes:
        if args.child == "packages":
            tasks.append((f"packaged {name(size)}", functools.partial(packaged, bench, args, size)))
        else:
            tasks.append((f"compiled {name(size)}", functools.partial(bench.compiled, size, f"compiled_{name(size)}")))
    if args.child == "packages":
        tasks.append(("agreement", lambda: latents_agreement(bench, args, args.sizes[0])))
    for task_name, task in tasks:
        try:
            task()
        except Exception as error:  # noqa: BLE001  (the record says why this figure is missing; the next runs)
            record("error", task=task_name, message=f"{error.__class__.__name__}: {str(error)[:2000]}")
        bench.release()
    record("done", took_s=round(time.time() - args.spawned_at, 1))
    return 0


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """Return the settings compile_measure's `Bench` reads (the torch.compile ones are the generator's)."""
    return argparse.Namespace(
        model=args.model,
        child=args.child,
        spawned_at=args.spawned_at,
        warmup_calls=args.warmup_calls,
        repeats=args.repeats,
        backend="inductor",
        mode="default",
        cache_dir=args.cache_dir,
        agreement_steps=args.agreement_steps,
    )


def name(size: Size) -> str:
    """Name a (resolution, frames) size as the API does: 512x512x16."""
    return f"{size[0]}x{size[0]}x{size[1]}"


class PackageBench(Bench):
    """compile_measure's bench with the UNet also served from packages, as the generator's aoti backend does."""

    packaged: Any = None

    def packaged_unet(self, cache_dir: Path) -> Any:
        """Return the UNet served from packages in `cache_dir` (made on the first call)."""
        if self.packaged is None:
            from generator.acceleration import Acceleration
            from generator.pipeline import accelerate

            self.pipe.unet = self.eager_unet
            (self.packaged,) = accelerate(self.pipe, Acceleration(compile=True, backend="aoti", cache_dir=cache_dir))
            self.pipe.unet = self.eager_unet
        return self.packaged


def packaged(bench: PackageBench, args: argparse.Namespace, size: Size) -> None:
    """Time eager at `size`, load or build its package (timed), time the packaged step and compare its output."""
    bench.eager(size, f"eager_{name(size)}")
    inputs = bench.capture(size)
    unet = bench.packaged_unet(Path(args.cache_dir))
    builds, loads = len(unet.builds), len(unet.loads)
    bench.sync()
    started = time.perf_counter()
    with unet.building():
        output = bench.call(unet, inputs).float()
    bench.sync()
    first_call_s = time.perf_counter() - started
    build = unet.builds[builds] if len(unet.builds) > builds else None
    load = unet.loads[loads] if len(unet.loads) > loads else None
    bench.record(
        f"package_{name(size)}",
        size=name(size),
        built=build is not None,
        export_s=round(build.export_s, 2) if build else None,
        aoti_compile_s=round(build.compile_s, 2) if build else None,
        package_bytes=build.size_bytes if build else None,
        load_s=round(load.duration_s, 3) if load else None,
        # Not served (quarantined after a crash, or another process loading it): the "packaged" step is eager's.
        skipped=[f"{skip.reason}: {skip.message}" for skip in unet.skips],
        first_call_s=round(first_call_s, 2),
        since_spawn_s=round(time.time() - args.spawned_at, 1),
    )
    served = unet.package_calls_total
    timing = bench.time_calls(unet, inputs, args.warmup_calls, args.repeats)
    bench.record(
        f"packaged_{name(size)}",
        size=name(size),
        step=timing,
        served_by_package=unet.package_calls_total - served,
        eager_step_s=bench.eager_step_s.get(size),
        unet_agreement=compare(output, bench.eager_output[size], UNET_RELATIVE_TOLERANCE),
    )


def latents_agreement(bench: PackageBench, args: argparse.Namespace, size: Size) -> None:
    """Seeded latents after a few guided steps through the pipeline: eager twice (its own noise) and packaged."""
    unet = bench.packaged_unet(Path(args.cache_dir))
    served = unet.package_calls_total
    latents, seconds = {}, {}
    for run, module in (("eager", bench.eager_unet), ("eager_again", bench.eager_unet), ("packaged", unet)):
        bench.pipe.unet = module
        started = time.perf_counter()
        latents[run] = bench.run_pipeline(size, steps=args.agreement_steps, seed=7).float()
        seconds[run] = round(time.perf_counter() - started, 3)
    bench.pipe.unet = bench.eager_unet
    bench.record(
        "agreement",
        size=name(size),
        steps=args.agreement_steps,
        seed=7,
        pipeline_s=seconds,
        served_by_package=unet.package_calls_total - served,  # every step, or the comparison is of eager to eager
        packaged_vs_eager=compare(latents["packaged"], latents["eager"], LATENTS_RELATIVE_TOLERANCE),
        eager_vs_eager=compare(latents["eager_again"], latents["eager"], LATENTS_RELATIVE_TOLERANCE),
    )


def restart(args: argparse.Namespace, record: Recorder, device: Any) -> int:
    """Start the generator's worker on the packages on disk and record the seconds from spawn to ready."""
    import torch

    from common.events import STARTUP_JOB_ID
    from generator.acceleration import Acceleration, Shape
    from generator.events import EventSender
    from generator.jobs import JobBook
    from generator.metrics import GeneratorMetrics
    from generator.worker import Worker

    stages: list[dict[str, Any]] = []

    class Stages(logging.Handler):
        """Keep the start-up stage events the worker logs."""

        def emit(self, entry: logging.LogRecord) -> None:
            event = getattr(entry, "event", None)
            if event and event.get("job_id") == STARTUP_JOB_ID:
                stages.append({k: event.get(k) for k in ("stage", "duration_s", "params")})

    event_log = logging.getLogger("generator.event")
    event_log.setLevel(logging.INFO)
    event_log.addHandler(Stages())
    root = Path(tempfile.mkdtemp(prefix="i2v-aoti-restart-"))
    metrics = GeneratorMetrics()
    worker = Worker(
        book=JobBook(root / "state", queue_size=1),
        events=EventSender(None, root / "spool", spool_max_bytes=2**20),
        metrics=metrics,
        model=args.model,
        device=device,
        dtype=torch.float16 if device.type == "cuda" else torch.float32,
        outputs=root / "outputs",
        cache_dir=root / "cache",
        host_name="bench",
        acceleration=Acceleration(
            compile=True,
            backend="aoti",
            cache_dir=Path(args.cache_dir),
            warmup=tuple(Shape(*size) for size in args.sizes),
        ),
    )
    loaded = worker.load()
    compiles = metrics.registry.get_sample_value("i2v_compiles_total", {"module": "unet", "phase": "warmup"})
    record(
        "restart",
        ready=loaded,
        load_error=worker.load_error,
        since_spawn_s=round(time.time() - args.spawned_at, 1),
        packaged_sizes=sorted(str(shape) for shape in worker.compiled_sizes),
        compiles=compiles,
        stages=stages,
    )
    record("done", took_s=round(time.time() - args.spawned_at, 1))
    return 0 if loaded else 1
