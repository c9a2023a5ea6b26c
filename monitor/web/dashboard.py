"""The live monitor tab at /monitor/: the page, its script and Chart.js, and the three reads only it needs.

- `GET /monitor/`: the dashboard (monitor/web/templates/dashboard.html, monitor/web/static/dashboard.js).
- `GET /monitor/vendor/<file>`: Chart.js from node_modules (installed by `npm install` from package.json;
  `make run` and `make test` do it). No CDN: the page loads nothing from outside the monitor.
- `GET /monitor/api/targets?window=24h`: the hosts and GPUs that sent samples in the window (the selectors).
- `GET /monitor/api/quality?window=1h&host=&gpu=`: each scored job's latest quality scores, oldest first.
- `GET /monitor/api/queue?window=1h&host=`: the generator's queue length (its `i2v_queue_pending`) and running
  jobs over the window, rebuilt from the stored job events.

Why the queue comes from the job events rather than from the generator's gauge: the events are already in the
store for every host (several hosts write to one InfluxDB), so a 5 min, 1 h or 24 h history is there with no
new poller and no new measurement; it survives generator and monitor restarts; and it agrees with the jobs table
by construction. The gauge is only the value now. The cost: while the monitor is unreachable the generator
spools its events, and the queue chart fills in when they are replayed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, abort, jsonify, render_template, send_from_directory
from flask.typing import ResponseReturnValue

from common.units import NS_PER_S
from monitor.analysis.hosts import known_hosts
from monitor.analysis.queue import queue_steps
from monitor.storage.schema import JOB_EVENT, QUALITY, iso_from_us, point_to_event
from monitor.web.context import get_context
from monitor.web.params import arg_tags, arg_window_s

VENDOR_FILES = {"chart.umd.min.js": "chart.js/dist/chart.umd.min.js"}
QUALITY_SCORES = ("combined", "clip_score", "i2v_subject", "smoothness", "temporal_flickering", "dynamic_degree")
QUALITY_FLAGS = ("low_quality", "static", "rating")
MAX_QUALITY_POINTS = 20_000
MAX_QUEUE_EVENTS = 100_000
QUEUE_LOOKBACK_S = 6 * 3600  # a job queued this long before the window still counts as waiting in it

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/monitor",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


def init_app(app: Flask) -> None:
    """Register the dashboard (Chart.js is read from the context's `node_modules`, where `npm install` put it)."""
    app.register_blueprint(bp)


@bp.get("/")
def page() -> str:
    """Serve the dashboard page."""
    config = get_context().config
    return render_template(
        "dashboard.html",
        page_config={
            "api": "/monitor/api",
            "host_name": config.host_name,
            "generator_url": config.generator_url,
            "sample_interval_s": config.sample_interval_s,
            "viewer_token_required": bool(config.viewer_token),
        },
    )


@bp.get("/vendor/<name>")
def vendor(name: str) -> ResponseReturnValue:
    """Serve a front-end package file from node_modules (only the listed ones)."""
    relative = VENDOR_FILES.get(name)
    if relative is None:
        abort(404)
    root = get_context().node_modules
    if not (root / relative).is_file():
        message = f"{name} is not installed: run `npm install` in the repository root (make run does it)"
        return jsonify(error=message), 404
    return send_from_directory(root, relative, mimetype="text/javascript", max_age=3600)


def _window_ns(default: str) -> tuple[int, int, int]:
    ctx = get_context()
    window_s = arg_window_s(default)
    end_ns = ctx.clock_ns()
    return window_s, end_ns - window_s * NS_PER_S, end_ns


@bp.get("/api/targets")
def targets() -> ResponseReturnValue:
    """Return every host seen in the window (default 24h), by samples or by jobs, each host's GPUs, and a
    warning when a host ran jobs but sent no samples (its generator and monitor disagree on its name)."""
    ctx = get_context()
    window_s, start_ns, end_ns = _window_ns("24h")
    seen = known_hosts(ctx.store, start_ns, end_ns)
    this_host = ctx.config.host_name
    mismatch = seen.mismatch(this_host)
    warning = None
    if mismatch:
        warning = (
            f"jobs arrived tagged host {', '.join(mismatch)}, which sent no samples; this monitor samples as "
            f"{this_host}: set the same host name on both (I2V_HOST_NAME) so jobs and samples meet"
        )
    return jsonify(
        window_s=window_s,
        this_host=this_host,
        hosts=sorted(seen.all | {this_host}),
        hosts_with_jobs=sorted(seen.with_jobs),
        hosts_sampled=sorted(seen.sampled | {this_host}),
        gpus={host: sorted(ids, key=_gpu_order) for host, ids in sorted(seen.gpus.items())},
        warning=warning,
    )


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


@bp.get("/api/quality")
def quality() -> ResponseReturnValue:
    """Return each job's latest quality scores in the window (a rating rescores a job), oldest first."""
    ctx = get_context()
    window_s, start_ns, end_ns = _window_ns("1h")
    tags = arg_tags("host", "gpu")
    points = ctx.store.query_points(QUALITY, start_ns, end_ns, tags=tags, limit=MAX_QUALITY_POINTS)
    latest: dict[str, dict[str, Any]] = {}
    for point in points:
        fields = point.fields
        job_id = fields.get("job_id")
        if not isinstance(job_id, str) or all(fields.get(n) is None for n in QUALITY_SCORES):
            continue  # a queued or unscorable record: no score to draw
        latest.pop(job_id, None)  # re-inserted last: the dict stays in time order
        latest[job_id] = {
            "job_id": job_id,
            "host": point.tags.get("host"),
            "gpu": point.tags.get("gpu"),
            "time": iso_from_us(point.time_ns // 1000),
            "t_ms": point.time_ns // 1_000_000,
            **{name: fields.get(name) for name in (*QUALITY_SCORES, *QUALITY_FLAGS)},
        }
    scores = sorted(latest.values(), key=lambda s: s["t_ms"])
    return jsonify(window_s=window_s, count=len(scores), scores=scores)


@bp.get("/api/queue")
def queue() -> ResponseReturnValue:
    """Return the queue length (pending) and running jobs over the window, one point per change."""
    ctx = get_context()
    window_s, start_ns, end_ns = _window_ns("1h")
    tags = {**arg_tags("host"), "kind": "job"}
    points = ctx.store.query_points(
        JOB_EVENT, start_ns - QUEUE_LOOKBACK_S * NS_PER_S, end_ns, tags=tags, limit=MAX_QUEUE_EVENTS
    )
    steps = queue_steps((point_to_event(p) for p in points), start_ns // 1_000_000, end_ns // 1_000_000)
    return jsonify(window_s=window_s, source="job_event", points=steps)
