"""The read API under /monitor/api/: series, jobs, one job, status; every error is JSON saying what to do.

- `GET series?measurement=gpu_sample|host_sample&window=5m&host=&gpu=&fields=a,b`: per tag set, buckets of
  mean and max, downsampled by the store so any window returns at most about `MAX_BUCKETS` buckets.
- `GET jobs?window=24h&host=&limit=50`: jobs with an event in the window, newest first.
- `GET jobs/<id>?window=7d`: one job's events in order, its stage breakdown, error and suggestion.
- `GET status`: store, spool, writer and sampler health.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from common import openapi
from monitor.analysis import jobs
from monitor.storage.base import StoreRejected, StoreUnavailable
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, JOB_EVENT, NUMERIC_FIELDS, iso_from_us, point_to_event

if TYPE_CHECKING:
    from monitor.web.app import MonitorContext

MAX_BUCKETS = 300
MAX_WINDOW_S = 90 * 86_400
MAX_JOB_EVENTS = 100_000
_WINDOW = re.compile(r"^(\d{1,7})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

bp = Blueprint("api", __name__, url_prefix="/monitor/api")


class BadRequest(ValueError):
    """A query parameter that cannot be served; the message says what to send instead."""


def init_app(app: Flask) -> None:
    """Register the read API (it reads the MonitorContext the app factory attached) and /openapi.json."""
    app.register_blueprint(bp)
    openapi.register(app, Path(__file__).with_name("openapi.yaml"))


def _context() -> MonitorContext:
    from monitor.web.app import get_context  # the app module imports this one

    return get_context(current_app)


@bp.errorhandler(BadRequest)
def _bad_request(error: BadRequest) -> ResponseReturnValue:
    return jsonify(error=str(error)), 400


@bp.errorhandler(StoreUnavailable)
def _store_down(error: StoreUnavailable) -> ResponseReturnValue:
    message = f"the store is unreachable ({error}); samples are spooled and replayed when it answers"
    return jsonify(error=message), 503


@bp.errorhandler(StoreRejected)
def _store_refused(error: StoreRejected) -> ResponseReturnValue:
    return jsonify(error=f"the store refused the query: {error}"), 400


def parse_window(text: str | None, default: str) -> int:
    """Return a window such as `5m`, `1h`, `24h`, `7d` or `300s` in seconds (BadRequest if unreadable)."""
    value = (text or default).strip()
    match = _WINDOW.match(value)
    if not match:
        raise BadRequest(f"window must be a number and a unit s, m, h or d (e.g. 5m, 1h, 24h), got {value!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise BadRequest(f"window must be between 1s and {MAX_WINDOW_S // 86_400}d, got {value!r}")
    return seconds


def _tag_filter(*names: str) -> dict[str, str]:
    filters = {}
    for name in names:
        value = request.args.get(name)
        if value is None or value == "":
            continue
        if len(value) > 200 or "\n" in value:
            raise BadRequest(f"{name} must be a name of at most 200 characters")
        filters[name] = value
    return filters


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer between {low} and {high}, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


@bp.get("/series")
def series() -> ResponseReturnValue:
    """Return a window of GPU or host samples, bucketed server-side, one series per tag set."""
    ctx = _context()
    measurement = request.args.get("measurement", GPU_SAMPLE)
    if measurement not in NUMERIC_FIELDS:
        raise BadRequest(f"measurement must be {GPU_SAMPLE} or {HOST_SAMPLE}, got {measurement!r}")
    known = NUMERIC_FIELDS[measurement]
    fields = [f for f in request.args.get("fields", "").split(",") if f] or list(known)
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} for {measurement}; known: {', '.join(known)}")
    window_s = parse_window(request.args.get("window"), "1h")
    bucket_s = max(1, math.ceil(window_s / MAX_BUCKETS))
    end_ns = ctx.clock_ns()
    start_ns = end_ns - window_s * 1_000_000_000
    tags = _tag_filter("host", "gpu") if measurement == GPU_SAMPLE else _tag_filter("host")
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
            }
        )
    return jsonify(
        measurement=measurement,
        window_s=window_s,
        bucket_s=bucket_s,
        start=iso_from_us(start_ns // 1000),
        end=iso_from_us(end_ns // 1000),
        fields=fields,
        series=list(out.values()),
    )


def _events(ctx: MonitorContext, window_s: int, **filters: Any) -> list[dict[str, Any]]:
    end_ns = ctx.clock_ns() + 60 * 1_000_000_000  # events carry the generator's clock: allow a little skew
    start_ns = end_ns - (window_s + 60) * 1_000_000_000
    # Newest first, so that a window holding more than MAX_JOB_EVENTS events loses its oldest jobs, not its newest
    # (the jobs list is newest first; a job's events are ordered again where it is summarised).
    points = ctx.store.query_points(JOB_EVENT, start_ns, end_ns, limit=MAX_JOB_EVENTS, descending=True, **filters)
    return [point_to_event(p) for p in points]


@bp.get("/jobs")
def list_jobs() -> ResponseReturnValue:
    """Return the jobs with events in the window, newest first, each with its stage breakdown."""
    ctx = _context()
    window_s = parse_window(request.args.get("window"), "24h")
    limit = _int_arg("limit", 50, 1, 500)
    events = _events(ctx, window_s, tags=_tag_filter("host"))
    summaries = [jobs.summarize(job_id, evs) for job_id, evs in jobs.group_by_job(events).items()]
    summaries.sort(key=lambda j: j["last_event_at"], reverse=True)
    return jsonify(window_s=window_s, count=len(summaries[:limit]), jobs=summaries[:limit])


@bp.get("/jobs/<job_id>")
def job_detail(job_id: str) -> ResponseReturnValue:
    """Return one job: every event in order, the stage breakdown, the error and its suggestion."""
    ctx = _context()
    if len(job_id) > 200:
        raise BadRequest("job id must be at most 200 characters")
    window_s = parse_window(request.args.get("window"), "7d")
    events = _events(ctx, window_s, fields={"job_id": job_id})
    if not events:
        message = f"no events for job {job_id!r} in the last {window_s} s: check the id or widen ?window=30d"
        return jsonify(error=message), 404
    return jsonify(jobs.detail(job_id, events))


@bp.get("/status")
def status() -> ResponseReturnValue:
    """Return the monitor's health: store reachability, spool, drops, errors, and the sampler's health."""
    ctx = _context()
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
        ingest=ctx.ingest_counts(),
    )
