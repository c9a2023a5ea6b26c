"""Synthetic job histories as the generator emits them, and a store of each kind, for the advice and report tests."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.events import Event
from monitor.analysis.job_summary import JobSummarizer
from monitor.analysis.predict import JobShape
from monitor.storage import Point, Store, open_store
from monitor.storage.schema import GPU_SAMPLE
from tests.servers import InfluxServer

S = 1_000_000_000
NOW_S = 1_714_565_400  # 2024-05-01T12:10:00Z
NOW_NS = NOW_S * S
H100 = "NVIDIA H100 80GB HBM3"
GiB = 1024**3
_databases = itertools.count()


def true_peak_bytes(shape: JobShape) -> float:
    """Return the known memory law of the synthetic history (close to the H100's measured one)."""
    return 5.04e9 + 0.6e9 * shape.x


def true_step_s(shape: JobShape) -> float:
    """Return the known time per denoising step of the synthetic history."""
    return 0.015 + 0.055 * shape.x


def true_run_s(shape: JobShape) -> float:
    """Return the known time law of the synthetic history: outside the loop plus the steps."""
    return 0.6 + 0.05 * shape.x + shape.steps * true_step_s(shape)


def iso(epoch_s: float) -> str:
    """Format epoch seconds as the generator does."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_events(
    job_id: str,
    *,
    submitted_s: float,
    shape: JobShape,
    run_s: float,
    peak_bytes: int | None,
    host: str = "node-a",
    gpu: str = "0",
    status: str = "succeeded",
    prompt: str = "a fox in the snow",
    requested: dict[str, Any] | None = None,
    error: str | None = None,
    queued_s: float = 0.5,
    step_s: float | None = None,
) -> list[Event]:
    """Return one job's events in the order and shape the generator emits them (see generator/worker.py).

    Without `step_s`, the run outside the denoising loop takes 0.8 s and the steps the rest of `run_s`; with it,
    the steps take `step_s` each and the VAE decode the rest.
    """
    params = {**shape.to_dict(), "fps": 8, "seed": None}
    started = submitted_s + queued_s
    common = {"job_id": job_id, "host": host, "gpu": gpu, "params": params}
    events = [
        Event(
            kind="job", status="queued", started_at=iso(submitted_s), requested=requested or {}, prompt=prompt, **common
        ),
        Event(
            kind="job", status="running", started_at=iso(started), requested=requested or {}, prompt=prompt, **common
        ),
    ]
    at = started + 0.01
    fixed = {"text_encoding": 0.03, "image_encoding": 0.02, "image_latents": 0.06}
    for stage, seconds in fixed.items():
        events.append(Event(kind="stage", stage=stage, started_at=iso(at), duration_s=seconds, **common))
        at += seconds
    steps = shape.steps if status == "succeeded" else max(shape.steps // 2, 1)
    decode_s = 0.37
    if step_s is None:
        step_s = (run_s - 0.8) / shape.steps
    else:
        decode_s = max(run_s - 0.11 - 0.2 - shape.steps * step_s - 0.01, 0.01)
    loop_start = at
    for step in range(1, steps + 1):
        events.append(
            Event(
                kind="stage",
                stage="denoising_step",
                started_at=iso(at),
                duration_s=step_s,
                step=step,
                total_steps=shape.steps,
                **common,
            )
        )
        at += step_s
    if status == "succeeded":
        events.append(
            Event(
                kind="stage",
                stage="denoising",
                started_at=iso(loop_start),
                duration_s=at - loop_start,
                total_steps=shape.steps,
                peak_memory_bytes=peak_bytes,
                **common,
            )
        )
        events.append(
            Event(
                kind="stage",
                stage="decode_video",
                started_at=iso(at),
                duration_s=decode_s,
                peak_memory_bytes=peak_bytes,
                **common,
            )
        )
        at += decode_s
        events.append(Event(kind="stage", stage="export", started_at=iso(at), duration_s=0.2, **common))
    finished = started + run_s
    events.append(
        Event(
            kind="job",
            status=status,
            started_at=iso(submitted_s),
            duration_s=finished - submitted_s,
            requested=requested or {},
            prompt=prompt,
            error=error,
            video_path=f"/outputs/{job_id}/video.mp4" if status == "succeeded" else None,
            peak_memory_bytes=peak_bytes,
            **common,
        )
    )
    return events


def random_shapes(n: int, seed: int = 7) -> list[JobShape]:
    """Return `n` job shapes drawn from what users ask for."""
    rng = random.Random(seed)
    return [
        JobShape(rng.choice((256, 512, 768, 1024)), rng.choice((8, 16, 24, 32)), rng.choice((10, 25, 50, 80)))
        for _ in range(n)
    ]


def history(
    shapes: list[JobShape],
    *,
    noise: float = 0.01,
    seed: int = 3,
    start_s: float = NOW_S - 3600,
    gpu: str = "0",
    host: str = "node-a",
    peak: Callable[[JobShape], float] = true_peak_bytes,
) -> list[Event]:
    """Return the events of succeeded jobs following the known laws (with relative noise), one every 40 s."""
    rng = random.Random(seed)
    events = []
    for i, shape in enumerate(shapes):
        outside_s = (true_run_s(shape) - shape.steps * true_step_s(shape)) * (1 + rng.gauss(0, noise))
        step_s = true_step_s(shape) * (1 + rng.gauss(0, noise))
        events += job_events(
            f"job-{seed}-{i}",
            submitted_s=start_s + 40 * i,
            shape=shape,
            run_s=outside_s + shape.steps * step_s,
            step_s=step_s,
            peak_bytes=round(peak(shape) * (1 + rng.gauss(0, noise))),
            gpu=gpu,
            host=host,
        )
    return events


def summarize_into(store: Store, events: list[Event]) -> None:
    """Run events through the monitor's job summarizer, writing its points straight to `store`."""
    JobSummarizer(store.write, store).listen(events)


def gpu_sample(
    *,
    used: int,
    total: int = 80 * 10**9,
    own: int | None = None,
    name: str = H100,
    host: str = "node-a",
    gpu: str = "0",
    at_ns: int = NOW_NS - 2 * S,
    **extra: Any,
) -> Point:
    """Return one gpu_sample point as the sampler writes it."""
    fields = {"memory_used_bytes": used, "memory_total_bytes": total, "name": name, "up": True, **extra}
    if own is not None:
        fields["generator_memory_bytes"] = own
    return Point(GPU_SAMPLE, {"host": host, "gpu": gpu}, fields, at_ns)


def open_test_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """Open a fresh store: a SQLite file, or a new database on the session's real influxd."""
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/monitor.db")
    server: InfluxServer = request.getfixturevalue("influxd")
    return open_store(server.store_url(f"advice_{next(_databases)}_{uuid.uuid4().hex[:6]}"))


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Return a fresh store URL of that kind (for a monitor app)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/monitor.db"
    server: InfluxServer = request.getfixturevalue("influxd")
    return server.store_url(f"advice_{next(_databases)}_{uuid.uuid4().hex[:6]}")


def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Yield a store of the kind `request.param` names, closing it afterwards (body of a parametrized fixture)."""
    store = open_test_store(request.param, tmp_path, request)
    yield store
    store.close()
