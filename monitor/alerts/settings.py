"""The alerting's settings: defaults, then environment; validated without network calls."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from monitor.alerts.rules import RuleFileError, load_rules

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"


def _urls(text: str) -> tuple[str, ...]:
    return tuple(url.strip() for url in text.split(",") if url.strip())


@dataclass(frozen=True)
class AlertSettings:
    """Where the rules and state live, where notifications go, and how actions reach the generator.

    An empty `generator_url` turns the generator poller off (its rules then get no values).
    """

    rules_path: Path = DEFAULT_RULES
    state_path: Path | None = Path("data/alerts-state.json")
    alertmanager_urls: tuple[str, ...] = ()
    webhook_urls: tuple[str, ...] = ()
    log_notifications: bool = True
    generator_url: str = "http://127.0.0.1:7860"
    admin_token: str | None = None
    restart_command: str | None = None
    interval_s: float = 2.0
    scrape_timeout_s: float = 1.5
    resend_s: float = 60.0
    resolved_resend_s: float = 300.0
    stale_after_s: float = 300.0
    restart_backoff_initial_s: float = 10.0
    restart_backoff_max_s: float = 300.0
    restart_reset_after_s: float = 600.0
    restart_max_per_window: int = 5
    restart_window_s: float = 3600.0
    error_statuses: tuple[str, ...] = ("failed",)
    external_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> AlertSettings:
        """Read I2V_ALERT_* variables (and the shared ADMIN_TOKEN, GENERATOR_URL, GENERATOR_RESTART_CMD)."""
        settings = cls()
        env = environ.get
        changes: dict[str, Any] = {}
        if env("I2V_ALERT_RULES"):
            changes["rules_path"] = Path(environ["I2V_ALERT_RULES"])
        if "I2V_ALERT_STATE" in environ:
            changes["state_path"] = Path(environ["I2V_ALERT_STATE"]) if environ["I2V_ALERT_STATE"] else None
        if env("ALERTMANAGER_URLS"):
            changes["alertmanager_urls"] = _urls(environ["ALERTMANAGER_URLS"])
        if env("ALERT_WEBHOOK_URLS"):
            changes["webhook_urls"] = _urls(environ["ALERT_WEBHOOK_URLS"])
        if env("GENERATOR_URL"):
            changes["generator_url"] = environ["GENERATOR_URL"]
        if env("ADMIN_TOKEN"):
            changes["admin_token"] = environ["ADMIN_TOKEN"]
        if env("GENERATOR_RESTART_CMD"):
            changes["restart_command"] = environ["GENERATOR_RESTART_CMD"]
        if env("I2V_ALERT_RESEND_S"):
            changes["resend_s"] = float(environ["I2V_ALERT_RESEND_S"])
        return replace(settings, **{**changes, **overrides})

    def validate(self) -> None:
        """Raise ValueError (RuleFileError for the rules) with one clear line; no network calls."""
        load_rules(self.rules_path)
        for url in (*self.alertmanager_urls, *self.webhook_urls, *([self.generator_url] if self.generator_url else [])):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"alerting: {url!r} is not an http(s) URL")
        if self.restart_command is not None and not shlex.split(self.restart_command):
            raise ValueError("alerting: GENERATOR_RESTART_CMD is empty")
        if self.interval_s <= 0 or self.resend_s <= 0:
            raise ValueError("alerting: interval_s and resend_s must be positive")


__all__ = ["AlertSettings", "RuleFileError"]
