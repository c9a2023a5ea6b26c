"""One `job_summary` point per finished job, written as the job ends: what reports, predictions and stats read.

A job's events are many (about 60 for 50 denoising steps); a report of 100,000 jobs cannot rebuild each job
from them. So the monitor keeps the events of each job still running (in memory, bounded), and when the job's
end state arrives it summarises them with `monitor.analysis.jobs.summarize` (the same reading as `GET /jobs`) and
writes one point:

- `job_summary` {host, gpu, status}: time = the end event's point time (so a replayed end event rewrites the
  same point); fields: `job_id`, `submitted_at_us`/`started_at_us` (epoch µs), `queued_s`, `run_s`
  (running → end: the generation time), `total_s`, the effective parameters (`resolution`, `num_frames`,
  `steps`, `guidance_scale`, `fps`, `seed`) and the requested ones (`requested_*`, equal when nothing was
  degraded), each stage's seconds (`<stage>_s`), `denoising_steps`, `mean_step_s`, `median_step_s`, the first
  step's seconds `first_step_s` and its warm-up `warmup_s` (beyond the median step), `first_at_size` (the
  generator's word that the job's size was new to its process: the jobs that paid the one-off warm-up), the job's
  peak memory three ways (below), `prompt`, `error`, `suggestion`, `video_path`, `notes` (admission's, a line each),
  `gpu_seconds` (run_s on a GPU: the GPU time the job held; blank on a CPU), and `complete` (false when some of
  the job's events were not seen, e.g. it began before this monitor started and the store could not supply
  them). `energy_j` is added once the GPU's energy counter has a reading after the job's end
  (monitor/analysis/energy.py).

Peak memory, in bytes:
- `peak_memory_bytes`: what the generator reports, torch's reserved peak during this job alone (it empties the
  allocator's cache between jobs): what the card had to give the job, weights included. The predictor learns
  from this one.
- `peak_memory_allocated_bytes`: the generator's peak held by live tensors (below the reserved peak by the
  allocator's cache and fragmentation).
- `nvml_peak_memory_bytes`: the most NVML saw the generator's process use between the job's running and end
  events (`gpu_sample` `generator_memory_bytes`): the driver's view, which adds the CUDA context and anything
  outside torch, but is sampled (every sample interval, so a short peak can fall between two samples, and the
  samples of the last second may not be stored yet when the job's end arrives).

When the end event arrives for a job whose first events this process never saw (the monitor restarted in
between), its events are read back from the store (one small query over the job's own time span).

`summary_row` reads a point back as the jobs list's row, and the summarizer's `live_rows` gives the rows of
the jobs still open: the jobs list (monitor/analysis/job_list.py) is built from these, never from events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from common.events import FINAL_STATES, PARAM_NAMES, Event, parse_iso
from common.units import NS_PER_S
from monitor.analysis import jobs
from monitor.storage import schema
from monitor.storage.base import FieldValue, Point, Store, StoreRejected, StoreUnavailable
from monitor.storage.schema import (
    GPU_SAMPLE,
    JOB_EVENT,
    JOB_SUMMARY,
    event_time_ns,
    event_to_point,
    iso_from_us,
    point_to_event,
)

log = logging.getLogger(__name__)

STAGES = ("text_encoding", "image_encoding", "image_latents", "denoising", "decode_video", "export")
NOT_JOBS = ("model_load", "warmup")  # the worker's start-up stages, under the job id "startup"
NVML_FIELD = "generator_memory_bytes"
NVML_BUCKET_S = 3600  # a job's span in a bucket or two, read from the 12 s rollups in between
RECENTLY_WRITTEN = 32  # summaries kept for the jobs list while the writer delivers them

FIELD_TYPES: dict[str, str] = {
    "job_id": "str",
    "submitted_at_us": "int",
    "started_at_us": "int",
    "queued_s": "float",
    "run_s": "float",
    "total_s": "float",
    **{name: "float" if name == "guidance_scale" else "int" for name in PARAM_NAMES},
    **{f"requested_{name}": "float" if name == "guidance_scale" else "int" for name in PARAM_NAMES},
    **{f"{stage}_s": "float" for stage in STAGES},
    "denoising_steps": "int",
    "mean_step_s": "float",
    "median_step_s": "float",
    "first_step_s": "float",
    "warmup_s": "float",
    "first_at_size": "bool",
    "peak_memory_bytes": "int",
    "peak_memory_allocated_bytes": "int",
    "nvml_peak_memory_bytes": "int",
    "prompt": "str",
    "error": "str",
    "suggestion": "str",
    "video_path": "str",
    "notes": "str",
    "gpu_seconds": "float",
    "energy_j": "float",
    "complete": "bool",
}


schema.declare_fields(JOB_SUMMARY, FIELD_TYPES)  # so the writer's `conform` keeps each field's type


def _us(iso: str | None) -> int | None:
    return None if iso is None else schema._to_us(parse_iso(iso))


def summary_point(
    job_id: str,
    events: Sequence[dict[str, Any]],
    end: dict[str, Any],
    end_ns: int,
    nvml_peak_bytes: int | None = None,
) -> Point:
    """Summarise a finished job's events (dicts as `point_to_event` makes them) as its `job_summary` point."""
    summary = jobs.summarize(job_id, events)
    params = summary["params"]
    requested = summary["requested"] or params
    stages = summary["stages"]
    denoising = stages.get("denoising", {})
    fields: dict[str, FieldValue] = {
        "job_id": job_id,
        "submitted_at_us": _us(summary["submitted_at"]),
        "started_at_us": _us(summary["started_at"]),
        "queued_s": summary["queued_s"],
        "run_s": summary["run_s"],
        "total_s": summary["total_s"],
        **{name: params.get(name) for name in PARAM_NAMES},
        **{f"requested_{name}": requested.get(name) for name in PARAM_NAMES},
        **{f"{stage}_s": stages[stage]["duration_s"] if stage in stages else None for stage in STAGES},
        "denoising_steps": denoising.get("steps"),
        "mean_step_s": denoising.get("mean_step_s"),
        "median_step_s": denoising.get("median_step_s"),
        "first_step_s": denoising.get("first_step_s"),
        "warmup_s": denoising.get("warmup_s"),
        "first_at_size": denoising.get("first_at_size"),
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "peak_memory_allocated_bytes": summary["peak_memory_allocated_bytes"],
        "nvml_peak_memory_bytes": nvml_peak_bytes,
        "prompt": summary["prompt"],
        "error": summary["error"],
        "suggestion": summary["suggestion"],
        "video_path": summary["video_path"],
        "notes": "\n".join(summary["notes"]) or None,
        "gpu_seconds": summary["gpu_seconds"],
        "complete": any(e["kind"] == "job" and e.get("status") == "queued" for e in events),
    }
    tags = {"host": end["host"], "gpu": end["gpu"], "status": end["status"]}
    return schema.conform(Point(JOB_SUMMARY, tags, fields, end_ns))


def _iso(us: FieldValue) -> str | None:
    return iso_from_us(us) if isinstance(us, int) else None


def _stages(fields: Mapping[str, FieldValue]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        seconds = fields.get(f"{stage}_s")
        if seconds is not None:
            stages[stage] = {"duration_s": seconds, "count": 1}  # the generator reports each stage once
    if "denoising" in stages and fields.get("denoising_steps") is not None:
        stages["denoising"].update(
            steps=fields["denoising_steps"],
            mean_step_s=fields.get("mean_step_s"),
            median_step_s=fields.get("median_step_s"),
            first_step_s=fields.get("first_step_s"),
            warmup_s=fields.get("warmup_s"),
            first_at_size=fields.get("first_at_size"),
        )
    return stages


def summary_row(point: Point) -> dict[str, Any]:
    """Return the job's row as `jobs.summarize` gives it (the jobs list's row), read back from its point."""
    f = point.fields
    status = point.tags.get("status")
    ended = iso_from_us(point.time_ns // 1000)  # the summary's time is its end event's
    params = {name: f[name] for name in PARAM_NAMES if f.get(name) is not None}
    requested = {name: f[f"requested_{name}"] for name in PARAM_NAMES if f.get(f"requested_{name}") is not None}
    job_id = f.get("job_id")
    return {
        "job_id": job_id,
        "state": status,
        **jobs.deprecated_aliases(job_id if isinstance(job_id, str) else None, status),
        "host": point.tags.get("host"),
        "gpu": point.tags.get("gpu"),
        "params": params,
        "requested": {} if requested == params else requested,  # as the events say it: only when degraded
        "prompt": f.get("prompt"),
        "video_path": f.get("video_path"),
        "error": f.get("error"),
        "suggestion": f.get("suggestion"),
        "notes": str(f["notes"]).split("\n") if f.get("notes") else [],
        "peak_memory_bytes": f.get("peak_memory_bytes"),
        "peak_memory_allocated_bytes": f.get("peak_memory_allocated_bytes"),
        "gpu_seconds": f.get("gpu_seconds"),
        "energy_j": f.get("energy_j"),
        "submitted_at": _iso(f.get("submitted_at_us")),
        "started_at": _iso(f.get("started_at_us")),
        "finished_at": ended if status in FINAL_STATES else None,
        "queued_s": f.get("queued_s"),
        "run_s": f.get("run_s"),
        "total_s": f.get("total_s"),
        "stages": _stages(f),
        "last_event_at": ended,
    }


class JobSummarizer:
    """Hear ingested events (an ingest listener); write one `job_summary` point when each job ends.

    Args:
        write: where points go (the monitor's `Writer.write`).
        store: read back a job's earlier events when this process did not see them; None: never.
        on_summary: called with each written point (the predictor refits on new jobs).
        max_open_jobs: jobs followed at once; the longest-silent one is summarised as it stands beyond it.
        stale_after_s: a job silent this long is summarised as it stands (its generator died unheard).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Point]], None],
        store: Store | None = None,
        *,
        on_summary: Callable[[Point], None] | None = None,
        max_open_jobs: int = 1000,
        stale_after_s: float = 6 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write, self._store, self._on_summary = write, store, on_summary
        self._max_open, self._stale_after_s, self._clock = max_open_jobs, stale_after_s, clock
        self._open: OrderedDict[str, tuple[float, list[Event]]] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._state_changes = 0
        self._written: deque[Point] = deque(maxlen=RECENTLY_WRITTEN)
        self._lock = threading.Lock()

    def open_jobs(self) -> int:
        """Return how many jobs are being followed."""
        with self._lock:
            return len(self._open)

    @property
    def state_changes(self) -> int:
        """Return how many job state events (queued, running, an end) this process has heard.

        The dashboard reads it from /status and refetches the jobs list only when it moved.
        """
        with self._lock:
            return self._state_changes

    def live_rows(self, host: str | None = None) -> list[dict[str, Any]]:
        """Return the jobs list's rows this summarizer holds: the jobs it wrote last, then every job still open.

        The summaries written last may still be on their way to the store when the dashboard, told that a job
        changed state, asks for the list. An open job whose state events were not heard (the monitor started
        while it ran) shows as running: only a running job sends stage events.
        """
        with self._lock:
            held = [(job_id, list(events)) for job_id, (_, events) in self._open.items()]
            written = list(self._written)
        rows = [summary_row(p) for p in written if host is None or p.tags.get("host") == host]
        for job_id, events in held:
            if host is not None and events[-1].host != host:
                continue
            row = jobs.summarize(job_id, [point_to_event(event_to_point(e)) for e in events])
            row["state"] = row["status"] = row["state"] or "running"
            rows.append(row)
        return rows

    def listen(self, events: Sequence[Event]) -> None:
        """Follow each event's job; summarise and write the jobs that ended in this batch."""
        ended: list[tuple[str, list[Event], Event]] = []
        now = self._clock()
        with self._lock:
            for event in events:
                if event.kind == "job" and event.status is not None:
                    self._state_changes += 1
                if event.stage in NOT_JOBS or event.job_id in self._done:
                    continue
                _, held = self._open.pop(event.job_id, (now, []))
                held.append(event)
                if event.kind == "job" and event.status in FINAL_STATES:
                    ended.append((event.job_id, held, event))
                    self._remember_done(event.job_id)
                else:
                    self._open[event.job_id] = (now, held)
            stale = self._evict(now)
        points = [self._summarise(job_id, held, end) for job_id, held, end in ended]
        points += [self._summarise(job_id, held, None) for job_id, held in stale]
        if points:
            self._write(points)
            with self._lock:
                self._written.extend(points)
            for point in points:
                if self._on_summary is not None:
                    self._on_summary(point)

    def _remember_done(self, job_id: str) -> None:
        self._done[job_id] = None
        while len(self._done) > 10 * self._max_open:
            self._done.popitem(last=False)

    def _evict(self, now: float) -> list[tuple[str, list[Event]]]:
        stale = []
        while self._open:
            job_id, (seen, held) = next(iter(self._open.items()))
            if len(self._open) <= self._max_open and now - seen < self._stale_after_s:
                break
            del self._open[job_id]
            self._remember_done(job_id)
            stale.append((job_id, held))
        return stale

    def _summarise(self, job_id: str, held: list[Event], end: Event | None) -> Point:
        """Build the job's point from its events, reading back from the store those this process missed."""
        dicts = {e.event_id: point_to_event(event_to_point(e)) for e in held}
        complete = any(e.kind == "job" and e.status == "queued" for e in held)
        if not complete and end is not None and self._store is not None:
            dicts = {**self._read_back(job_id, end), **dicts}
        events = list(dicts.values())
        if end is None:  # never ended: summarised as it stands, as of its last event
            last = max(events, key=lambda e: e["ended_at"])
            end_ns = _us(last["ended_at"]) * 1000  # type: ignore[operator]  # every stored event has ended_at
            return summary_point(job_id, events, {**last, "status": "unfinished"}, end_ns)
        end_ns = event_time_ns(end)
        running = next((e for e in events if e["kind"] == "job" and e.get("status") == "running"), None)
        nvml_peak = None if running is None else self._nvml_peak(end.host, end.gpu, _us(running["started_at"]), end_ns)
        return summary_point(job_id, events, point_to_event(event_to_point(end)), end_ns, nvml_peak)

    def _nvml_peak(self, host: str, gpu: str, running_us: int | None, end_ns: int) -> int | None:
        """Return the most NVML saw the generator's process hold on the job's GPU while it ran (None: unknown)."""
        if self._store is None or running_us is None or gpu == "cpu":
            return None
        try:
            rows = self._store.query_window(
                GPU_SAMPLE, [NVML_FIELD], running_us * 1000, end_ns + 1, {"host": host, "gpu": gpu}, NVML_BUCKET_S
            )
        except (StoreUnavailable, StoreRejected) as e:
            log.warning("job on %s/%s: NVML's peak for it could not be read (%s); left empty", host, gpu, e)
            return None
        peaks = [row.max.get(NVML_FIELD) for row in rows]
        known = [int(peak) for peak in peaks if peak is not None]
        return max(known) if known else None

    def _read_back(self, job_id: str, end: Event) -> dict[str, dict[str, Any]]:
        start_ns = _us(end.started_at) * 1000 - 60 * NS_PER_S  # type: ignore[operator]  # validated at ingest
        end_ns = event_time_ns(end) + 1
        try:
            assert self._store is not None  # read back only where a store was given (the caller checks)
            points = self._store.query_points(JOB_EVENT, start_ns, end_ns, fields={"job_id": job_id})
        except (StoreUnavailable, StoreRejected) as e:
            log.warning(
                "job %s: its earlier events could not be read back (%s); summarised from what was heard", job_id, e
            )
            return {}
        return {str(p.fields["event_id"]): point_to_event(p) for p in points if p.fields.get("event_id")}
