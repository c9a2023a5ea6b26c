"""The monitor's configuration: defaults, then environment variables, then command-line flags.

Setting (flag; environment; default):
- host: --host; MONITOR_BIND; 127.0.0.1
- port: --port; MONITOR_PORT; 7861
- store_url: --store; MONITOR_STORE, else INFLUX_URL; sqlite:///<data_dir>/monitor.db
- generator_url: --generator-url; GENERATOR_URL; http://127.0.0.1:7860
- sample_interval_s: --sample-interval; MONITOR_SAMPLE_INTERVAL; 2.0
- data_dir: --data-dir; MONITOR_DATA_DIR; var/monitor
- spool_dir: --spool-dir; MONITOR_SPOOL_DIR; <data_dir>/spool
- spool_max_bytes: MONITOR_SPOOL_MAX_BYTES; 256 MiB
- ingest_token: INGEST_TOKEN; none (ingest is open, which validate() allows only on loopback)
- host_name: --host-name; MONITOR_HOST_NAME, else I2V_HOST_NAME; this machine's hostname
- outputs_dir: --outputs; GENERATOR_OUTPUTS; outputs
- store_wait_s: --store-wait; MONITOR_STORE_WAIT; 30 seconds to wait for the store at start
- clip_model: --clip-model; CLIP_MODEL_DIR; none (CLIP and image-to-video scores are null, saying why)
- quality_threshold: --quality-threshold; MONITOR_QUALITY_THRESHOLD; 0.6 (combined score below it: low quality)
- quality_max_wait_s: --quality-max-wait; MONITOR_QUALITY_MAX_WAIT; 300 seconds a clip waits for a gap between
  jobs before it is scored on the CPU (monitor/quality/schedule.py)
- quality_startup_quiet_s: MONITOR_QUALITY_STARTUP_QUIET; 40 seconds after start before clips are scored between
  jobs (the generator's replay of what it spooled may say a job runs)
- alert_rules: --alert-rules; I2V_ALERT_RULES; the shipped alerts/rules.yml
- alert_state_path: I2V_ALERT_STATE (empty: not kept); <data_dir>/alerts-state.json
- alertmanager_urls: ALERTMANAGER_URLS (comma-separated); none
- alert_webhook_urls: ALERT_WEBHOOK_URLS (comma-separated; webhook URLs often embed a secret); none
- restart_command: --restart-command; GENERATOR_RESTART_CMD; none (the fatal OOM-streak alert then only pages)
- admin_token: ADMIN_TOKEN; none (the generator's cancel token; also guards acknowledging alerts)
- external_url: --external-url; MONITOR_EXTERNAL_URL; http://<bind address, or this host's name>:<port> (the
  monitor's address as people reach it: alert notifications link to the alert on its dashboard)
- expected_gpus: --expected-gpus; MONITOR_EXPECTED_GPUS; 0 (GPUs this host should have: NvmlUnavailable fires
  when NVML lists fewer; 0 turns that alert off)

`INFLUX_URL` may be given as `http://host:8086/db` (InfluxDB's own form); it is read as `influxdb://...`.
Secrets (the ingest token, store passwords) come from the environment only, never flags (flags show in `ps`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from common.redact import redact_url
from common.version import version_line

MiB = 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line that says what to change."""


@dataclass(frozen=True)
class MonitorConfig:
    """Everything `python -m monitor` needs; built by `from_sources`, checked by `validate`."""

    host: str = "127.0.0.1"
    port: int = 7861
    store_url: str = "sqlite:///var/monitor/monitor.db"
    generator_url: str | None = "http://127.0.0.1:7860"
    sample_interval_s: float = 2.0
    data_dir: Path = Path("var/monitor")
    spool_dir: Path = Path("var/monitor/spool")
    spool_max_bytes: int = 256 * MiB
    ingest_token: str | None = None
    host_name: str = socket.gethostname()
    outputs_dir: Path = Path("outputs")
    store_wait_s: float = 30.0
    clip_model: Path | None = None
    quality_threshold: float = 0.6
    quality_max_wait_s: float = 300.0
    quality_startup_quiet_s: float = 40.0
    alert_rules: Path | None = None
    alert_state_path: Path | None = Path("var/monitor/alerts-state.json")
    alertmanager_urls: tuple[str, ...] = ()
    alert_webhook_urls: tuple[str, ...] = field(default=(), repr=False)  # may embed a secret
    restart_command: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    external_url: str | None = None
    expected_gpus: int = 0

    @property
    def public_url(self) -> str:
        """Return the monitor's base URL as people reach it (for links in alert notifications)."""
        if self.external_url:
            return self.external_url.rstrip("/")
        host = self.host_name if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def validate(self) -> MonitorConfig:
        """Return self, or raise ConfigError naming the setting and what to change; no network calls."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1-65535, got {self.port}")
        if not 0.05 <= self.sample_interval_s <= 3600:
            raise ConfigError(f"--sample-interval must be 0.05-3600 seconds, got {self.sample_interval_s}")
        scheme = self.store_url.split("://", 1)[0] if "://" in self.store_url else ""
        if scheme == "sqlite":
            if len(self.store_url) <= len("sqlite:///"):
                raise ConfigError(
                    f"--store sqlite URL needs a path: sqlite:///var/monitor.db, got {redact_url(self.store_url)!r}"
                )
        elif scheme in ("influxdb", "influxdbs"):
            parts = urlsplit(self.store_url)
            try:
                parts.port  # noqa: B018  (parsing it is the check)
            except ValueError:
                raise ConfigError(f"--store has a bad port: {redact_url(self.store_url)!r}") from None
            if not parts.hostname or not parts.path.strip("/"):
                raise ConfigError(
                    f"--store must look like influxdb://[user:pass@]host:8086/db, got {redact_url(self.store_url)!r}"
                )
        else:
            raise ConfigError(
                f"--store must be sqlite:///path or influxdb://host:port/db, got {redact_url(self.store_url)!r}"
            )
        if self.generator_url and not self.generator_url.startswith(("http://", "https://")):
            raise ConfigError(f"--generator-url must start with http:// or https://, got {self.generator_url!r}")
        if self.spool_max_bytes < MiB:
            raise ConfigError(f"MONITOR_SPOOL_MAX_BYTES must be at least {MiB}, got {self.spool_max_bytes}")
        if not self.host_name or "\n" in self.host_name or self.host_name.endswith("\\"):
            raise ConfigError(f"--host-name must be a plain name, got {self.host_name!r}")
        if self.store_wait_s < 0:
            raise ConfigError(f"--store-wait must be >= 0 seconds, got {self.store_wait_s}")
        if not 0 <= self.quality_threshold <= 1:
            raise ConfigError(f"--quality-threshold must be 0-1, got {self.quality_threshold}")
        if not 0 <= self.quality_max_wait_s <= 86_400:
            raise ConfigError(f"--quality-max-wait must be 0-86400 seconds, got {self.quality_max_wait_s}")
        if not 0 <= self.quality_startup_quiet_s <= 3600:
            raise ConfigError(
                f"MONITOR_QUALITY_STARTUP_QUIET must be 0-3600 seconds, got {self.quality_startup_quiet_s}"
            )
        for source, urls in (
            ("ALERTMANAGER_URLS", self.alertmanager_urls),
            ("ALERT_WEBHOOK_URLS", self.alert_webhook_urls),
        ):
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    shown = redact_url(url, keep_path=False)  # a webhook's path is often its secret
                    raise ConfigError(f"{source} takes http(s) URLs separated by commas, got {shown!r}")
        if self.restart_command is not None:
            try:
                argv = shlex.split(self.restart_command)
            except ValueError as e:
                raise ConfigError(f"--restart-command cannot be split into arguments: {e}") from None
            if not argv:
                raise ConfigError("--restart-command is empty: give the command that restarts the generator")
        if self.external_url is not None and not self.external_url.startswith(("http://", "https://")):
            raise ConfigError(f"--external-url must start with http:// or https://, got {self.external_url!r}")
        if not 0 <= self.expected_gpus <= 1024:
            raise ConfigError(f"--expected-gpus must be 0-1024, got {self.expected_gpus}")
        if self.host not in LOOPBACK and not (self.ingest_token and self.admin_token):
            raise ConfigError(
                f"binding to {self.host} opens ingest, ratings and alert acks to the network: set INGEST_TOKEN and "
                "ADMIN_TOKEN, or bind to 127.0.0.1"
            )
        return self

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> MonitorConfig:
        """Build from defaults, then the environment, then flags; ConfigError for an unreadable value."""
        env = os.environ if environ is None else environ
        args = _parser().parse_args(argv)
        values: dict[str, object] = {}

        def pick(name: str, flag: str | None, *variables: str, convert: Callable[[str], object] = str) -> None:
            raw = flag if flag is not None else next((env[v] for v in variables if env.get(v)), None)
            if raw is None:
                return
            try:
                values[name] = convert(raw)
            except ValueError:
                source = f"--{name.removesuffix('_s').replace('_', '-')}" if flag is not None else variables[0]
                raise ConfigError(f"{source} must be a number, got {raw!r}") from None

        pick("host", args.host, "MONITOR_BIND")
        pick("port", args.port, "MONITOR_PORT", convert=int)
        pick("generator_url", args.generator_url, "GENERATOR_URL")
        pick("sample_interval_s", args.sample_interval, "MONITOR_SAMPLE_INTERVAL", convert=float)
        pick("data_dir", args.data_dir, "MONITOR_DATA_DIR", convert=Path)
        pick("spool_dir", args.spool_dir, "MONITOR_SPOOL_DIR", convert=Path)
        pick("spool_max_bytes", None, "MONITOR_SPOOL_MAX_BYTES", convert=int)
        pick("ingest_token", None, "INGEST_TOKEN")
        pick("host_name", args.host_name, "MONITOR_HOST_NAME", "I2V_HOST_NAME")
        pick("outputs_dir", args.outputs, "GENERATOR_OUTPUTS", convert=Path)
        pick("store_wait_s", args.store_wait, "MONITOR_STORE_WAIT", convert=float)
        pick("clip_model", args.clip_model, "CLIP_MODEL_DIR", convert=Path)
        pick("quality_threshold", args.quality_threshold, "MONITOR_QUALITY_THRESHOLD", convert=float)
        pick("quality_max_wait_s", args.quality_max_wait, "MONITOR_QUALITY_MAX_WAIT", convert=float)
        pick("quality_startup_quiet_s", None, "MONITOR_QUALITY_STARTUP_QUIET", convert=float)
        pick("alert_rules", args.alert_rules, "I2V_ALERT_RULES", convert=Path)
        pick("alertmanager_urls", None, "ALERTMANAGER_URLS", convert=url_list)
        pick("alert_webhook_urls", None, "ALERT_WEBHOOK_URLS", convert=url_list)
        pick("restart_command", args.restart_command, "GENERATOR_RESTART_CMD")
        pick("admin_token", None, "ADMIN_TOKEN")
        pick("external_url", args.external_url, "MONITOR_EXTERNAL_URL")
        pick("expected_gpus", args.expected_gpus, "MONITOR_EXPECTED_GPUS", convert=int)
        if "I2V_ALERT_STATE" in env:
            values["alert_state_path"] = Path(env["I2V_ALERT_STATE"]) if env["I2V_ALERT_STATE"] else None
        if args.store is not None or env.get("MONITOR_STORE"):
            values["store_url"] = args.store if args.store is not None else env["MONITOR_STORE"]
        elif env.get("INFLUX_URL"):
            values["store_url"] = influx_url(env["INFLUX_URL"])
        data_dir = Path(values.get("data_dir", cls.data_dir))  # type: ignore[arg-type]  # a str or Path by then
        values.setdefault("store_url", f"sqlite:///{data_dir / 'monitor.db'}")
        values.setdefault("spool_dir", data_dir / "spool")
        values.setdefault("alert_state_path", data_dir / "alerts-state.json")
        return replace(cls(), **values)  # type: ignore[arg-type]  # values are checked by validate(), not here


def url_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of URLs, dropping blanks."""
    return tuple(url.strip() for url in text.split(",") if url.strip())


def influx_url(url: str) -> str:
    """Read INFLUX_URL as a store URL: `http(s)://host:port/db` becomes `influxdb(s)://host:port/db`."""
    if url.startswith("http://"):
        return "influxdb://" + url.removeprefix("http://")
    if url.startswith("https://"):
        return "influxdbs://" + url.removeprefix("https://")
    return url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitor",
        description="The monitoring sidecar: samples the GPUs and host, ingests the generator's events, "
        "serves the API. Every flag also has an environment variable (see monitor/config.py).",
    )
    parser.add_argument("--version", action="version", version=version_line("monitor"))
    parser.add_argument("--host", help="address to bind (env MONITOR_BIND; default 127.0.0.1)")
    parser.add_argument("--port", type=str, help="port (env MONITOR_PORT; default 7861)")
    parser.add_argument(
        "--store",
        help="sqlite:///path or influxdb://[user:pass@]host:port/db (env MONITOR_STORE or INFLUX_URL; "
        "default sqlite:///var/monitor/monitor.db)",
    )
    parser.add_argument("--generator-url", help="the generator's base URL (env GENERATOR_URL)")
    parser.add_argument("--sample-interval", type=str, help="seconds between samples (default 2)")
    parser.add_argument("--data-dir", help="folder for the SQLite store and the spool (default var/monitor)")
    parser.add_argument("--spool-dir", help="folder of the store's disk spool (default <data-dir>/spool)")
    parser.add_argument("--host-name", help="the host tag of every point (default: this machine's name)")
    parser.add_argument("--outputs", help="the generator's outputs folder (env GENERATOR_OUTPUTS)")
    parser.add_argument("--store-wait", type=str, help="seconds to wait for the store at start (default 30)")
    parser.add_argument("--clip-model", help="folder of a CLIP model for quality scores (env CLIP_MODEL_DIR)")
    parser.add_argument(
        "--quality-threshold", type=str, help="combined quality below this is flagged low (default 0.6)"
    )
    parser.add_argument(
        "--quality-max-wait",
        type=str,
        help="seconds a clip waits for a gap between jobs before it is scored on the CPU (default 300)",
    )
    parser.add_argument(
        "--external-url", help="the monitor's address as people reach it, for alert links (env MONITOR_EXTERNAL_URL)"
    )
    parser.add_argument(
        "--expected-gpus",
        type=str,
        help="GPUs this host should have: an alert fires when NVML lists fewer (env MONITOR_EXPECTED_GPUS; default 0)",
    )
    parser.add_argument("--alert-rules", help="alert rule file (env I2V_ALERT_RULES; default alerts/rules.yml)")
    parser.add_argument(
        "--restart-command",
        help="command that restarts the generator on the fatal OOM-streak alert, run without a shell "
        "(env GENERATOR_RESTART_CMD; default none)",
    )
    return parser
