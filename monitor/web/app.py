"""The monitor's Flask app: the built parts (a MonitorContext) served through the blueprints and /metrics.

`monitor/compose.py` builds the parts and calls `make_app`; this module only attaches them and registers routes,
so a blueprint never builds, subscribes or starts anything.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue

from common.http_metrics import instrument
from monitor.web import advice, api, dashboard, errors, fleet, ingest, reports, story, viewer
from monitor.web.context import MonitorContext, attach


class BoundedJSONProvider(DefaultJSONProvider):
    """Parse request bodies as Flask does, but a body nested too deeply to parse is a parse error (400), not a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON; a RecursionError becomes the ValueError that request.get_json turns into a 400."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


QUALITY_OFF = "quality scoring is off on this monitor (MONITOR_QUALITY=0): no clip is scored or rated"


def _quality_off(job_id: str) -> ResponseReturnValue:
    return jsonify(error=QUALITY_OFF), 404


def make_app(context: MonitorContext) -> Flask:
    """Serve `context`: ingest, the read API, the dashboard, advice and reports; quality, alerts and /metrics
    when those parts are present."""
    app = Flask("monitor")
    app.json = BoundedJSONProvider(app)
    attach(app, context)
    errors.init_app(app)
    for blueprint in (ingest, api, dashboard, advice, fleet, reports, story, viewer):
        blueprint.init_app(app)
    if context.quality is not None:
        from monitor.web import quality  # the scorer's module loads torch: only where a scorer exists

        quality.init_app(
            app, context.quality, admin_token=context.config.admin_token, viewer_token=context.config.viewer_token
        )
    elif not context.config.quality:  # switched off: say so rather than "no such endpoint"
        app.add_url_rule("/monitor/api/jobs/<job_id>/quality", "quality_off", _quality_off)
        app.add_url_rule("/monitor/api/jobs/<job_id>/rating", "rating_off", _quality_off, methods=["POST"])
    if context.alerts is not None:
        from monitor.web import alerts

        alerts.init_app(app, context.alerts)
    if context.sampler is not None and hasattr(context.sampler, "latest"):
        from monitor.web.metrics import make_registry, metrics_view  # needs the real sampler's snapshots

        registry = make_registry(context.sampler, writer_health=context.writer.health)  # type: ignore[arg-type]  # a real Sampler: it has .latest
        for part in (context.quality, context.alerts):
            if part is not None:
                registry.register(part.registry)
        app.add_url_rule("/metrics", "metrics", metrics_view(registry))
        instrument(app, registry)
    return app
