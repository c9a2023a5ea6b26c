"""The read API under /monitor/api/: series, jobs, one job, status; every error is JSON saying what to do.

- `GET series?measurement=gpu_sample|host_sample&window=5m&host=&gpu=&uuid=&fields=a,b[&after_ms=]`: per tag set,
  buckets of mean and max, downsampled by the store so any window returns at most about `MAX_BUCKETS` buckets.
  With `after_ms` (the start of the newest bucket a client holds) only the buckets from that one on: the
  dashboard's live view asks for what is new each period instead of reading its whole window again (buckets
  start at multiples of the window's bucket size, so the same bucket comes back with its later samples in).
- `GET jobs?window=24h&host=&limit=50`: jobs that ended in the window (their stored summaries) and those still
  open, newest first (monitor/analysis/job_list.py).
- `GET jobs/<id>?window=7d`: one job's events in order, its stage breakdown, error and suggestion.
- `GET status`: store, spool, writer and sampler health; job state changes heard (the dashboard refetches the
  jobs list when they move); the clips waiting to be scored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from common import openapi
from common.units import NS_PER_S
from monitor.analysis import job_list, jobs
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, JOB_EVENT, NUMERIC_FIELDS, iso_from_us, point_to_event
from monitor.web.context import MonitorContext, get_context
from monitor.web.params import BadRequest, arg_int, arg_tags, arg_window_s
from monitor.web.viewer import viewer

MAX_BUCKETS = 300
MAX_JOB_EVENTS = 100_000

bp = Blueprint("api", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Register the read API and /openapi.json."""
    app.register_blueprint(bp)
    openapi.register(app, Path(__file__).with_name("openapi.yaml"))


@bp.get("/series")
def series() -> ResponseReturnValue:
    """Return a window of GPU or host samples, bucketed server-side, one series per tag set."""
    ctx = get_context()
    measurement = request.args.get("measurement", GPU_SAMPLE)
    if measurement not in NUMERIC_FIELDS:
        raise BadRequest(f"measurement must be {GPU_SAMPLE} or {HOST_SAMPLE}, got {measurement!r}")
    known = NUMERIC_FIELDS[measurement]
    fields = [f for f in request.args.get("fields", "").split(",") if f] or list(known)
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} for {measurement}; known: {', '.join(known)}")
    window_s = arg_window_s("1h")
    bucket_s = max(1, math.ceil(window_s / MAX_BUCKETS))
    end_ns = ctx.clock_ns()
    start_ns = end_ns - window_s * NS_PER_S
    window_start_ns = start_ns
    after_ms = arg_int("after_ms", 0, 0, 2**53) if request.args.get("after_ms") else None
    if after_ms is not None:
        bucket_ns = bucket_s * NS_PER_S
        start_ns = max(start_ns, after_ms * 1_000_000 // bucket_ns * bucket_ns)
    # uuid follows one card whatever its index: a card moved between slots is one history (two index tags).
    tags = arg_tags("host", "gpu", "uuid") if measurement == GPU_SAMPLE else arg_tags("host")
    rows = ctx.store.query_window(measurement, fields, start_ns, end_ns, tags=tags, bucket_s=bucket_s)
    out: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(sorted(row.tags.items()))
        entry = out.setdefault(key, {"tags": dict(row.tags), "points": []})
        entry["points"].append(
            {
                "time": iso_from_us(row.time_ns // 1000),
                "t_ms": row.time_ns // 1_000_000,
                "mean": dict(row.mean),
                "max": dict(row.max),
                "count": dict(row.count),
                "samples": row.samples,
            }
        )
    return jsonify(
        measurement=measurement,
        window_s=window_s,
        bucket_s=bucket_s,
        start=iso_from_us(window_start_ns // 1000),
        end=iso_from_us(end_ns // 1000),
        after_ms=after_ms,
        fields=fields,
        series=list(out.values()),
    )


def _events(ctx: MonitorContext, window_s: int, **filters: Any) -> list[dict[str, Any]]:
    end_ns = ctx.clock_ns() + 60 * NS_PER_S  # events carry the generator's clock: allow a little skew
    start_ns = end_ns - (window_s + 60) * NS_PER_S
    # Newest first, so that past MAX_JOB_EVENTS the oldest are the ones left out (`jobs.detail` orders them again).
    points = ctx.store.query_points(JOB_EVENT, start_ns, end_ns, limit=MAX_JOB_EVENTS, descending=True, **filters)
    return [point_to_event(p) for p in points]


@bp.get("/jobs")
@viewer  # jobs carry their prompts
def list_jobs() -> ResponseReturnValue:
    """Return the jobs that ended in the window and those still open, newest first, with their stage breakdown."""
    ctx = get_context()
    window_s = arg_window_s("24h")
    limit = arg_int("limit", 50, 1, 500)
    host = arg_tags("host").get("host")
    rows = job_list.recent_jobs(ctx.store, ctx.summarizer.live_rows, ctx.clock_ns(), window_s, limit, host)
    return jsonify(window_s=window_s, count=len(rows), jobs=rows)


@bp.get("/jobs/<job_id>")
@viewer
def job_detail(job_id: str) -> ResponseReturnValue:
    """Return one job: every event in order, the stage breakdown, the error and its suggestion."""
    ctx = get_context()
    if len(job_id) > 200:
        raise BadRequest("job id must be at most 200 characters")
    window_s = arg_window_s("7d")
    events = _events(ctx, window_s, fields={"job_id": job_id})
    if not events:
        message = f"no events for job {job_id!r} in the last {window_s} s: check the id or widen ?window=30d"
        return jsonify(error=message), 404
    return jsonify(jobs.detail(job_id, events))


@bp.get("/status")
def status() -> ResponseReturnValue:
    """Return the monitor's health: store reachability, spool, drops, errors, and the sampler's health."""
    ctx = get_context()
    writer = ctx.writer.health()
    sampler = ctx.sampler.health() if ctx.sampler is not None else None
    return jsonify(
        host_name=ctx.config.host_name,
        store_url=ctx.redacted_store_url,
        store_reachable=writer.store_reachable,
        spool_pending=writer.spool_pending_points,
        spool_bytes=writer.spool_bytes,
        dropped=writer.points_dropped_total,
        rejected=writer.points_rejected_total,
        store_errors=writer.store_errors_total,
        last_write_at=writer.last_write_at,
        last_sample_time=None if sampler is None else sampler.get("last_sample_time_s"),
        sampler_lag_s=None if sampler is None else sampler.get("lag_s"),
        gpu_count=None if sampler is None else sampler.get("gpu_count"),
        writer=writer.to_dict(),
        sampler=sampler,
        ingest=ctx.ingest.counts(),
        event_hosts=sorted(ctx.ingest.event_hosts),
        job_state_changes=ctx.summarizer.state_changes,
        quality=None if ctx.quality is None else ctx.quality.status(),
    )
