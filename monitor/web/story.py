"""A job's whole story under /monitor/api, for the dashboard's job detail: one request, every part of it.

- `GET jobs/<id>/story?window=7d`: the job (as `GET jobs/<id>`: its summary and every event), its stage
  timeline, what admission said (`notes`) and whether it was degraded, its device over its span (the GPU's
  utilisation and memory, or the host's CPU and memory for a CPU job), its quality (when the monitor scores
  clips), its GPU-seconds, energy and cost at the configured prices, and the clip's address on the generator.
"""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue

from monitor.analysis import job_story, jobs
from monitor.analysis.cost import Prices
from monitor.web.context import get_context
from monitor.web.params import BadRequest, arg_window_s
from monitor.web.viewer import viewer

bp = Blueprint("story", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Register the job story route."""
    app.register_blueprint(bp)


@bp.get("/jobs/<job_id>/story")
@viewer  # the job's prompt and clip
def story(job_id: str) -> ResponseReturnValue:
    """Return everything known about one job (see the module docstring)."""
    ctx = get_context()
    if len(job_id) > 200:
        raise BadRequest("job id must be at most 200 characters")
    window_s = arg_window_s("7d")
    now_ns = ctx.clock_ns()
    events = job_story.job_events(ctx.store, job_id, now_ns, window_s)
    if not events:
        message = f"no events for job {job_id!r} in the last {window_s} s: check the id or widen ?window=30d"
        return jsonify(error=message), 404
    detail = jobs.detail(job_id, events)
    quality = ctx.quality.result(job_id) if ctx.quality is not None else None
    generator_url = ctx.config.generator_url
    video_url = None
    if detail["state"] == "succeeded" and generator_url:
        video_url = f"{generator_url.rstrip('/')}/api/jobs/{job_id}/video"
    config = ctx.config
    return jsonify(
        job=detail,
        timeline=job_story.timeline(detail, detail["events"]),
        notes=detail["notes"],
        degraded={"requested": detail["requested"], "effective": detail["params"]} if detail["requested"] else None,
        device=job_story.device_samples(ctx.store, detail, now_ns),
        quality=None if quality is None else quality.to_dict(),
        cost=job_story.cost(ctx.store, detail, Prices(config.price_per_kwh, config.price_per_gpu_hour)),
        video_url=video_url,
    )
