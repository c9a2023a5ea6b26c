"""A per-job token that lets whoever submitted a job act on that job alone (rate its clip) without the admin token.

The token is HMAC-SHA256(key, "rate:" + job_id), URL-safe base64: the generator returns it once, in the answer
to the submission, and never stores it (it can compute it again). Either process verifies it with the same key,
which both derive from the `ADMIN_TOKEN` they already share: a job token proves that the generator issued it, for
that job only, and reveals nothing about the admin token. Without an admin token the monitor's rating route is
open (as every admin route is then), and the generator keys its tokens with a random secret of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from common.auth import secrets_equal

KEY_CONTEXT = b"i2v job token v1"
PURPOSE = "rate:"


def key_from_admin_token(admin_token: str) -> bytes:
    """Derive the job-token key from the admin token both processes share."""
    return hmac.new(admin_token.encode(), KEY_CONTEXT, hashlib.sha256).digest()


def local_key(path: Path) -> bytes:
    """Return a random key kept at `path` (made on first use, readable by this user only)."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    partial = path.with_suffix(".partial")
    partial.write_bytes(key)
    partial.chmod(0o600)
    partial.replace(path)
    return key


def job_token(key: bytes, job_id: str) -> str:
    """Return the token for one job."""
    digest = hmac.new(key, (PURPOSE + job_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(key: bytes | None, job_id: str, token: str | None) -> bool:
    """Return whether `token` is the job's token under `key` (constant time); False without a key or token."""
    if not key or not token:
        return False
    return secrets_equal(token.strip(), job_token(key, job_id))


def bearer(authorization_header: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, given = (authorization_header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()
