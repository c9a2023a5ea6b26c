"""Predictions, recommendations and run-time statistics under /monitor/api, and the parts behind them.

- `GET predict?resolution=512&frames=16&steps=50[&guidance=9][&gpu=0|<model name>][&host=]`: predicted peak
  memory and generation time with their margins, how they were made (prior or learned, from how many jobs),
  and whether the job fits the GPU's memory now (`fits`: null when the GPU has no recent sample).
- `GET predict/laws`: what the predictor has learned, per GPU model.
- `GET recommendation[?gpu=][&host=][&guidance=9][&max_time_s=]`: the best parameters that fit now, their
  prediction, the seed tier that is the floor, the reason in words, and every candidate as predicted.
- `GET summary?window=7d[&host=][&gpu=]`: per GPU model and configuration (resolution, frames, steps): jobs,
  succeeded, failed, cancelled, success rate, and the fastest, median and p95 generation time (running → end)
  of the succeeded ones.

`init_app` also subscribes the job summarizer (monitor/analysis/job_summary.py) to ingested events, and registers the
CSV reports (monitor/analysis/reports.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from monitor.analysis import reports
from monitor.analysis.devices import DeviceState, ModelNames, live_devices
from monitor.analysis.job_summary import JOB_SUMMARY, JobSummarizer
from monitor.analysis.predict import RESOLUTIONS, JobShape, Predictor
from monitor.analysis.recommend import recommend
from monitor.storage.base import Point, StoreRejected, StoreUnavailable
from monitor.storage.pages import iter_points
from monitor.web.api import BadRequest, parse_window

if TYPE_CHECKING:
    from monitor.web.app import MonitorContext

PREDICTOR = "predictor"
SUMMARIZER = "job_summarizer"
FRAMES = (8, 32)
STEPS = (10, 100)
GUIDANCE = (1.0, 20.0)
GB = 1e9
S = 1_000_000_000

bp = Blueprint("advice", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Attach the predictor, subscribe the job summarizer to ingested events, register these routes and reports."""
    from monitor.web.app import get_context  # the app module imports this one

    ctx = get_context(app)
    predictor = Predictor(ctx.store, clock_ns=ctx.clock_ns)
    # Durable like the events it is made from: a summary only buffered would be lost with a killed monitor.
    summarizer = JobSummarizer(ctx.writer.write_durable, ctx.store, on_summary=predictor.mark_dirty)
    ctx.event_listeners.append(summarizer.listen)
    app.extensions[PREDICTOR] = predictor
    app.extensions[SUMMARIZER] = summarizer
    app.register_blueprint(bp)
    reports.init_app(app)


def _context() -> MonitorContext:
    from monitor.web.app import get_context

    return get_context(current_app)


def _predictor() -> Predictor:
    predictor: Predictor = current_app.extensions[PREDICTOR]
    return predictor


@bp.errorhandler(BadRequest)
def _bad_request(error: BadRequest) -> ResponseReturnValue:
    return jsonify(error=str(error)), 400


@bp.errorhandler(StoreUnavailable)
def _store_down(error: StoreUnavailable) -> ResponseReturnValue:
    return jsonify(error=f"the store is unreachable ({error}); try again when it answers"), 503


@bp.errorhandler(StoreRejected)
def _store_refused(error: StoreRejected) -> ResponseReturnValue:
    return jsonify(error=f"the store refused the query: {error}"), 400


def _number(name: str, low: float, high: float, *, default: float | None = None, integer: bool = True) -> float:
    text = request.args.get(name)
    kind = "an integer" if integer else "a number"
    if text is None or text == "":
        if default is None:
            raise BadRequest(f"{name} is required: {kind} from {low:g} to {high:g}")
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise BadRequest(f"{name} must be {kind} from {low:g} to {high:g}, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"{name} must be from {low:g} to {high:g}, got {text!r}")
    return value


def _name(arg: str) -> str | None:
    value = request.args.get(arg)
    if not value:
        return None
    if len(value) > 200 or "\n" in value or "\r" in value:
        raise BadRequest(f"{arg} must be a name of at most 200 characters")
    return value


def _shape() -> JobShape:
    resolution = int(_number("resolution", min(RESOLUTIONS), max(RESOLUTIONS)))
    if resolution not in RESOLUTIONS:
        raise BadRequest(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {resolution}")
    frames = int(_number("frames", *FRAMES))
    steps = int(_number("steps", *STEPS))
    guidance = _number("guidance", *GUIDANCE, default=9.0, integer=False)
    return JobShape(resolution, frames, steps, guidance)


def _matching(devices: Iterable[DeviceState], gpu: str | None) -> list[DeviceState]:
    if gpu is None:
        return list(devices)
    return [d for d in devices if gpu in (d.gpu, d.model) or gpu.lower() == d.model.lower()]


def _describe(devices: list[DeviceState]) -> str:
    return ", ".join(f"{d.host}/{d.gpu} ({d.model})" for d in devices) or "none"


@bp.get("/predict")
def predict() -> ResponseReturnValue:
    """Predict a job's peak memory and time on a GPU, and say whether it fits that GPU's memory now."""
    ctx = _context()
    shape = _shape()
    gpu, host = _name("gpu"), _name("host")
    now_ns = ctx.clock_ns()
    devices = live_devices(ctx.store, now_ns, host)
    matches = _matching(devices, gpu)
    device = matches[0] if matches else None
    if gpu is None and len(devices) > 1:
        raise BadRequest(f"the monitor sees several GPUs: pass gpu= one of {_describe(devices)}")
    if device is not None:
        model: str | None = device.model
    elif gpu is not None and host is not None:
        model = ModelNames(ctx.store, now_ns).name(host, gpu)  # no recent sample: its last known model
    else:
        model = gpu  # a model name, or unknown (the prior answers)
    prediction = _predictor().predict(shape, model)
    need = prediction.estimate_bytes
    if device is None:
        fits = None
        reason = f"no recent sample of GPU {gpu or '(any)'}: seen now: {_describe(devices)}; fit not judged"
    else:
        fits = need <= device.available_bytes
        verdict = "fits" if fits else "does not fit"
        reason = (
            f"{verdict}: about {need / GB:.1f} GB with its margin against {device.available_bytes / GB:.1f} GB usable "
            f"now on {device.model} {device.host}/{device.gpu}"
        )
    return jsonify(
        {**prediction.to_dict(), "gpu": None if device is None else device.to_dict(), "fits": fits, "reason": reason}
    )


@bp.get("/predict/laws")
def laws() -> ResponseReturnValue:
    """Return what the predictor has learned: jobs and coefficients per GPU model, and when it last fitted."""
    return jsonify(_predictor().status())


@bp.get("/recommendation")
def recommendation() -> ResponseReturnValue:
    """Return the best parameters that fit the GPU's memory now, their prediction and the reason in words."""
    ctx = _context()
    gpu, host = _name("gpu"), _name("host")
    guidance = _number("guidance", *GUIDANCE, default=9.0, integer=False)
    max_time = _number("max_time_s", 1, 86_400, default=math.inf, integer=False)
    devices = live_devices(ctx.store, ctx.clock_ns(), host)
    matches = _matching(devices, gpu)
    if not matches:
        wanted = f"GPU {gpu}" if gpu else "any GPU"
        where = f" on host {host}" if host else ""
        message = (
            f"no recent sample of {wanted}{where} (the sampler records the GPUs NVML sees): "
            f"seen now: {_describe(devices)}"
        )
        return jsonify(error=message), 404
    if gpu is None and len(matches) > 1:
        raise BadRequest(f"the monitor sees several GPUs: pass gpu= one of {_describe(matches)}")
    device = matches[0]
    predictor = _predictor()
    result = recommend(
        device,
        lambda shape: predictor.predict(shape, device.model),
        guidance_scale=guidance,
        max_time_s=None if math.isinf(max_time) else max_time,
    )
    return jsonify(result.to_dict())


def percentile(ordered: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of sorted values, interpolating linearly between ranks."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def configuration_stats(points: Iterable[Point], names: ModelNames) -> list[dict[str, Any]]:
    """Group finished jobs by GPU model and configuration; count outcomes and rank generation times."""
    groups: dict[tuple, dict[str, Any]] = {}
    for point in points:
        f = point.fields
        model = names.name(point.tags.get("host", ""), point.tags.get("gpu", ""))
        key = (model, f.get("resolution"), f.get("num_frames"), f.get("steps"))
        group = groups.setdefault(key, {"statuses": {}, "run_s": []})
        status = point.tags.get("status", "unknown")
        group["statuses"][status] = group["statuses"].get(status, 0) + 1
        run_s = f.get("run_s")
        if status == "succeeded" and isinstance(run_s, int | float):
            group["run_s"].append(float(run_s))
    out = []
    for (model, resolution, frames, steps), group in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        statuses, times = group["statuses"], sorted(group["run_s"])
        jobs = sum(statuses.values())
        out.append(
            {
                "gpu_model": model,
                "resolution": resolution,
                "num_frames": frames,
                "steps": steps,
                "jobs": jobs,
                "succeeded": statuses.get("succeeded", 0),
                "failed": statuses.get("failed", 0),
                "cancelled": statuses.get("cancelled", 0),
                "success_rate": round(statuses.get("succeeded", 0) / jobs, 4),
                "fastest_s": round(times[0], 3) if times else None,
                "median_s": round(percentile(times, 50), 3) if times else None,
                "p95_s": round(percentile(times, 95), 3) if times else None,
            }
        )
    return out


@bp.get("/summary")
def summary() -> ResponseReturnValue:
    """Return per GPU model and configuration the outcome counts, success rate and generation-time ranks."""
    ctx = _context()
    window_s = parse_window(request.args.get("window"), "7d")
    tags = {k: v for k in ("host", "gpu") if (v := _name(k)) is not None}
    end_ns = ctx.clock_ns() + 60 * S
    points = iter_points(ctx.store, JOB_SUMMARY, end_ns - (window_s + 60) * S, end_ns, tags=tags or None)
    configurations = configuration_stats(points, ModelNames(ctx.store, end_ns))
    return jsonify(window_s=window_s, configurations=configurations)
