"""The alerting's settings, taken from the monitor's configuration; validated without network calls."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.redact import redact_url
from monitor.alerts.rules import RuleFileError, load_rules

if TYPE_CHECKING:
    from monitor.config import MonitorConfig

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"


@dataclass(frozen=True)
class AlertSettings:
    """Where the rules and state live, where notifications go, and how actions reach the generator.

    An empty `generator_url` turns the generator poller off (its rules then get no values).

    Surviving a monitor outage: each firing alert reaches Alertmanager with `endsAt` `firing_valid_s` ahead and
    is resent every `resend_s`, so an outage shorter than `outage_bound_s` (their difference: 14 minutes by
    default) never resolves a firing alert there. The Watchdog is resent every `watchdog_resend_s` and valid
    for `watchdog_valid_s`, so it stops arriving about a minute after the monitor dies.
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
    firing_valid_s: float = 900.0
    watchdog_resend_s: float = 15.0
    watchdog_valid_s: float = 60.0
    resolved_resend_s: float = 300.0
    stale_after_s: float = 300.0
    restart_backoff_initial_s: float = 10.0
    restart_backoff_max_s: float = 300.0
    restart_reset_after_s: float = 600.0
    restart_max_per_window: int = 5
    restart_window_s: float = 3600.0
    error_statuses: tuple[str, ...] = ("failed",)
    external_url: str = ""  # the monitor's address as people reach it: alert links (generatorURL), externalURL
    store_label: str = ""  # the store's URL without credentials, for StoreUnreachable
    clip_configured: bool = True  # False: LowQualityStreak says the scores lack CLIP
    expected_gpus: int = 0  # GPUs the host should have; NvmlUnavailable fires when NVML lists fewer (0: off)
    spool_max_bytes: int = 256 * 1024 * 1024  # the store spool's bound, for SpoolNearBound
    silence_default_s: float = 2 * 3600.0  # how long an acknowledgement's Alertmanager silence lasts by default
    silence_max_s: float = 7 * 86400.0
    inputs_save_interval_s: float = 10.0  # the scrape window is saved this often (streaks and restarts at once)

    @property
    def outage_bound_s(self) -> float:
        """Return the longest monitor outage during which Alertmanager resolves none of its firing alerts."""
        return self.firing_valid_s - self.resend_s

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
            "external_url": config.public_url,
            "store_label": redact_url(config.store_url),
            "clip_configured": config.clip_model is not None,
            "expected_gpus": config.expected_gpus,
            "spool_max_bytes": config.spool_max_bytes,
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
            raise ValueError("alerting: MONITOR_RESTART_COMMAND is empty")
        if self.interval_s <= 0 or self.resend_s <= 0:
            raise ValueError("alerting: interval_s and resend_s must be positive")
        if self.firing_valid_s <= self.resend_s or self.watchdog_valid_s <= self.watchdog_resend_s:
            raise ValueError("alerting: an alert's validity must be longer than its resend interval")
        if self.expected_gpus < 0:
            raise ValueError("alerting: expected_gpus must be 0 or more")


__all__ = ["AlertSettings", "RuleFileError"]
