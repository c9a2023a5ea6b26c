"""Keep secrets out of logs, error messages and API answers: URLs shown without their credentials."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """Return `url` with its password, its query values and (unless `keep_path`) its path replaced by `***`.

    `influxdb://user:pw@host:8086/db` → `influxdb://user:***@host:8086/db`; a webhook URL whose path or query
    is the secret (`https://hooks.example/T0/B1/XYZ?token=abc`) → `https://hooks.example/***` with
    `keep_path=False`. Text that does not parse as a URL is replaced whole.
    """
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname or "", parts.port
    except ValueError:
        return "***"
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc}" if parts.password is not None else f"{user}@{netloc}"
    query = "&".join(f"{pair.split('=', 1)[0]}=***" for pair in parts.query.split("&") if pair) if parts.query else ""
    path = parts.path if keep_path else ("/***" if parts.path.strip("/") else parts.path)
    head = f"{parts.scheme}://{netloc}" if parts.scheme else netloc
    return head + path + (f"?{query}" if query else "")
