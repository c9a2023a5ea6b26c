"""The viewer token on both services: the check each viewer route makes, and the session routes a page signs in with.

A route that shows prompts, clips or reports calls `viewer_denied()` first. A script sends `Authorization:
Bearer <I2V_VIEWER_TOKEN>`; a browser cannot put a header on a `<video src>` or a CSV link, so a page signs in once
(`POST <prefix>/session` with the token) and gets an HttpOnly, SameSite=Strict cookie that proves it (see
`common.auth`). `GET <prefix>/session` tells a page whether it must ask; `DELETE` signs out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request

from common.auth import VIEWER_COOKIE, viewer_allows, viewer_cookie_value

# The tokens now: (viewer, admin), read per request from the service's configuration.
Tokens = Callable[[], tuple[str | None, str | None]]
Route = TypeVar("Route", bound=Callable[..., Any])

DENIED = (
    "this shows prompts, clips or reports and needs the viewer token: send 'Authorization: Bearer <I2V_VIEWER_TOKEN>', "
    "or sign in on the page"
)


def viewer_denied(tokens: Tokens) -> Response | None:
    """Return a 401 answer when the request lacks the viewer token (or the admin token), else None."""
    viewer_token, admin_token = tokens()
    if viewer_allows(
        request.headers.get("Authorization"), request.cookies.get(VIEWER_COOKIE), viewer_token, admin_token
    ):
        return None
    return _unauthorised(DENIED)


def viewer_only(tokens: Tokens) -> Callable[[Route], Route]:
    """Return a decorator for routes that show prompts, clips or reports: 401 without the viewer token."""

    def decorate(route: Route) -> Route:
        @functools.wraps(route)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            denied = viewer_denied(tokens)
            return denied if denied is not None else route(*args, **kwargs)

        return guarded  # type: ignore[return-value]  # same signature, wrapped

    return decorate


def _unauthorised(message: str) -> Response:
    response = jsonify(error=message, required=True)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="i2v"'
    return response


def session_blueprint(name: str, url_prefix: str, tokens: Tokens) -> Blueprint:
    """Return the blueprint of `<url_prefix>/session`: GET (signed in?), POST (sign in), DELETE (sign out)."""
    bp = Blueprint(name, __name__, url_prefix=url_prefix)

    @bp.get("/session")
    def session_state() -> Response:
        """Say whether this request may view: 200 when it may (or no token is set), else 401."""
        denied = viewer_denied(tokens)
        if denied is not None:
            return denied
        return jsonify(required=bool(tokens()[0]), signed_in=True)

    @bp.post("/session")
    def sign_in() -> Response:
        """Check `{"token": ...}` against the viewer token and set the session cookie (401 when wrong)."""
        viewer_token, admin_token = tokens()
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # nested deeper than the parser goes: not a sign-in
            body = None
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given:
            response = jsonify(error='send {"token": "<I2V_VIEWER_TOKEN>"} as JSON')
            response.status_code = 400
            return response
        if not viewer_token:
            return jsonify(required=False, signed_in=True)
        if not viewer_allows(f"Bearer {given}", None, viewer_token, admin_token):
            return _unauthorised("that is not this service's viewer token")
        response = jsonify(required=True, signed_in=True)
        # HttpOnly: page scripts cannot read it; Strict: no other site's page can make the browser send it.
        response.set_cookie(
            VIEWER_COOKIE,
            viewer_cookie_value(viewer_token),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @bp.delete("/session")
    def sign_out() -> Response:
        """Clear the session cookie."""
        response = jsonify(signed_in=False)
        response.delete_cookie(VIEWER_COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    return bp
