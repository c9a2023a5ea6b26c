"""Create Alertmanager silences (POST /api/v2/silences): what acknowledging an alert does when one is configured.

A cluster gossips its silences, so one member that answers is enough; the members are tried in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

from common.redact import redact_url
from monitor.alerts.record import iso


class SilenceError(Exception):
    """No Alertmanager took the silence; the message says what each answered."""


@dataclass(frozen=True)
class Silence:
    """A silence Alertmanager created: its id, where, and until when (Unix seconds)."""

    silence_id: str
    alertmanager: str  # the member's URL, without credentials
    starts_at: float
    ends_at: float

    def to_public(self) -> dict[str, str]:
        """Serialise for the API (RFC 3339 times)."""
        return {
            "id": self.silence_id,
            "alertmanager": self.alertmanager,
            "starts_at": iso(self.starts_at) or "",
            "ends_at": iso(self.ends_at) or "",
        }


class AlertmanagerSilencer:
    """Silence a label set on the first Alertmanager of a list that accepts it."""

    def __init__(self, urls: Sequence[str], *, session: requests.Session | None = None, timeout_s: float = 5.0) -> None:
        """Take the Alertmanager base URLs (ALERTMANAGER_URLS)."""
        self.urls = [url.rstrip("/") for url in urls]
        self._session = session or requests.Session()
        self._timeout_s = timeout_s

    def create(
        self,
        matchers: Mapping[str, str],
        *,
        created_by: str,
        comment: str,
        starts_at: float,
        ends_at: float,
    ) -> Silence:
        """Silence alerts whose labels equal `matchers`; raise SilenceError when no member accepts it."""
        body = {
            "matchers": [
                {"name": name, "value": value, "isRegex": False, "isEqual": True}
                for name, value in sorted(matchers.items())
            ],
            "startsAt": iso(starts_at),
            "endsAt": iso(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        errors = []
        for url in self.urls:
            shown = redact_url(url)
            try:
                response = self._session.post(f"{url}/api/v2/silences", json=body, timeout=self._timeout_s)
            except requests.RequestException as exc:
                errors.append(f"{shown}: {type(exc).__name__}")
                continue
            if response.status_code != 200:
                errors.append(f"{shown}: HTTP {response.status_code} {response.text[:200].strip()}")
                continue
            try:
                silence_id = str(response.json()["silenceID"])
            except (ValueError, KeyError, TypeError):
                errors.append(f"{shown}: an answer without a silenceID")
                continue
            return Silence(silence_id, shown, starts_at, ends_at)
        raise SilenceError("; ".join(errors) or "no Alertmanager configured")
