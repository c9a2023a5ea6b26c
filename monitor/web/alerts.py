"""The alerts blueprint: GET /monitor/api/alerts (active, history, delivery health), GET .../<id>, POST .../<id>/ack."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from common.auth import bearer_allows
from monitor.alerts.rules import parse_duration
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


@bp.get("/alerts/<alert_id>")
def get_alert(alert_id: str) -> ResponseReturnValue:
    """Return one active or past alert (where notifications' generatorURL leads)."""
    alert = _service().engine.get(alert_id)
    if alert is None:
        return jsonify(error=_unknown(alert_id)), 404
    return jsonify(alert.to_public())


@bp.post("/alerts/<alert_id>/ack")
def ack_alert(alert_id: str) -> ResponseReturnValue:
    """Acknowledge an alert: every acknowledgement and note is kept; an active one is silenced in Alertmanager.

    Body (all optional): {"by": "who", "note": "why", "expires_in": "2h"}; needs `Authorization: Bearer
    <ADMIN_TOKEN>` when a token is configured. 502 when Alertmanager is configured but took no silence (the
    acknowledgement is kept).
    """
    service = _service()
    if not bearer_allows(request.headers.get("Authorization"), service.settings.admin_token):
        response = jsonify(
            error="acknowledging an alert needs the admin token: send the header "
            "'Authorization: Bearer <ADMIN_TOKEN>' (the ADMIN_TOKEN the monitor was started with)"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="i2v-monitor"'
        return response, 401
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        return _refuse(None, "send a JSON object", '{"by": "alice", "note": "looking", "expires_in": "2h"}')
    by = body.get("by", "anonymous")
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY_CHARS:
        return _refuse("by", f"'by' names who acknowledges: a non-empty string of at most {MAX_BY_CHARS} characters")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        return _refuse("note", f"'note' says why: a string of at most {MAX_NOTE_CHARS} characters")
    settings = service.settings
    expires_s: float | None = None
    if "expires_in" in body:
        try:
            expires_s = parse_duration(body["expires_in"])
        except ValueError:
            expires_s = -1.0
        if not MIN_SILENCE_S <= expires_s <= settings.silence_max_s:
            return _refuse(
                "expires_in",
                f"'expires_in' is how long the Alertmanager silence lasts: 1m to {settings.silence_max_s / 86400:g}d, "
                "like 30m, 2h or 7200",
            )
    result = service.acknowledge(alert_id, by.strip(), note=note or None, expires_s=expires_s)
    if result is None:
        return jsonify(error=_unknown(alert_id)), 404
    answer = {
        **result.alert.to_public(),
        "silence": result.silence.to_public() if result.silence else None,
        "silence_error": result.silence_error,
    }
    if result.silence_error:
        answer["error"] = (
            f"acknowledged, but no Alertmanager took the silence ({result.silence_error}); the alert still notifies"
        )
        return jsonify(answer), 502
    return jsonify(answer)


MAX_BY_CHARS = 200
MAX_NOTE_CHARS = 2000
MIN_SILENCE_S = 60.0


def _unknown(alert_id: str) -> str:
    return f"no alert {alert_id[:64]!r}: GET /monitor/api/alerts lists the active alerts and the history with their ids"


def _refuse(field: str | None, message: str, example: str | None = None) -> ResponseReturnValue:
    allowed = example or '{"by": "alice", "note": "looking at it", "expires_in": "2h"}'
    return jsonify(error=message, field=field, allowed=allowed), 400
