"""Persist alert state to a JSON file with an atomic replace, and read it back at start."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from monitor.alerts.record import Alert

log = logging.getLogger(__name__)
VERSION = 1


class StateFile:
    """A JSON file holding the active alerts and the history; written whole, replaced atomically."""

    def __init__(self, path: str | Path) -> None:
        """Remember the path; the folder is created on the first save."""
        self.path = Path(path)

    def save(self, active: list[Alert], history: list[Alert]) -> None:
        """Write the state: a temporary file in the same folder, fsync, then os.replace over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": VERSION,
            "active": [alert.to_dict() for alert in active],
            "history": [alert.to_dict() for alert in history],
        }
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> tuple[list[Alert], list[Alert]]:
        """Read (active, history); a missing file is empty, an unreadable one is set aside and logged."""
        try:
            payload: Any = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or payload.get("version") != VERSION:
                raise ValueError("unknown state format")  # noqa: TRY301 - handled with the other bad-file cases
            active = [Alert.from_dict(item) for item in payload["active"]]
            history = [Alert.from_dict(item) for item in payload["history"]]
        except FileNotFoundError:
            return [], []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("alert state %s unreadable (%s): moved to %s, starting empty", self.path, exc, aside)
            try:
                os.replace(self.path, aside)
            except OSError:
                log.warning("could not move %s aside", self.path)
            return [], []
        return active, history
