"""Let the user who submitted a job rate its clip: `POST /api/jobs/<id>/rating` with the job's own token.

The submission's answer carries `rating_token` (common/job_token.py). With it as `Authorization: Bearer ...`
(or the admin token) and `{"stars": 1-5}`, the generator checks the job (it must have succeeded) and forwards
the rating to the monitor's `POST /monitor/api/jobs/<id>/rating` with the same job token, which the monitor
verifies itself with the key derived from the shared admin token. The page and the generator stay one origin;
the monitor's answer (the clip's quality with the recomputed combined score) is passed back as it is.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from common import job_token
from common.auth import bearer_allows

RATING_PATH = "/monitor/api/jobs/{job_id}/rating"
TIMEOUT_S = (0.5, 3.0)
EXTENSION = "job_token_key"

bp = Blueprint("rating", __name__)


def init_app(app: Flask, key: bytes) -> None:
    """Register the rating route; `key` signs and checks job tokens."""
    app.extensions[EXTENSION] = key
    app.register_blueprint(bp)


def token_for(job_id: str) -> str:
    """Return the job's rating token (in a request of the app `init_app` set up)."""
    return job_token.job_token(current_app.extensions[EXTENSION], job_id)


def _error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=message, **extra), status


@bp.post("/api/jobs/<job_id>/rating")
def rate(job_id: str) -> tuple[Response, int]:
    """Rate a succeeded job's clip with {"stars": 1-5}; the job's token (or the admin token) is required."""
    runtime = current_app.extensions["generator"]
    header = request.headers.get("Authorization")
    given = job_token.bearer(header)
    admin = runtime.config.admin_token
    if not job_token.verify(current_app.extensions[EXTENSION], job_id, given) and not (
        admin and bearer_allows(header, admin)
    ):
        return _error(401, "rating a job needs its rating_token (from the submission's answer) as a Bearer token")
    body: Any = request.get_json(silent=True)
    stars = body.get("stars") if isinstance(body, dict) else None
    if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5:
        return _error(400, 'send JSON {"stars": n} with n an integer from 1 to 5', field="stars", allowed=[1, 5])
    job = runtime.book.get(job_id)
    if job is None:
        return _error(404, f"no job {job_id[:64]!r}: check the job_id returned by POST /api/jobs")
    if job.state != "succeeded":
        return _error(409, f"job is {job.state}: only a finished clip can be rated")
    monitor_url = runtime.config.monitor_url
    if not monitor_url:
        return _error(503, "no monitor is configured to keep ratings: start the generator with --monitor-url")
    url = monitor_url.rstrip("/") + RATING_PATH.format(job_id=job_id)
    try:
        answer = requests.post(
            url,
            json={"stars": stars},
            headers={"Authorization": f"Bearer {token_for(job_id)}"},
            timeout=TIMEOUT_S,
        )
        relayed = answer.json()
    except (requests.RequestException, ValueError) as e:
        return _error(504, f"the monitor did not answer ({type(e).__name__}): try again in a moment")
    if answer.status_code == 404:
        # The clip's succeeded event is delivered within about a second; before that the monitor knows no clip.
        return _error(404, "the monitor has not heard of this clip yet: try again in a few seconds")
    return jsonify(relayed), answer.status_code
