"""Persist the alerting's state to JSON files with an atomic replace, and read it back at start.

Three files beside each other (the alert state path's folder): the alerts themselves (`StateFile`), and, as
plain JSON documents (`JsonFile`), what each notifier delivered and the inputs the rules read from memory (the
low-quality streak, the generator's scrape window, the restart back-off), so that a monitor restart neither
resolves nor re-sends anything that did not change.
"""

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


class JsonFile:
    """One JSON document, written whole (temporary file, fsync, os.replace), read back or set aside if unreadable."""

    def __init__(self, path: str | Path) -> None:
        """Remember the path; the folder is created on the first save."""
        self.path = Path(path)

    def save(self, payload: Any) -> None:
        """Write the document: a temporary file in the same folder, fsync, then os.replace over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def load(self) -> Any:
        """Return the document, or None when the file is missing or unreadable (then moved aside and logged)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.set_aside(exc)
            return None

    def set_aside(self, reason: object) -> None:
        """Move an unusable file to `<name>.corrupt` (kept for a person to read) and log why."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        log.warning("%s unreadable (%s): moved to %s, starting empty", self.path, reason, aside)
        try:
            os.replace(self.path, aside)
        except OSError:
            log.warning("could not move %s aside", self.path)


def sibling(state_path: str | Path, part: str) -> Path:
    """Return the path of another state file beside `state_path`: alerts-state.json -> alerts-state.<part>.json."""
    path = Path(state_path)
    return path.with_name(f"{path.stem}.{part}.json")


class StateFile:
    """A JSON file holding the active alerts and the history."""

    def __init__(self, path: str | Path) -> None:
        """Remember the path; the folder is created on the first save."""
        self.path = Path(path)
        self._file = JsonFile(path)

    def save(self, active: list[Alert], history: list[Alert]) -> None:
        """Write the state atomically."""
        self._file.save(
            {
                "version": VERSION,
                "active": [alert.to_dict() for alert in active],
                "history": [alert.to_dict() for alert in history],
            }
        )

    def load(self) -> tuple[list[Alert], list[Alert]]:
        """Read (active, history); a missing file is empty, an unreadable one is set aside and logged."""
        payload = self._file.load()
        if payload is None:
            return [], []
        try:
            if not isinstance(payload, dict) or payload.get("version") != VERSION:
                raise ValueError("unknown state format")  # noqa: TRY301 - handled with the other bad-file cases
            active = [Alert.from_dict(item) for item in payload["active"]]
            history = [Alert.from_dict(item) for item in payload["history"]]
        except (ValueError, KeyError, TypeError) as exc:
            self._file.set_aside(exc)
            return [], []
        return active, history
