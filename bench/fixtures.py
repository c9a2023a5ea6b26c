"""Synthetic data shaped like the real thing: 1 s samples, a generator's job events, finished-job summaries.

Samples go through the sampler's own `snapshot_points` and the writer's `schema.conform`, so the points stored
are the ones `python -m monitor` stores; events are `common.events.Event`s in the order a worker emits them.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from common.events import Event
from monitor.analysis.job_summary import FIELD_TYPES as SUMMARY_TYPES
from monitor.analysis.job_summary import JOB_SUMMARY, STAGES
from monitor.collection.host import HostSnapshot
from monitor.collection.nvml import GpuProcess, GpuSnapshot
from monitor.collection.sampler import Snapshot, snapshot_points
from monitor.storage import schema
from monitor.storage.base import Point

S = 1_000_000_000
HOST = "bench-host"
GPU_BYTES = 80 * 1024**3
PROMPT = "a red fox running through fresh snow at sunrise, cinematic"


def sample_points(start_ns: int, count: int, *, gpus: int = 1, step_s: float = 1.0) -> Iterator[Point]:
    """Yield `count` ticks of samples from `start_ns`, `step_s` apart: one point per GPU and one for the host."""
    rng = random.Random(start_ns)
    for i in range(count):
        t_ns = start_ns + round(i * step_s * S)
        busy = (i // 20) % 3 != 0  # 40 s jobs with 20 s gaps
        gpu_snaps = tuple(
            GpuSnapshot(
                index=g,
                uuid=f"GPU-{g:08d}",
                name="NVIDIA H100 80GB HBM3",
                up=True,
                utilization_ratio=(0.97 if busy else 0.0) + 0.02 * rng.random(),
                memory_used_bytes=(13 if busy else 6) * 1024**3 + rng.randrange(1 << 26),
                memory_total_bytes=GPU_BYTES,
                temperature_c=40.0 + 25 * busy + rng.random(),
                power_w=(520.0 if busy else 70.0) + 30 * math.sin(i / 7),
                sm_clock_mhz=1980,
                throttle_reasons=0,
                ecc_errors_corrected=0,
                ecc_errors_uncorrected=0,
                energy_j=1e6 + 300.0 * i if i % 10 == 0 else None,
                energy_age_s=0.0 if i % 10 == 0 else 1.0,
                processes=(GpuProcess(pid=4242, used_memory_bytes=12 * 1024**3),) if i % 5 == 0 else None,
                processes_age_s=0.0,
            )
            for g in range(gpus)
        )
        host = HostSnapshot(
            cpu_ratio=0.1 + 0.05 * rng.random(),
            memory_used_bytes=20 * 1024**3,
            memory_total_bytes=128 * 1024**3,
            generator_pid=4242,
            generator_rss_bytes=9 * 1024**3,
            outputs_disk_free_bytes=500 * 1024**3,
        )
        snapshot = Snapshot(t_ns, HOST, gpu_snaps, host, 4242, True, None)
        yield from (schema.conform(p) for p in snapshot_points(snapshot))


def iso(epoch_s: float) -> str:
    """Format epoch seconds as RFC 3339 UTC, as the generator does."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_events(job_id: str, created_s: float, *, steps: int = 50, gpu: str = "0") -> list[Event]:
    """Return one successful job's events in emission order: queued, running, every stage and step, succeeded."""
    params = {"resolution": 512, "num_frames": 16, "steps": steps, "guidance_scale": 9.0, "fps": 8, "seed": 7}
    common: dict[str, Any] = {"job_id": job_id, "host": HOST, "gpu": gpu, "params": params}
    events = [Event(kind="job", status="queued", started_at=iso(created_s), prompt=PROMPT, **common)]
    t = created_s + 0.5
    events.append(Event(kind="job", status="running", started_at=iso(t), prompt=PROMPT, **common))
    for stage, duration in (("text_encoding", 0.03), ("image_encoding", 0.02), ("image_latents", 0.06)):
        events.append(Event(kind="stage", stage=stage, started_at=iso(t), duration_s=duration, **common))
        t += duration
    denoise_start = t
    for step in range(steps):
        events.append(
            Event(
                kind="stage",
                stage="denoising_step",
                step=step,
                total_steps=steps,
                started_at=iso(t),
                duration_s=0.246,
                **common,
            )
        )
        t += 0.246
    events.append(
        Event(
            kind="stage",
            stage="denoising",
            started_at=iso(denoise_start),
            duration_s=t - denoise_start,
            peak_memory_bytes=7_800_000_000,
            **common,
        )
    )
    for stage, duration in (("decode_video", 0.37), ("export", 0.21)):
        events.append(Event(kind="stage", stage=stage, started_at=iso(t), duration_s=duration, **common))
        t += duration
    events.append(
        Event(
            kind="job",
            status="succeeded",
            started_at=iso(created_s),
            duration_s=t - created_s,
            prompt=PROMPT,
            video_path=f"outputs/{job_id}.mp4",
            peak_memory_bytes=7_800_000_000,
            **common,
        )
    )
    return events


def event_stream(count: int, start_s: float, *, steps: int = 50) -> list[dict[str, Any]]:
    """Return `count` events as wire dicts: whole jobs back to back from `start_s`, the last one cut short."""
    out: list[dict[str, Any]] = []
    t = start_s
    while len(out) < count:
        events = job_events(str(uuid.uuid4()), t, steps=steps)
        out.extend(e.to_dict() for e in events)
        t += 14.0
    return out[:count]


def summary_points(count: int, start_ns: int, *, span_s: float = 86_400.0, hosts: int = 1) -> Iterator[Point]:
    """Yield `count` `job_summary` points spread evenly over `span_s` from `start_ns`, as job_summary writes them."""
    rng = random.Random(count)
    step_ns = round(span_s * S / max(1, count))
    for i in range(count):
        end_ns = start_ns + i * step_ns + rng.randrange(1000)
        run_s = 13.0 + rng.random()
        failed = i % 50 == 49
        fields: dict[str, Any] = {
            "job_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "submitted_at_us": (end_ns // 1000) - round((run_s + 1.5) * 1e6),
            "started_at_us": (end_ns // 1000) - round(run_s * 1e6),
            "queued_s": 1.5,
            "run_s": run_s,
            "total_s": run_s + 1.5,
            "resolution": 512, "num_frames": 16, "steps": 50, "guidance_scale": 9.0, "fps": 8, "seed": i,
            "requested_resolution": 512, "requested_num_frames": 16, "requested_steps": 50,
            "requested_guidance_scale": 9.0, "requested_fps": 8, "requested_seed": i,
            **{f"{stage}_s": 0.05 for stage in STAGES},
            "denoising_s": 12.3,
            "denoising_steps": 50,
            "mean_step_s": 0.246,
            "peak_memory_bytes": 7_800_000_000,
            "prompt": PROMPT if i % 10 else "=HYPERLINK(\"http://example.invalid\", \"a formula-looking prompt\")",
            "error": "CUDA out of memory" if failed else None,
            "suggestion": "lower the resolution" if failed else None,
            "video_path": None if failed else f"outputs/{i}.mp4",
            "complete": True,
        }  # fmt: skip
        tags = {"host": f"{HOST}-{i % hosts}", "gpu": "0", "status": "failed" if failed else "succeeded"}
        yield Point(JOB_SUMMARY, tags, {k: v for k, v in fields.items() if k in SUMMARY_TYPES}, end_ns)
