"""The compiled UNet: its switch and settings, and every compile observed as a stage event, a counter, job notes.

The compiles run dynamo for real on the tiny pipeline with the `eager` backend (tracing, guards, recompiles, no
code generation). They use static shapes, where every new size recompiles: tracing the tiny UNet with dynamic
shapes costs about five times as much CPU, and which sizes share a dynamic graph is the GPU benchmark's question
(`bench/compile_gpu.py` checks every allowed size on the card).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from prometheus_client import generate_latest

from generator.acceleration import Acceleration, Shape, parse_shapes
from generator.config import GeneratorConfig
from generator.events import EventSender
from generator.jobs import Job, JobBook
from generator.metrics import GeneratorMetrics
from generator.validation import JobParams
from generator.worker import Worker
from tests.api.conftest import make_generator_app
from tests.servers import wait_for

CPU = torch.device("cpu")


def test_compile_is_off_until_turned_on(tmp_path: Path) -> None:
    config = GeneratorConfig.from_sources([], {"GENERATOR_STATE_DIR": str(tmp_path)})

    settings = config.acceleration(on_gpu=True)
    assert settings.compile is False
    assert settings.dynamic is False  # static shapes: a graph per warm-up size
    assert settings.cache_dir == tmp_path / "compile-cache"
    assert settings.warmup == (Shape(512, 16), Shape(1024, 16))


@pytest.mark.parametrize(
    ("argv", "environ", "on_gpu"),
    [
        (["--no-compile"], {}, False),
        (["--compile"], {}, True),
        ([], {"GENERATOR_COMPILE": "0"}, False),
        ([], {"GENERATOR_COMPILE": "on"}, True),
        (["--no-compile"], {"GENERATOR_COMPILE": "1"}, False),
    ],
)
def test_the_switch_comes_from_the_flag_over_the_environment(
    argv: list[str], environ: dict[str, str], on_gpu: bool
) -> None:
    config = GeneratorConfig.from_sources(argv, environ)

    assert config.acceleration(on_gpu=True).compile is on_gpu
    # On the CPU inductor would build C++ for minutes per size: the switch is for GPUs.
    assert config.acceleration(on_gpu=False).compile is False


def test_every_setting_has_its_environment_variable(tmp_path: Path) -> None:
    config = GeneratorConfig.from_sources(
        [],
        {
            "GENERATOR_COMPILE_MODE": "max-autotune-no-cudagraphs",
            "GENERATOR_COMPILE_CACHE": str(tmp_path / "cc"),
            "GENERATOR_COMPILE_WARMUP": "256x8, 768x24",
            "GENERATOR_COMPILE_VAE": "yes",
            "GENERATOR_ATTENTION": "cudnn",
            "GENERATOR_CHANNELS_LAST": "1",
        },
    )
    config.validate()

    settings = config.acceleration(on_gpu=True)
    assert settings.mode == "max-autotune-no-cudagraphs"
    assert settings.cache_dir == tmp_path / "cc" / "attention-cudnn"  # a kernel choice torch's keys leave out
    assert settings.warmup == (Shape(256, 8), Shape(768, 24))
    assert (settings.compile_vae, settings.attention, settings.channels_last) == (True, "cudnn", True)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GENERATOR_COMPILE": "maybe"}, "GENERATOR_COMPILE must be one of"),
        ({"GENERATOR_COMPILE": "auto"}, "GENERATOR_COMPILE must be one of"),
        ({"GENERATOR_COMPILE_MODE": "fast"}, "GENERATOR_COMPILE_MODE must be one of"),
        ({"GENERATOR_COMPILE_BACKEND": "tvm"}, "GENERATOR_COMPILE_BACKEND must be one of"),
        ({"GENERATOR_COMPILE_BACKEND": "eager", "GENERATOR_COMPILE_MODE": "reduce-overhead"}, "needs the inductor"),
        ({"GENERATOR_COMPILE_BACKEND": "aoti", "GENERATOR_COMPILE_MODE": "max-autotune"}, "does not apply to packages"),
        ({"GENERATOR_COMPILE_WARMUP": "512"}, "is not RESOLUTIONxFRAMES"),
        ({"GENERATOR_COMPILE_WARMUP": "640x16"}, "outside the API's sizes"),
        ({"GENERATOR_COMPILE_WARMUP": "512x64"}, "outside the API's sizes"),
        ({"GENERATOR_ATTENTION": "sage"}, "GENERATOR_ATTENTION must be one of"),
    ],
)
def test_a_bad_setting_is_refused_with_one_line_naming_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig.from_sources([], environ).validate()


def test_no_warmup_sizes_is_allowed() -> None:
    assert parse_shapes("") == ()


def test_ready_says_what_the_worker_is_compiling(tmp_path: Path) -> None:
    app = make_generator_app(tmp_path)
    worker = app.extensions["generator"].workers[0]
    worker.status = "compiling the UNet for 512x512x16 (1 of 2)"

    answer = app.test_client().get("/ready")

    assert answer.status_code == 503
    assert answer.get_json() == {"ready": False, "reason": "compiling the UNet for 512x512x16 (1 of 2)"}
    app.extensions["generator"].close()


class EventLines(logging.Handler):
    """Keep the events the generator logs (each record carries the whole event it sends to the monitor)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one event."""
        self.events.append(record.event)  # type: ignore[attr-defined]

    def compiles(self, job_id: str) -> list[dict[str, Any]]:
        """Return the compile stage events of one job (or of "startup")."""
        return [e for e in self.events if e["stage"] == "compile" and e["job_id"] == job_id]


class CompiledWorker:
    """A started worker on the tiny model with its UNet compiled (eager backend), and what it reported."""

    def __init__(self, root: Path, acceleration: Acceleration | None = None) -> None:
        self.root = root
        self.lines = EventLines()
        self.event_log = logging.getLogger("generator.event")
        self.event_log_level = self.event_log.level
        self.event_log.setLevel(logging.INFO)
        self.event_log.addHandler(self.lines)
        self.book = JobBook(root / "state", queue_size=4)
        self.metrics = GeneratorMetrics()
        self.worker = Worker(
            book=self.book,
            events=EventSender(None, root / "spool", spool_max_bytes=2**20),
            metrics=self.metrics,
            model="tiny",
            device=CPU,
            dtype=torch.float32,
            outputs=root / "outputs",
            cache_dir=root / "cache",
            host_name="test-host",
            # The worker's own warm-up job is 256x256x8: compiled here first, it does not compile again.
            acceleration=acceleration
            or Acceleration(compile=True, backend="eager", dynamic=False, warmup=(Shape(256, 8),)),
        )

    def start(self) -> None:
        """Start the worker and wait until it is ready (or failed to load)."""
        self.worker.start()
        wait_for(lambda: self.worker.ready.is_set() or self.worker.load_error is not None, 300, "the warm-up")
        assert self.worker.load_error is None

    def run(self, resolution: int, num_frames: int, guidance_scale: float = 9.0) -> Job:
        """Queue a two-step job of this size, wait for its end and return it."""
        params = JobParams(resolution, num_frames, steps=2, guidance_scale=guidance_scale, fps=8, seed=1)
        job_id = uuid.uuid4().hex
        (self.root / "outputs" / job_id).mkdir(parents=True)
        Image.new("RGB", (80, 60), (200, 120, 40)).save(self.root / "outputs" / job_id / "input.png")
        self.book.submit(job_id, "a red fox", params, retry_after_s=1)
        wait_for(lambda: self.book.get(job_id).state not in ("queued", "running"), 300, f"job {job_id} to end")
        job = self.book.get(job_id)
        assert job is not None
        return job

    def counter(self, phase: str) -> float:
        """Return i2v_compiles_total for the UNet in `phase`."""
        value = self.metrics.registry.get_sample_value("i2v_compiles_total", {"module": "unet", "phase": phase})
        assert value is not None
        return value

    @contextlib.contextmanager
    def running(self) -> Iterator[CompiledWorker]:
        """Start the worker and yield it ready; close it however the block ends (a failed start included)."""
        try:
            self.start()
            yield self
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker and let go of the log."""
        self.worker.stop()
        self.event_log.removeHandler(self.lines)
        self.event_log.setLevel(self.event_log_level)
        self.book.close()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledWorker]:
    with CompiledWorker(tmp_path_factory.mktemp("compiled")).running() as handle:
        yield handle


@pytest.mark.slow
def test_the_warmup_compile_is_a_stage_event_with_its_size_and_counted(compiled: CompiledWorker) -> None:
    (event,) = compiled.lines.compiles("startup")

    assert event["params"]["resolution"] == 256
    assert event["params"]["num_frames"] == 8
    assert event["duration_s"] > 0
    assert compiled.counter("warmup") == 1
    assert compiled.counter("job") == 0
    assert compiled.worker.status == "ready"
    assert compiled.worker.watches[0].graphs_total == 1


@pytest.mark.slow
def test_a_warmed_size_runs_without_compiling(compiled: CompiledWorker) -> None:
    job = compiled.run(256, 8)

    assert job.state == "succeeded", job.error
    assert compiled.lines.compiles(job.job_id) == []
    assert not any("compile" in note for note in job.notes)
    assert compiled.counter("job") == 0


@pytest.mark.slow
def test_a_size_the_warmup_did_not_compile_runs_eager_and_says_so(compiled: CompiledWorker) -> None:
    graphs = compiled.worker.watches[0].graphs_total

    job = compiled.run(96, 16)

    assert job.state == "succeeded", job.error
    assert compiled.worker.watches[0].graphs_total == graphs
    assert compiled.lines.compiles(job.job_id) == []
    assert "the UNet runs uncompiled: 96x96x16 is not among the compiled warm-up sizes" in " ".join(job.notes)
    assert compiled.counter("job") == 0


@pytest.mark.slow
def test_a_job_that_waits_for_a_compile_says_so_in_its_notes_events_and_metrics(compiled: CompiledWorker) -> None:
    # What a guard failing on a warmed size looks like: the compiled UNet is chosen, and it builds a graph.
    compiled.worker.compiled_sizes.add(Shape(64, 16))

    job = compiled.run(64, 16)

    assert job.state == "succeeded", job.error
    (event,) = compiled.lines.compiles(job.job_id)
    assert (event["params"]["resolution"], event["params"]["num_frames"]) == (64, 16)
    steps = [e for e in compiled.lines.events if e["job_id"] == job.job_id and e["stage"] == "denoising_step"]
    assert event["duration_s"] == steps[0]["duration_s"]
    (note,) = [note for note in job.notes if "compile" in note]
    assert note.startswith(f"waited {event['duration_s']:.0f} s for the unet to compile for 64x64x16")
    assert compiled.counter("job") == 1
    exposition = generate_latest(compiled.metrics.registry).decode()
    assert 'i2v_compiles_total{module="unet",phase="job"} 1.0' in exposition
    assert 'i2v_stage_duration_seconds_count{stage="compile"} 2.0' in exposition


@pytest.mark.slow
def test_a_job_without_guidance_runs_the_uncompiled_unet(compiled: CompiledWorker) -> None:
    graphs = compiled.worker.watches[0].graphs_total

    job = compiled.run(256, 8, guidance_scale=1.0)

    assert job.state == "succeeded", job.error
    assert compiled.worker.watches[0].graphs_total == graphs
    assert any(note.startswith("guidance_scale 1: the UNet runs uncompiled (one batch") for note in job.notes)
