"""HTTP API for quality: read a job's scores and rate its clip (1 to 5 stars), under /monitor/api.

A rating needs the admin token when one is set, or the job's own token (common/job_token.py): the generator
gives it to whoever submitted the job and forwards their rating with it, keyed from the admin token both share.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from common import job_token
from common.auth import bearer_allows
from common.viewer import viewer_only
from monitor.quality.scorer import QualityScorer

EXTENSION = "quality_scorer"

bp = Blueprint("quality", __name__, url_prefix="/monitor/api")


def init_app(
    app: Flask, scorer: QualityScorer, admin_token: str | None = None, viewer_token: str | None = None
) -> None:
    """Attach the scorer to the app and register the quality routes; a rating needs `admin_token` when set, and
    reading a job's scores `viewer_token` (or the admin token)."""
    app.extensions[EXTENSION] = scorer
    app.extensions[EXTENSION + ".admin_token"] = admin_token
    app.extensions[EXTENSION + ".viewer_token"] = viewer_token
    app.register_blueprint(bp)


def _tokens() -> tuple[str | None, str | None]:
    return current_app.extensions[EXTENSION + ".viewer_token"], current_app.extensions[EXTENSION + ".admin_token"]


def _scorer() -> QualityScorer:
    scorer: QualityScorer = current_app.extensions[EXTENSION]
    return scorer


def _error(status: int, message: str) -> ResponseReturnValue:
    return jsonify({"error": message}), status


@bp.get("/jobs/<job_id>/quality")
@viewer_only(_tokens)  # a job's scores and what was wrong with its clip
def get_quality(job_id: str) -> ResponseReturnValue:
    """Return the job's quality result (status queued, scoring, scored or unscorable); 404 if unknown."""
    result = _scorer().result(job_id)
    if result is None:
        return _error(404, f"no quality record for job {job_id}")
    return jsonify(result.to_dict())


@bp.post("/jobs/<job_id>/rating")
def post_rating(job_id: str) -> ResponseReturnValue:
    """Rate the job's clip with JSON {"stars": n}, n an integer 1-5; return the recomputed result."""
    header = request.headers.get("Authorization")
    admin_token = current_app.extensions.get(EXTENSION + ".admin_token")
    key = job_token.key_from_admin_token(admin_token) if admin_token else None
    if not bearer_allows(header, admin_token) and not job_token.verify(key, job_id, job_token.bearer(header)):
        return _error(
            401, "rating needs the job's rating_token or the admin token: send 'Authorization: Bearer <token>'"
        )
    body: Any = request.get_json(silent=True)
    if not isinstance(body, dict) or "stars" not in body:
        return _error(400, 'send JSON {"stars": n} with n an integer from 1 to 5')
    try:
        result = _scorer().rate(job_id, body["stars"])
    except ValueError as e:
        return _error(400, str(e))
    if result is None:
        return _error(404, f"no quality record for job {job_id}")
    return jsonify(result.to_dict())
