"""Read the monitor's query parameters: every route refuses bad input the same way, saying what to send instead.

The parsers of text (`window_s`, `time_ns`, `span_ns`, `bucket_s`, `name`) serve the report command line too;
the `arg_*` helpers read them from the current request. Each raises `BadRequest`, which the app-wide handler
(monitor/web/errors.py) answers with 400 and the message.
"""

from __future__ import annotations

import math
import re

from flask import request

from common.events import parse_iso
from common.units import NS_PER_S, US_PER_S, parse_duration_s

MAX_WINDOW_S = 90 * 86_400
MAX_SPAN_S = 366 * 86_400
MAX_NAME_CHARS = 200
_EPOCH_S = re.compile(r"^\d{9,11}(\.\d{1,9})?$")  # 1973-5138: a bare number is a time, never a duration
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadRequest(ValueError):
    """A parameter that cannot be served; the message says what to send instead."""


def window_s(text: str | None, default: str) -> int:
    """Return a window such as `5m`, `1h`, `24h`, `7d` or `300s` in seconds."""
    value = (text or default).strip()
    seconds = parse_duration_s(value)
    if seconds is None:
        raise BadRequest(f"window must be a number and a unit s, m, h or d (e.g. 5m, 1h, 24h), got {value!r}")
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise BadRequest(f"window must be between 1s and {MAX_WINDOW_S // 86_400}d, got {value!r}")
    return seconds


def time_ns(text: str | None, default: str, now_ns: int, name: str) -> int:
    """Return a time in ns from what users write: a duration before now (`24h`), `now`, an RFC 3339 time with
    its zone (`2024-05-01T00:00:00Z`, `z` and `t` in either case), a date alone (midnight UTC), or epoch seconds.
    """
    value = (text or default).strip()
    if value == "now":
        return now_ns
    seconds = parse_duration_s(value)
    if seconds is not None:
        return now_ns - seconds * NS_PER_S
    if _EPOCH_S.match(value):
        return round(float(value) * US_PER_S) * 1000
    if _DATE.match(value):
        value += "T00:00:00Z"
    try:
        moment = parse_iso(value[:10] + value[10:].upper())
    except ValueError:
        raise BadRequest(
            f"{name} must be a duration before now (90s, 15m, 24h, 7d), now, an RFC 3339 time with its zone "
            f"(2024-05-01T00:00:00Z), a date (2024-05-01, midnight UTC) or epoch seconds, got {value!r}"
        ) from None
    return round(moment.timestamp() * US_PER_S) * 1000


def span_ns(since: str | None, until: str | None, now_ns: int) -> tuple[int, int]:
    """Return [start, end) in ns from `since` and `until`: the last 24 h by default; `until` alone means
    everything up to it (as far back as a report reaches)."""
    end_ns = time_ns(until, "now", now_ns, "until")
    if since is None or not since.strip():
        start_ns = end_ns - (MAX_SPAN_S if until else 86_400) * NS_PER_S
    else:
        start_ns = time_ns(since, "24h", now_ns, "since")
    if start_ns >= end_ns:
        raise BadRequest("since must be before until: e.g. since=24h (until defaults to now)")
    if end_ns - start_ns > MAX_SPAN_S * NS_PER_S:
        raise BadRequest(f"since and until may be at most {MAX_SPAN_S // 86_400} days apart: split the report")
    return start_ns, end_ns


def bucket_s(text: str | None) -> int:
    """Return a bucket length in seconds from `1m`-style text, 1 s to 1 d."""
    value = (text or "1m").strip()
    seconds = parse_duration_s(value) or 0
    if not 1 <= seconds <= 86_400:
        raise BadRequest(f"bucket must be a duration from 1s to 1d such as 10s, 1m or 1h, got {value!r}")
    return seconds


def name(text: str | None, field: str) -> str | None:
    """Return a host, GPU or model name, or None when absent or empty."""
    if not text:
        return None
    if len(text) > MAX_NAME_CHARS or any(ch in text for ch in "\r\n\0"):
        raise BadRequest(f"{field} must be a name of at most {MAX_NAME_CHARS} characters on one line")
    return text


def arg_name(field: str) -> str | None:
    """Read the name parameter `field` of the current request."""
    return name(request.args.get(field), field)


def arg_tags(*fields: str) -> dict[str, str]:
    """Read the tag filters among `fields` that the current request gives."""
    return {field: value for field in fields if (value := arg_name(field)) is not None}


def arg_window_s(default: str) -> int:
    """Read the `window` parameter of the current request."""
    return window_s(request.args.get("window"), default)


def arg_int(field: str, default: int, low: int, high: int) -> int:
    """Read an integer parameter from `low` to `high`."""
    return int(arg_number(field, low, high, default=default, integer=True))


def arg_number(field: str, low: float, high: float, *, default: float | None = None, integer: bool = False) -> float:
    """Read a number parameter from `low` to `high`; without a default it is required."""
    text = request.args.get(field)
    kind = "an integer" if integer else "a number"
    if text is None or text == "":
        if default is None:
            raise BadRequest(f"{field} is required: {kind} from {low:g} to {high:g}")
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise BadRequest(f"{field} must be {kind} from {low:g} to {high:g}, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"{field} must be from {low:g} to {high:g}, got {text!r}")
    return value
