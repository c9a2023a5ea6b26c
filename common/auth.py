"""Check a request's tokens in constant time: the rules every protected endpoint of both services uses.

Three tokens, each off when unset: the admin token (mutating actions), the ingest token (events) and the viewer
token (what shows prompts, clips and reports). A viewer proves the viewer token with `Authorization: Bearer
<token>` or, in a browser, with the `i2v_viewer` cookie that signing in on a page sets: an HMAC of the token, so
the token itself never sits in the browser, and changing the token ends every session. Cookies are scoped to
the host name, not the port: give the generator and the monitor the same I2V_VIEWER_TOKEN and one sign-in serves
both. The admin token is accepted wherever the viewer token is.
"""

from __future__ import annotations

import hashlib
import hmac

VIEWER_COOKIE = "i2v_viewer"


def secrets_equal(given: str, expected: str) -> bool:
    """Return whether two secrets are equal, compared in constant time (a job token against the one expected)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_allows(authorization_header: str | None, token: str | None) -> bool:
    """Return True when no token is configured, or the header is `Bearer <token>` (compared in constant time)."""
    if not token:
        return True
    scheme, _, given = (authorization_header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def viewer_cookie_value(viewer_token: str) -> str:
    """Return the cookie value that proves the viewer token (an HMAC of it, never the token itself)."""
    return hmac.new(viewer_token.encode(), b"i2v viewer session", hashlib.sha256).hexdigest()


def viewer_allows(
    authorization_header: str | None, cookie: str | None, viewer_token: str | None, admin_token: str | None
) -> bool:
    """Return True when no viewer token is configured, or the request carries it (bearer or cookie) or the admin
    token (bearer)."""
    if not viewer_token:
        return True
    if bearer_allows(authorization_header, viewer_token):
        return True
    if admin_token and bearer_allows(authorization_header, admin_token):
        return True
    if not cookie:
        return False
    return hmac.compare_digest(cookie.encode(), viewer_cookie_value(viewer_token).encode())
