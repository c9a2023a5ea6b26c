"""Report compiles as they happen: a `compile` stage event with the job's size, counters, and the waiting job's notes.

A compiled module builds graphs lazily, inside whichever stage first calls it at a new size class (the UNet in a
denoising step, the VAE's decoder in decode). After each stage the worker asks here whether any module built
graphs during it (the stage timer counts `graph_totals()` at each stage's end); that stage's time is what the
compile cost, its own work included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from generator.acceleration import CompiledModule, Shape, save_cache
from generator.jobs import Job, JobBook
from generator.metrics import GeneratorMetrics
from generator.stages import StageTiming
from generator.validation import JobParams

log = logging.getLogger(__name__)

# Emits one stage event: (timing, the job's parameters, the job or None for start-up).
StageEmitter = Callable[[StageTiming, JobParams, Job | None], None]


class CompileReporter:
    """Turn the graphs the compiled modules built into events, metrics and notes; keep the Mega-Cache current."""

    def __init__(
        self,
        watches: list[CompiledModule],
        metrics: GeneratorMetrics,
        book: JobBook,
        emit: StageEmitter,
        mega_cache_dir: Path | None = None,
    ) -> None:
        self.watches, self.metrics, self.book, self.emit = watches, metrics, book, emit
        self.mega_cache_dir = mega_cache_dir
        for watch in watches:
            metrics.expect_compiles(watch.module)

    def graph_totals(self) -> dict[str, int]:
        """Return the graphs each compiled module has built so far: the counters the stage timer splits by stage."""
        return {watch.module: watch.graphs_total for watch in self.watches}

    def notice(self, timing: StageTiming, params: JobParams, job: Job | None = None) -> None:
        """Report every module that built graphs during the stage just timed (`job` None: the start-up)."""
        for watch in self.watches:
            built = timing.counted.get(watch.module, 0)
            if built == 0:
                continue
            shape = Shape(params.resolution, params.num_frames)
            self.metrics.compiles.labels(watch.module, "job" if job else "warmup").inc()
            self.metrics.stage_duration.labels("compile").observe(timing.duration_s)
            self.emit(StageTiming("compile", timing.started_at, timing.duration_s), params, job)
            log.info(
                "%s built %d graph(s) for %s during %s in %.1f s (%s)",
                watch.module,
                built,
                shape,
                timing.stage,
                timing.duration_s,
                f"job {job.job_id}" if job else "start-up",
            )
            if job is not None:
                note = (
                    f"waited {timing.duration_s:.0f} s for the {watch.module} to compile for {shape} "
                    f"({timing.stage.replace('_', ' ')}): a graph the warm-up had not built (a guard failed); "
                    "later jobs reuse it"
                )
                self.book.update(job, notes=[*job.notes, note])
                self.save_mega_cache()

    def save_mega_cache(self) -> None:
        """Write the Mega-Cache file: what this process compiled or loaded, for a new host or an empty volume."""
        if self.mega_cache_dir is not None:
            size = save_cache(self.mega_cache_dir)
            log.info("compile Mega-Cache saved: %d bytes in %s", size, self.mega_cache_dir)
