"""`GET /monitor/api/fleet`: the generator's workers with their GPUs, and the queue they share (the fleet panel).

The workers and the queue come from the generator (monitor/collection/fleet.py says why from there), each GPU
worker's latest sample from the store (monitor/analysis/fleet.py). The same shape in both of the generator's
modes: in single-host mode its one worker per local GPU and its in-process queue. When the generator cannot
be read the answer is the status (502, or 503 when its queue is away) and the reason, for the panel to show;
a monitor without `--generator-url` answers 404 saying so.
"""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue

from monitor.analysis.fleet import with_gpu_samples
from monitor.web.context import get_context

bp = Blueprint("fleet", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Register the fleet route."""
    app.register_blueprint(bp)


@bp.get("/fleet")
def fleet() -> ResponseReturnValue:
    """Return every worker (host, GPU and its last sample, state, job, heartbeat) and the queue per priority."""
    ctx = get_context()
    if ctx.fleet is None:
        message = "this monitor has no generator to ask (start it with --generator-url, env MONITOR_GENERATOR_URL)"
        return jsonify(error=message), 404
    reading = ctx.fleet.read()
    if reading.view is None:
        return jsonify(error=reading.error, source=ctx.fleet.shown_url), reading.status
    view = with_gpu_samples(reading.view, ctx.store, ctx.clock_ns())
    return jsonify({**view, "source": ctx.fleet.shown_url})
