"""The alerts blueprint: GET /monitor/api/alerts (active, history, delivery health), POST .../<id>/ack."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from common.auth import bearer_allows
from monitor.alerts.service import AlertService

bp = Blueprint("alerts", __name__, url_prefix="/monitor/api")
EXTENSION = "i2v_alerts"


def init_app(app: Flask, service: AlertService) -> None:
    """Attach the alert service to the app and register the blueprint."""
    app.extensions[EXTENSION] = service
    app.register_blueprint(bp)


def _service() -> AlertService:
    service: AlertService = current_app.extensions[EXTENSION]
    return service


@bp.get("/alerts")
def list_alerts() -> ResponseReturnValue:
    """Return active alerts (firing first, most severe first), the newest history and delivery health."""
    service = _service()
    limit = request.args.get("history", default=100, type=int)
    body: dict[str, Any] = {
        "active": [alert.to_public() for alert in service.engine.active()],
        "history": [alert.to_public() for alert in service.engine.history(max(0, min(limit or 0, 500)))],
        **service.status(),
    }
    return jsonify(body)


@bp.post("/alerts/<alert_id>/ack")
def ack_alert(alert_id: str) -> ResponseReturnValue:
    """Acknowledge an alert; needs `Authorization: Bearer <ADMIN_TOKEN>` when a token is configured."""
    service = _service()
    if not bearer_allows(request.headers.get("Authorization"), service.settings.admin_token):
        abort(401)
    data = request.get_json(silent=True) or {}
    by = data.get("by") if isinstance(data, dict) else None
    by = by if isinstance(by, str) and by.strip() else "anonymous"
    alert = service.engine.ack(alert_id, by[:200])
    if alert is None:
        return jsonify({"error": f"no alert {alert_id!r}"}), 404
    return jsonify(alert.to_public())
