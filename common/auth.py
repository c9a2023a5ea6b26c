"""Check a request's bearer token in constant time: the one rule every mutating endpoint of both services uses."""

from __future__ import annotations

import hmac


def bearer_allows(authorization_header: str | None, token: str | None) -> bool:
    """Return True when no token is configured, or the header is `Bearer <token>` (compared in constant time)."""
    if not token:
        return True
    scheme, _, given = (authorization_header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
