"""Read the generator's workers and queue (`GET /api/fleet` on the monitor's `--generator-url`), when asked.

Why from the generator rather than from the events the workers send: events arrive when a job changes state, so
an idle worker, a worker still loading its model, and how long the oldest job at each priority has waited
are not in them, and a worker that died would look alive until its lost job was noticed. The generator's answer
is the live registry itself (in queue mode the workers' announcements in Redis, which expire one lease after a
worker stops; in single-host mode its own threads) and the queue's depth as the API counts it.

Read on request (the dashboard's slow cadence, every 5 s), never on a schedule: nothing is stored, so a monitor
whose generator is away pays nothing. Every failure is an answer with the reason, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from common.redact import redact_url

FLEET_PATH = "/api/fleet"
TIMEOUT_S = (0.5, 3.0)  # connect, read: the dashboard's request waits at most this long


@dataclass(frozen=True)
class FleetReading:
    """The generator's answer (`view`), or the HTTP status the monitor answers with and why (`error`)."""

    view: dict[str, Any] | None
    status: int
    error: str | None = None


class FleetSource:
    """The generator's `/api/fleet`, read with short timeouts; `session` is swappable for tests."""

    def __init__(
        self,
        generator_url: str,
        *,
        timeout_s: tuple[float, float] = TIMEOUT_S,
        session: requests.Session | None = None,
    ) -> None:
        self.url = generator_url.rstrip("/") + FLEET_PATH
        self.shown_url = redact_url(generator_url.rstrip("/"))
        self.timeout_s = timeout_s
        self._session = session or requests.Session()

    def read(self) -> FleetReading:
        """Return the workers and queue as the generator sees them, or a 502/503 and the reason."""
        where = f"the generator at {self.shown_url}"
        try:
            response = self._session.get(self.url, timeout=self.timeout_s, headers={"Accept": "application/json"})
        except requests.RequestException as error:
            return FleetReading(None, 502, f"{where} did not answer ({error.__class__.__name__}): workers unknown")
        if response.status_code == 404:
            return FleetReading(None, 502, f"{where} does not serve {FLEET_PATH} (a version from before it?)")
        try:
            body = response.json()
        except ValueError:
            return FleetReading(None, 502, f"{where} answered HTTP {response.status_code} without JSON")
        if response.status_code == 503:  # queue mode with Redis away: the generator says why
            reason = body.get("error") if isinstance(body, dict) else None
            return FleetReading(None, 503, f"{where} cannot read its queue: {reason or 'HTTP 503'}")
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("workers"), list):
            return FleetReading(None, 502, f"{where} answered HTTP {response.status_code} without a fleet")
        return FleetReading(body, 200)

    def close(self) -> None:
        """Release the HTTP connections."""
        self._session.close()
