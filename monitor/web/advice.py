"""Predictions, recommendations and run-time statistics under /monitor/api: HTTP in, calls to analysis/, JSON out.

- `GET predict?resolution=512&frames=16&steps=50[&guidance=9][&gpu=0|<model name>][&host=]`: predicted peak
  memory and generation time with their margins, how they were made (prior or learned, from how many jobs),
  and whether the job fits the GPU's memory now (`fits`: null when the GPU has no recent sample).
- `GET predict/laws`: what the predictor has learned, per GPU model.
- `GET recommendation[?gpu=][&host=][&guidance=9][&max_time_s=]`: the best parameters that fit now, their
  prediction, the seed tier that is the floor, the reason in words, and every candidate as predicted. For a
  generator on a CPU (`gpu=cpu`, or no GPU sampled on the host) the answer is time-based: the largest job
  predicted to finish within `max_time_s` (default 25 s) on that host's CPU (monitor/analysis/cpu_advice.py).
- `GET summary?window=7d[&host=][&gpu=]`: per GPU model and configuration (resolution, frames, steps): jobs,
  succeeded, failed, cancelled, success rate, and the fastest, median and p95 generation time (running → end)
  of the succeeded ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from common.sizing import LIMITS, RESOLUTIONS
from common.units import NS_PER_S
from monitor.analysis.cpu_advice import recommend_for_cpu
from monitor.analysis.devices import DeviceState, ModelNames, live_devices
from monitor.analysis.predict import JobShape
from monitor.analysis.recommend import recommend
from monitor.analysis.reports import QUALITY_LAG_S, QualityJoin
from monitor.analysis.stats import configuration_stats
from monitor.storage.pages import iter_points
from monitor.storage.schema import JOB_SUMMARY, QUALITY, iso_from_us
from monitor.web.context import get_context
from monitor.web.params import BadRequest, arg_name, arg_number, arg_tags, arg_window_s, span_ns

GB = 1e9

bp = Blueprint("advice", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Register the prediction, recommendation and summary routes."""
    app.register_blueprint(bp)


def _shape() -> JobShape:
    resolution = int(arg_number("resolution", min(RESOLUTIONS), max(RESOLUTIONS), integer=True))
    if resolution not in RESOLUTIONS:
        raise BadRequest(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {resolution}")
    frames = int(arg_number("frames", *LIMITS["num_frames"], integer=True))
    steps = int(arg_number("steps", *LIMITS["steps"], integer=True))
    guidance = arg_number("guidance", *LIMITS["guidance_scale"], default=9.0)
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
    ctx = get_context()
    shape = _shape()
    gpu, host = arg_name("gpu"), arg_name("host")
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
    prediction = get_context().predictor.predict(shape, model)
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
    return jsonify(get_context().predictor.status())


@bp.get("/recommendation")
def recommendation() -> ResponseReturnValue:
    """Return the best parameters that fit the GPU's memory now, their prediction and the reason in words."""
    ctx = get_context()
    gpu, host = arg_name("gpu"), arg_name("host")
    guidance = arg_number("guidance", *LIMITS["guidance_scale"], default=9.0)
    max_time = arg_number("max_time_s", 1, 86_400, default=math.inf)
    now_ns = ctx.clock_ns()
    devices = live_devices(ctx.store, now_ns, host)
    if gpu == "cpu" or (gpu is None and not devices):
        # The generator runs on a CPU (its worker says gpu=cpu), or this host has no GPU: advise by time.
        budget = None if math.isinf(max_time) else max_time
        cpu_host = host or ctx.config.host_name
        return jsonify(recommend_for_cpu(ctx.store, cpu_host, now_ns, budget_s=budget, guidance_scale=guidance))
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
    predictor = get_context().predictor
    result = recommend(
        device,
        lambda shape: predictor.predict(shape, device.model),
        guidance_scale=guidance,
        max_time_s=None if math.isinf(max_time) else max_time,
    )
    return jsonify(result.to_dict())


@bp.get("/summary")
def summary() -> ResponseReturnValue:
    """Return per GPU model and configuration the outcome counts, success rates, time and wait ranks, quality.

    The span is `since`/`until` (as the reports read them) when either is given, else the last `window`.
    """
    ctx = get_context()
    now_ns = ctx.clock_ns()
    if request.args.get("since") or request.args.get("until"):
        start_ns, end_ns = span_ns(request.args.get("since"), request.args.get("until"), now_ns)
    else:
        end_ns = now_ns + 60 * NS_PER_S  # a job's end carries the generator's clock: allow a little skew
        start_ns = end_ns - (arg_window_s("7d") + 60) * NS_PER_S
    tags = arg_tags("host", "gpu")
    lag_ns = QUALITY_LAG_S * NS_PER_S
    join = QualityJoin(iter_points(ctx.store, QUALITY, start_ns, end_ns + lag_ns), lag_ns)
    points = iter_points(ctx.store, JOB_SUMMARY, start_ns, end_ns, tags=tags or None)
    configurations = configuration_stats(
        points, ModelNames(ctx.store, end_ns), lambda p: join.take(str(p.fields.get("job_id")), p.time_ns)
    )
    return jsonify(
        window_s=(end_ns - start_ns) // NS_PER_S,
        since=iso_from_us(start_ns // 1000),
        until=iso_from_us(end_ns // 1000),
        configurations=configurations,
    )
