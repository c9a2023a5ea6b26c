"""Run queued jobs through the pipeline on one device: stage events, cancellation, OOM recovery, export."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common.events import STARTUP_JOB_ID, Event
from common.logs import extra
from generator import eta
from generator.acceleration import WARMUP_GUIDANCE, Acceleration, CompiledModule, Shape
from generator.admission import admit, next_smaller, table_estimate
from generator.compile_report import CompileReporter
from generator.device_clock import clock_for
from generator.events import EventSender, iso, job_state_event
from generator.jobs import Job, JobBook
from generator.metrics import GeneratorMetrics
from generator.packaged_unet import FOUND_NOW, QUARANTINED, PackagedUNet, PackageSkip
from generator.peak_memory import JobMemory, PeakMemory
from generator.pipeline import accelerate, load_pipeline, parameter_counts
from generator.stages import JobCancelled, StageTimer, StageTiming
from generator.validation import JobParams
from generator.video import write_mp4
from generator.warm_sizes import WarmSizes

log = logging.getLogger(__name__)

OOM_PREFIX = "CUDA out of memory"


def oom_suggestion(params: JobParams) -> str:
    """Suggest the next smaller job on the degradation ladder, or say that even the smallest does not fit."""
    smaller = next_smaller(params)
    if smaller is None:
        return "the GPU ran out of memory even for the smallest job: free GPU memory held by other processes"
    return (
        f"the GPU ran out of memory: try {smaller.resolution}p with {smaller.num_frames} frames "
        f"(this job was {params.resolution}p with {params.num_frames} frames)"
    )


WARMUP = JobParams(resolution=256, num_frames=8, steps=1, guidance_scale=9.0, fps=8, seed=0)


def is_out_of_memory(error: BaseException) -> bool:
    """Tell whether an error is a CUDA allocation failure (cuBLAS/cuDNN ones arrive as plain RuntimeErrors)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def device_identity(device: torch.device) -> tuple[str | None, str | None]:
    """Return a CUDA device's name and its UUID as NVML spells it (`GPU-...`), or None for what is not known.

    The UUID is how the monitor's samples (tagged `uuid`) are matched to a worker; on a CPU both are None.
    """
    if device.type != "cuda":
        return None, None
    properties = torch.cuda.get_device_properties(device)
    uuid = getattr(properties, "uuid", None)
    text = None if uuid is None else str(uuid)
    if text is not None and not text.startswith("GPU-"):
        text = f"GPU-{text}"
    return properties.name, text


def stage_event(
    job_id: str,
    host: str,
    gpu: str,
    timing: StageTiming,
    params: JobParams,
    peak: PeakMemory | None = None,
    first_at_size: bool | None = None,
) -> Event:
    """Build the event for one timed stage of a job (or of the start-up) on `gpu`."""
    return Event(
        job_id=job_id,
        host=host,
        gpu=gpu,
        kind="stage",
        stage=timing.stage,
        started_at=iso(timing.started_at),
        duration_s=timing.duration_s,
        step=timing.step,
        total_steps=timing.total_steps,
        params=params.to_dict(),
        peak_memory_bytes=None if peak is None else peak.reserved_bytes,
        peak_memory_allocated_bytes=None if peak is None else peak.allocated_bytes,
        first_at_size=first_at_size,
    )


def acceleration_view(acceleration: Acceleration | None, workers: Iterable[Worker]) -> dict[str, Any] | None:
    """Return /health's acceleration section: the settings, and the warm-up sizes whose package is not served."""
    if acceleration is None:
        return None
    return {**acceleration.describe(), "packages_skipped": [s for w in workers for s in w.skipped_packages()]}


class Worker:
    """One thread owning one device's pipeline: loads and warms it, then takes jobs from the book."""

    def __init__(
        self,
        *,
        book: JobBook,
        events: EventSender,
        metrics: GeneratorMetrics,
        model: str,
        device: torch.device,
        dtype: torch.dtype,
        outputs: Path,
        cache_dir: Path,
        host_name: str,
        estimate: Callable[[JobParams], int] = table_estimate,
        memory_fraction: float | None = None,
        job_memory: JobMemory | None = None,
        acceleration: Acceleration | None = None,
    ) -> None:
        self.book, self.events, self.metrics = book, events, metrics
        self.model, self.device, self.dtype = model, device, dtype
        self.outputs, self.cache_dir, self.host_name = outputs, cache_dir, host_name
        self.estimate = estimate
        self.memory_fraction = memory_fraction
        self.job_memory = job_memory or JobMemory(device)
        self.acceleration = acceleration or Acceleration()
        self.gpu = str(device.index or 0) if device.type == "cuda" else "cpu"
        # The card's name and NVML-style UUID, read when the model loads (None on a CPU): the fleet's view.
        self.gpu_name: str | None = None
        self.gpu_uuid: str | None = None
        self.current_job_id: str | None = None  # the job this worker runs now, for the fleet's view
        self.ready = threading.Event()
        self.load_error: str | None = None
        # What /ready says while this worker is not ready (read by the HTTP threads; a str swap is atomic).
        self.status = "starting"
        self.pipe: Any = None
        self.timer: StageTimer | None = None
        self.watches: list[CompiledModule] = []
        self.compiles = CompileReporter([], metrics, book, self._compile_event)
        self._compiled_unet: Any = None
        # The sizes the warm-up compiled; the compiled UNet runs only at these (static shapes: any other size would
        # compile inside the job, so it runs eager instead).
        self.compiled_sizes: set[Shape] = set()
        # Warm-up sizes whose package the UNet does not serve (quarantined after a crash, or held by another
        # process): they run eager, and /health says why.
        self.package_skips: dict[Shape, PackageSkip] = {}
        # The sizes this process has denoised at: a job's first step at a new one pays a one-off warm-up.
        self.warm_sizes = WarmSizes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"worker-{self.gpu}", daemon=True)

    def start(self) -> None:
        """Start loading the model and then serving jobs."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current job."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def load(self) -> bool:
        """Load and warm the model in the calling thread; on failure keep the reason in `load_error`."""
        try:
            self._load_and_warm()
        except Exception as error:
            self.load_error = f"{error.__class__.__name__}: {error}"
            log.exception("model %r failed to load; /ready stays false", self.model)
            return False
        return True

    def _run(self) -> None:
        if not self.load():
            return
        while not self._stop.is_set():
            job = self.book.take(timeout_s=0.5)
            self.metrics.queue_pending.set(self.book.pending())
            if job is None:
                continue
            try:
                self.run_job(job)
            except Exception as error:  # the loop boundary: a failed report must not stop the worker
                log.exception(
                    "job %s could not be completed or reported",
                    job.job_id,
                    extra=extra(job_id=job.job_id, gpu=self.gpu),
                )
                if job.state == "running":
                    self.book.update(job, state="failed", error=f"internal error: {error.__class__.__name__}")

    def _load_and_warm(self) -> None:
        if self.device.type == "cuda" and self.memory_fraction is not None:
            # The operator's share of a shared card: torch's allocator raises OutOfMemoryError beyond it.
            torch.cuda.set_per_process_memory_fraction(self.memory_fraction, self.device)
        self.gpu_name, self.gpu_uuid = device_identity(self.device)
        started = time.time()
        self.status = f"loading the {self.model} model"
        self.pipe = load_pipeline(self.model, self.device, self.dtype, self.cache_dir)
        self._synchronize()
        self._stage_event(STARTUP_JOB_ID, StageTiming("model_load", started, time.time() - started), WARMUP)
        log.info(
            "model %s loaded on %s: %s parameters",
            self.model,
            self.device,
            parameter_counts(self.pipe),
            extra=extra(gpu=self.gpu),
        )
        self.watches = accelerate(self.pipe, self.acceleration)
        self._compiled_unet = self.pipe.unet if self.watches else None
        inductor = self.acceleration.backend == "inductor"
        mega_cache = self.acceleration.cache_dir if inductor else None
        self.compiles = CompileReporter(
            self.watches,
            self.metrics,
            self.book,
            self._compile_event,
            mega_cache,
        )
        self.timer = StageTimer(
            self.pipe,
            clock_for(self.device),
            steps_in_flight=1 if self.device.type == "cuda" else 0,
            counters=lambda: self.compiles.graph_totals(),
        )
        image = Image.new("RGB", (256, 256), (128, 128, 128))
        if self.watches:
            self._warm_compiles(image)
        self.status = "warming up"
        started = time.time()
        self._call_pipeline(WARMUP, image, "warm-up", lambda timing: self.compiles.notice(timing, WARMUP))
        self.warm_sizes.ran(WARMUP)
        self._stage_event(STARTUP_JOB_ID, StageTiming("warmup", started, time.time() - started), WARMUP)
        self.job_memory.release()  # the first job starts from the weights alone, as every later one does
        self.status = "ready"
        self.metrics.ready.set(1)
        self.ready.set()

    def _warm_compiles(self, image: Image.Image) -> None:
        """Compile the UNet for each warm-up size before /ready, one denoising step each, and save the cache.

        With packages (aoti backend) the step loads the size's package, or exports, compiles and saves it first.
        A size that does not fit the card is skipped (jobs of that size run eager): the warm-up must never keep the
        service from starting.
        """
        shapes = self.acceleration.warmup
        packaged = self._compiled_unet if isinstance(self._compiled_unet, PackagedUNet) else None
        if packaged:
            self.metrics.expect_packages(packaged.module)
        for index, shape in enumerate(shapes, 1):
            verb = "loading or building the UNet package" if packaged else "compiling the UNet"
            self.status = f"{verb} for {shape} ({index} of {len(shapes)})"
            params = JobParams(shape.resolution, shape.num_frames, 1, WARMUP_GUIDANCE, 8, seed=0)
            listener = functools.partial(self.compiles.notice, params=params)
            self.compiled_sizes.add(shape)
            try:
                with packaged.building() if packaged else contextlib.nullcontext():
                    self._call_pipeline(params, image, "warm-up", listener, output="latent")
                self.warm_sizes.ran(params)
                if packaged:
                    self._report_package_loads(packaged, params)
                    self._report_package_skips(packaged, shape)
            except Exception as error:
                self.compiled_sizes.discard(shape)
                if not is_out_of_memory(error):
                    raise
                log.warning(
                    "compile warm-up at %s skipped: out of memory; jobs of that size run the UNet eager",
                    shape,
                    extra=extra(gpu=self.gpu),
                )
            self.job_memory.release()
        self.compiles.save_mega_cache()

    def _report_package_loads(self, packaged: PackagedUNet, params: JobParams) -> None:
        """Report each package the warm-up step loaded from disk as a `package_load` start-up stage (not a compile)."""
        for load in packaged.loads:
            timing = StageTiming("package_load", load.started_at, load.duration_s)
            self.metrics.stage_duration.labels("package_load").observe(load.duration_s)
            self._stage_event(STARTUP_JOB_ID, timing, params)
        packaged.loads.clear()

    def _report_package_skips(self, packaged: PackagedUNet, shape: Shape) -> None:
        """Run `shape` eager when the warm-up step did not get its package served; count the crashes found."""
        for skip in packaged.skips:
            self.compiled_sizes.discard(shape)
            self.package_skips[shape] = skip
            if skip.reason in FOUND_NOW:
                self.metrics.package_crashes.labels(packaged.module).inc()
        packaged.skips.clear()
        quarantined = sum(skip.reason in QUARANTINED for skip in self.package_skips.values())
        self.metrics.packages_quarantined.labels(packaged.module).set(quarantined)

    def skipped_packages(self) -> list[dict[str, Any]]:
        """Describe the warm-up sizes whose package is not served, for /health's acceleration section."""
        return [
            {
                "gpu": self.gpu,
                "size": str(shape),
                "reason": skip.reason,
                "package": str(skip.path),
                "message": skip.message,
            }
            for shape, skip in sorted(self.package_skips.copy().items())  # a copy: the worker thread adds to it
        ]

    def _call_pipeline(
        self,
        params: JobParams,
        image: Image.Image,
        prompt: str,
        listener: Callable[[StageTiming], None],
        cancelled: Callable[[], bool] = lambda: False,
        output: str = "np",
    ) -> Any:
        assert self.timer is not None
        if self._compiled_unet is not None:
            self.pipe.unet = self._compiled_unet if self.runs_compiled(params) else self.watches[0].eager
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        result = self.timer.run(
            listener,
            cancelled,
            prompt=prompt,
            image=image,
            height=params.resolution,
            width=params.resolution,
            num_frames=params.num_frames,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            target_fps=params.fps,
            generator=generator,
            output_type=output,
        )
        return result.frames[0]

    def runs_compiled(self, params: JobParams) -> bool:
        """Say whether a job of `params` runs the compiled UNet: a size the warm-up compiled, with guidance.

        Without guidance the pipeline sends one batch instead of two: another static graph, which no job compiles.
        """
        shape = Shape(params.resolution, params.num_frames)
        return self._compiled_unet is not None and params.guidance_scale > 1 and shape in self.compiled_sizes

    def _eager_reason(self, params: JobParams) -> str:
        if params.guidance_scale <= 1:
            return "guidance_scale 1: the UNet runs uncompiled (one batch, a graph the warm-up did not compile)"
        shape = Shape(params.resolution, params.num_frames)
        skip = self.package_skips.get(shape)
        if skip is not None and skip.reason in QUARANTINED:
            return f"the UNet runs uncompiled: its package for {shape} crashed a process and is quarantined"
        if skip is not None:
            return f"the UNet runs uncompiled: another process was still loading its package for {shape}"
        return f"the UNet runs uncompiled: {shape} is not among the compiled warm-up sizes (GENERATOR_COMPILE_WARMUP)"

    def _memory(self) -> Callable[[], tuple[int, int]] | None:
        if self.device.type != "cuda":
            return None
        fraction = self.memory_fraction or 1.0

        def free_and_total() -> tuple[int, int]:
            # What this process may still allocate: the device's free memory plus its own cached blocks, within
            # its cap. Admission adds back what it holds already (the weights), which the estimates include.
            free, total = torch.cuda.mem_get_info(self.device)
            cap = int(total * fraction)
            allocated = torch.cuda.memory_allocated(self.device)
            cached = torch.cuda.memory_reserved(self.device) - allocated
            return min(free + cached, cap - allocated), cap

        return free_and_total

    def run_job(self, job: Job) -> None:
        """Run one job to its end state; every failure mode ends in a reported state, never a dead worker."""
        self.metrics.jobs_running.inc()
        self.current_job_id = job.job_id
        self.book.update(job, gpu=self.gpu)
        self.job_event(job, "running")
        try:
            self._run_admitted(job)
        finally:
            self.current_job_id = None
            self.metrics.jobs_running.dec()
            # After the job's end is reported, so its time does not include it: the card is free for others
            # between jobs, and the next job's measurement starts from the weights alone.
            self.job_memory.release()

    def _run_admitted(self, job: Job) -> None:
        resident = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        # From the effective parameters: equal to the requested ones unless a retry already stepped them down.
        verdict = admit(job.effective, self._memory(), self.estimate, resident)
        if verdict.params is None:
            self._finish(
                job,
                "failed",
                error=verdict.notes[-1],
                suggestion="lower the resolution or the number of frames, or wait for memory to free up",
            )
            return
        if verdict.params != job.effective or verdict.notes:
            self.book.update(job, effective=verdict.params, notes=[*job.notes, *verdict.notes])
        predicted_s = eta.predicted_run_s(verdict.estimate_bytes, self.warm_sizes.is_new(verdict.params))
        if predicted_s is not None:
            self.book.update(job, predicted_run_s=predicted_s)
        if self._compiled_unet is not None and not self.runs_compiled(job.effective):
            self.book.update(job, notes=[*job.notes, self._eager_reason(job.effective)])
        self.job_memory.begin()
        outcome: tuple[str, str | None, str | None] = ("succeeded", None, None)
        frames = None
        video: Path | None = None
        try:
            image = Image.open(self.outputs / job.job_id / "input.png").convert("RGB")
            frames = self._call_pipeline(
                job.effective,
                image,
                job.prompt,
                lambda timing: self._on_stage(job, timing),
                lambda: job.cancel_requested or self._stop.is_set(),
            )
            started = time.time()
            video = write_mp4(frames, self.outputs / job.job_id / "video.mp4", job.effective.fps)
            self._on_stage(job, StageTiming("export", started, time.time() - started))
        except JobCancelled:
            outcome = ("cancelled", "cancelled while running", None)
        except Exception as error:
            if is_out_of_memory(error):
                text = str(error)[:500]
                message = text if text.startswith(OOM_PREFIX) else f"{OOM_PREFIX}: {text}"
                outcome = ("failed", message, oom_suggestion(job.effective))
            else:
                log.exception("job %s failed", job.job_id, extra=extra(job_id=job.job_id, gpu=self.gpu))
                outcome = ("failed", f"{error.__class__.__name__}: {str(error)[:500]}", "see the generator's log")
        # Released here, after the except block: a live traceback would keep the failed run's tensors alive.
        frames = None
        peak = self.job_memory.peak()
        if outcome[0] != "succeeded" or video is None:
            self.job_memory.release()
            self._finish(job, outcome[0], error=outcome[1], suggestion=outcome[2], peak=peak)
            return
        self._finish(job, "succeeded", video_path=str(video.resolve()), peak=peak)

    def _on_stage(self, job: Job, timing: StageTiming) -> None:
        first_at_size = None
        if timing.stage == "denoising_step" and timing.step == 1:
            first_at_size = self.warm_sizes.ran(job.effective)  # the monitor learns the warm-up from these
        durations = dict(job.stage_durations_s)
        if timing.stage == "denoising_step" and timing.step is not None:
            step = timing.step
            durations["denoising_step_mean"] = (
                durations.get("denoising_step_mean", 0.0) * (step - 1) + timing.duration_s
            ) / step
            self.book.update(job, step=timing.step, total_steps=timing.total_steps or 0, stage_durations_s=durations)
        else:
            durations[timing.stage] = timing.duration_s
            self.book.update(job, stage_durations_s=durations)
        self.metrics.stage_duration.labels(timing.stage).observe(timing.duration_s)
        self._stage_event(job.job_id, timing, job.effective, job, first_at_size)
        self.compiles.notice(timing, job.effective, job)

    def _compile_event(self, timing: StageTiming, params: JobParams, job: Job | None) -> None:
        self._stage_event(job.job_id if job else STARTUP_JOB_ID, timing, params, job)

    def _stage_event(
        self,
        job_id: str,
        timing: StageTiming,
        params: JobParams,
        job: Job | None = None,
        first_at_size: bool | None = None,
    ) -> None:
        peak = self.job_memory.peak() if timing.stage in ("denoising", "decode_video") else None
        self.events.emit(stage_event(job_id, self.host_name, self.gpu, timing, params, peak, first_at_size))

    def job_event(self, job: Job, state: str) -> None:
        """Emit a job state change from this worker's device."""
        self.events.emit(job_state_event(job, state, self.host_name, self.gpu))

    def _finish(
        self,
        job: Job,
        state: str,
        *,
        error: str | None = None,
        suggestion: str | None = None,
        video_path: str | None = None,
        peak: PeakMemory | None = None,
    ) -> None:
        self.book.update(
            job,
            state=state,
            finished_at=time.time(),
            error=error,
            suggestion=suggestion,
            video_path=video_path,
            peak_memory_bytes=None if peak is None else peak.reserved_bytes,
            peak_memory_allocated_bytes=None if peak is None else peak.allocated_bytes,
        )
        if job.peak_memory_bytes is not None:
            self.metrics.peak_memory.labels(self.gpu).set(job.peak_memory_bytes)
        if state == "succeeded":
            self.metrics.consecutive_ooms.set(0)
        elif error and error.startswith(OOM_PREFIX):
            self.metrics.consecutive_ooms.inc()
        self.metrics.requests.labels(state).inc()
        self.metrics.request_duration.observe((job.finished_at or time.time()) - job.created_at)
        self.job_event(job, state)
        log.info(
            "job %s %s%s",
            job.job_id,
            state,
            f": {error}" if error else "",
            extra=extra(job_id=job.job_id, gpu=self.gpu, state=state),
        )
