"""The alerting's settings, taken from the monitor's configuration; validated without network calls."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.alerts.rules import RuleFileError, load_rules

if TYPE_CHECKING:
    from monitor.config import MonitorConfig

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"


@dataclass(frozen=True)
class AlertSettings:
    """Where the rules and state live, where notifications go, and how actions reach the generator.

    An empty `generator_url` turns the generator poller off (its rules then get no values).
    """

    rules_path: Path = DEFAULT_RULES
    state_path: Path | None = None
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
    def from_config(cls, config: MonitorConfig, **overrides: Any) -> AlertSettings:
        """Take the user-facing settings from the monitor's one configuration (monitor/config.py).

        The state file defaults to `<data_dir>/alerts-state.json`; the tick follows the sampling interval.
        """
        changes: dict[str, Any] = {
            "state_path": config.alert_state_path,
            "alertmanager_urls": config.alertmanager_urls,
            "webhook_urls": config.alert_webhook_urls,
            "generator_url": config.generator_url or "",
            "admin_token": config.admin_token,
            "restart_command": config.restart_command,
            "interval_s": config.sample_interval_s,
        }
        if config.alert_rules is not None:
            changes["rules_path"] = config.alert_rules
        return replace(cls(), **{**changes, **overrides})

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
