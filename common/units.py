"""Time units and the one duration grammar (`90s`, `15m`, `24h`, `7d`) both processes accept."""

from __future__ import annotations

import re

NS_PER_S = 1_000_000_000
US_PER_S = 1_000_000
SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^(\d{1,9})([smhd])$")


def parse_duration_s(text: str) -> int | None:
    """Return the seconds in a duration such as `300s`, `5m`, `24h` or `7d`; None if `text` is not one."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * SECONDS_PER_UNIT[match.group(2)]
