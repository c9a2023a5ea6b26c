"""The viewer token on the monitor: the guard for routes that show prompts, clips or reports, and the page's sign-in.

The rules are the generator's (`common.viewer`): `Authorization: Bearer <VIEWER_TOKEN>` (or the admin token), or
the session cookie `POST /monitor/api/session` sets.
"""

from __future__ import annotations

from flask import Flask

from common.viewer import session_blueprint, viewer_only
from monitor.web.context import get_context


def _tokens() -> tuple[str | None, str | None]:
    config = get_context().config
    return config.viewer_token, config.admin_token


viewer = viewer_only(_tokens)


def init_app(app: Flask) -> None:
    """Register GET/POST/DELETE /monitor/api/session."""
    app.register_blueprint(session_blueprint("viewer_session", "/monitor/api", _tokens))
