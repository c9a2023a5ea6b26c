"""The monitor's configuration: defaults, then environment variables, then command-line flags.

`SETTINGS` declares every setting (flag, environment variables, default, help); README.md's configuration table
is generated from it (`python scripts/settings_table.py`). Variables renamed to the GENERATOR_/MONITOR_/I2V_ scheme are
still read under their old names for one release, with a warning.

`MONITOR_STORE` may also be given as InfluxDB's own `http://host:8086/db` form (the old `INFLUX_URL` too); it is
read as `influxdb://...`. Secrets (the tokens, store passwords) come from the environment only, never flags
(flags show in `ps`).
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

from common.cpu_priority import PRIORITIES as CPU_PRIORITIES
from common.redact import redact_url
from common.settings import Setting, env_value
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
    quality: bool = True
    quality_threshold: float = 0.6
    quality_max_wait_s: float = 300.0
    quality_startup_quiet_s: float = 40.0
    quality_max_queue: int = 1000
    quality_cpu_priority: str = "idle"
    alert_rules: Path | None = None
    alert_state_path: Path | None = Path("var/monitor/alerts-state.json")
    alertmanager_urls: tuple[str, ...] = ()
    alert_webhook_urls: tuple[str, ...] = field(default=(), repr=False)  # may embed a secret
    restart_command: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    external_url: str | None = None
    expected_gpus: int = 0
    viewer_token: str | None = field(default=None, repr=False)
    price_per_kwh: float | None = None
    price_per_gpu_hour: float | None = None

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
        if not 1 <= self.quality_max_queue <= 100_000:
            raise ConfigError(f"MONITOR_QUALITY_MAX_QUEUE must be 1-100000 clips, got {self.quality_max_queue}")
        if self.quality_cpu_priority not in CPU_PRIORITIES:
            raise ConfigError(
                f"MONITOR_QUALITY_CPU_PRIORITY must be one of {', '.join(CPU_PRIORITIES)}, "
                f"got {self.quality_cpu_priority!r}"
            )
        if not 0 <= self.quality_startup_quiet_s <= 3600:
            raise ConfigError(
                f"MONITOR_QUALITY_STARTUP_QUIET must be 0-3600 seconds, got {self.quality_startup_quiet_s}"
            )
        for source, urls in (
            ("MONITOR_ALERTMANAGER_URLS", self.alertmanager_urls),
            ("MONITOR_ALERT_WEBHOOK_URLS", self.alert_webhook_urls),
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
        for flag, price in (("--price-per-kwh", self.price_per_kwh), ("--price-per-gpu-hour", self.price_per_gpu_hour)):
            if price is not None and not 0 <= price < 1e9:
                raise ConfigError(f"{flag} must be a price of 0 or more, got {price}")
        if self.host not in LOOPBACK:
            tokens = (
                ("I2V_INGEST_TOKEN", self.ingest_token),
                ("I2V_ADMIN_TOKEN", self.admin_token),
                ("I2V_VIEWER_TOKEN", self.viewer_token),
            )
            missing = [name for name, value in tokens if not value]
            if missing:
                raise ConfigError(
                    f"binding to {self.host} opens ingest, ratings, alert acks, prompts and reports to the network: "
                    f"set {' and '.join(missing)}, or bind to 127.0.0.1"
                )
        return self

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> MonitorConfig:
        """Build from defaults, then the environment, then flags; ConfigError for an unreadable value."""
        env = os.environ if environ is None else environ
        args = _parser().parse_args(argv)
        values: dict[str, object] = {}

        def pick(name: str, flag: str | None, convert: Callable[[str], object] = str, kind: str = "a number") -> None:
            setting = BY_FIELD[name]
            raw = flag if flag is not None else env_value(setting, env)
            if raw is None:
                return
            try:
                values[name] = convert(raw)
            except ValueError:
                source = setting.flag if flag is not None and setting.flag else setting.env[0]
                raise ConfigError(f"{source} must be {kind}, got {raw!r}") from None

        pick("host", args.host)
        pick("port", args.port, convert=int)
        pick("generator_url", args.generator_url)
        pick("sample_interval_s", args.sample_interval, convert=float)
        pick("data_dir", args.data_dir, convert=Path)
        pick("spool_dir", args.spool_dir, convert=Path)
        pick("spool_max_bytes", None, convert=int)
        pick("ingest_token", None)
        pick("host_name", args.host_name)
        pick("outputs_dir", args.outputs, convert=Path)
        pick("store_wait_s", args.store_wait, convert=float)
        pick("clip_model", args.clip_model, convert=Path)
        pick("quality", args.quality, convert=switch, kind="1 or 0 (on/off, true/false, yes/no)")
        pick("quality_threshold", args.quality_threshold, convert=float)
        pick("quality_max_wait_s", args.quality_max_wait, convert=float)
        pick("quality_startup_quiet_s", None, convert=float)
        pick("quality_max_queue", None, convert=int)
        pick("quality_cpu_priority", None)
        pick("alert_rules", args.alert_rules, convert=Path)
        pick("alertmanager_urls", None, convert=url_list)
        pick("alert_webhook_urls", None, convert=url_list)
        pick("restart_command", args.restart_command)
        pick("admin_token", None)
        pick("external_url", args.external_url)
        pick("expected_gpus", args.expected_gpus, convert=int)
        pick("viewer_token", None)
        pick("price_per_kwh", args.price_per_kwh, convert=float)
        pick("price_per_gpu_hour", args.price_per_gpu_hour, convert=float)
        state = env_value(BY_FIELD["alert_state_path"], env, empty_counts=True)
        if state is not None:
            values["alert_state_path"] = Path(state) if state else None
        store = args.store if args.store is not None else env_value(BY_FIELD["store_url"], env)
        if store is not None:
            values["store_url"] = influx_url(store)
        data_dir = Path(values.get("data_dir", cls.data_dir))  # type: ignore[arg-type]  # a str or Path by then
        values.setdefault("store_url", f"sqlite:///{data_dir / 'monitor.db'}")
        values.setdefault("spool_dir", data_dir / "spool")
        values.setdefault("alert_state_path", data_dir / "alerts-state.json")
        return replace(cls(), **values)  # type: ignore[arg-type]  # values are checked by validate(), not here


def switch(text: str) -> bool:
    """Read an on/off setting: 1, true, yes or on; 0, false, no or off (any case). ValueError otherwise."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def url_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of URLs, dropping blanks."""
    return tuple(url.strip() for url in text.split(",") if url.strip())


def influx_url(url: str) -> str:
    """Read InfluxDB's own URL form as a store URL: `http(s)://host:port/db` becomes `influxdb(s)://host:port/db`."""
    if url.startswith("http://"):
        return "influxdb://" + url.removeprefix("http://")
    if url.startswith("https://"):
        return "influxdbs://" + url.removeprefix("https://")
    return url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitor",
        description="The monitoring sidecar: samples the GPUs and host, ingests the generator's events, "
        "serves the API. Every flag also has an environment variable (README's configuration table).",
    )
    parser.add_argument("--version", action="version", version=version_line("monitor"))
    for setting in SETTINGS:
        if setting.flag is not None:  # values stay text here: from_sources converts them, naming the flag
            parser.add_argument(
                setting.flag,
                dest=setting.flag.removeprefix("--").replace("-", "_"),
                help=f"{setting.help} (env {setting.env[0]}; default {setting.default})".replace("%", "%%"),
            )
    return parser


#: Every setting of the monitor: the README's table is generated from these (python scripts/settings_table.py).
SETTINGS: tuple[Setting, ...] = (
    Setting("host", "--host", ("MONITOR_BIND",), "127.0.0.1", "address to listen on"),
    Setting("port", "--port", ("MONITOR_PORT",), "7861", "port to listen on"),
    Setting(
        "store_url",
        "--store",
        ("MONITOR_STORE",),
        "`sqlite:///<data dir>/monitor.db`",
        "`sqlite:///path` or `influxdb://[user:pass@]host:port/db` (`influxdbs://` for HTTPS)",
        old_env=("INFLUX_URL",),
    ),
    Setting(
        "generator_url",
        "--generator-url",
        ("MONITOR_GENERATOR_URL",),
        "`http://127.0.0.1:7860`",
        "the generator's base URL (its PID, health and metrics; cancel)",
        old_env=("GENERATOR_URL",),
    ),
    Setting("sample_interval_s", "--sample-interval", ("MONITOR_SAMPLE_INTERVAL",), "2", "seconds between samples"),
    Setting("data_dir", "--data-dir", ("MONITOR_DATA_DIR",), "var/monitor", "folder of the SQLite store and the spool"),
    Setting("spool_dir", "--spool-dir", ("MONITOR_SPOOL_DIR",), "`<data dir>/spool`", "folder of the disk spool"),
    Setting("spool_max_bytes", None, ("MONITOR_SPOOL_MAX_BYTES",), "268435456 (256 MiB)", "bound of the disk spool"),
    Setting(
        "host_name",
        "--host-name",
        ("MONITOR_HOST_NAME", "I2V_HOST_NAME"),
        "this machine's name",
        "the `host` tag of every point",
    ),
    Setting(
        "outputs_dir",
        "--outputs",
        ("MONITOR_OUTPUTS",),
        "outputs",
        "the generator's clips folder, as the monitor sees it (quality scores)",
        old_env=("GENERATOR_OUTPUTS",),
    ),
    Setting("store_wait_s", "--store-wait", ("MONITOR_STORE_WAIT",), "30", "seconds to wait for the store at start"),
    Setting(
        "clip_model",
        "--clip-model",
        ("MONITOR_CLIP_MODEL",),
        "none (CLIP scores are null, saying why)",
        "folder of a transformers CLIP model for quality scores",
        old_env=("CLIP_MODEL_DIR",),
    ),
    Setting(
        "quality",
        "--quality",
        ("MONITOR_QUALITY",),
        "1",
        "score finished clips (`0`: no clip is scored and no CLIP loaded, e.g. where another host scores them or "
        "this host's cores and GPU are to be spared)",
    ),
    Setting(
        "quality_threshold",
        "--quality-threshold",
        ("MONITOR_QUALITY_THRESHOLD",),
        "0.6",
        "combined quality below it is low",
    ),
    Setting(
        "quality_max_wait_s",
        "--quality-max-wait",
        ("MONITOR_QUALITY_MAX_WAIT",),
        "300",
        "seconds a clip waits for a gap between jobs before it is scored beside the running job (one per job ending)",
    ),
    Setting(
        "quality_startup_quiet_s",
        None,
        ("MONITOR_QUALITY_STARTUP_QUIET",),
        "40",
        "seconds after start before clips are scored between jobs (the generator's replay may say a job runs)",
    ),
    Setting(
        "quality_max_queue",
        None,
        ("MONITOR_QUALITY_MAX_QUEUE",),
        "1000",
        "clips waiting to be scored held in memory; with a store, those beyond wait there and are taken back later",
    ),
    Setting(
        "quality_cpu_priority",
        None,
        ("MONITOR_QUALITY_CPU_PRIORITY",),
        "idle",
        "CPU priority of clip scoring: `idle` (Linux's SCHED_IDLE: only cores nothing else wants, so the "
        "generator never waits for it), `low` (nice 19) or `normal`",
    ),
    Setting(
        "alert_rules",
        "--alert-rules",
        ("MONITOR_ALERT_RULES",),
        "`alerts/rules.yml`",
        "the alert rule file",
        old_env=("I2V_ALERT_RULES",),
    ),
    Setting(
        "alert_state_path",
        None,
        ("MONITOR_ALERT_STATE",),
        "`<data dir>/alerts-state.json`",
        "where alert state survives restarts (empty: not kept)",
        old_env=("I2V_ALERT_STATE",),
    ),
    Setting(
        "alertmanager_urls",
        None,
        ("MONITOR_ALERTMANAGER_URLS",),
        "none",
        "Alertmanager URLs, comma-separated (every cluster member)",
        old_env=("ALERTMANAGER_URLS",),
    ),
    Setting(
        "alert_webhook_urls",
        None,
        ("MONITOR_ALERT_WEBHOOK_URLS",),
        "none",
        "webhook URLs, comma-separated (they often embed a secret)",
        old_env=("ALERT_WEBHOOK_URLS",),
        secret=True,
    ),
    Setting(
        "restart_command",
        "--restart-command",
        ("MONITOR_RESTART_COMMAND",),
        "none (the fatal OOM-streak alert then only pages)",
        "command that restarts the generator, run without a shell",
        old_env=("GENERATOR_RESTART_CMD",),
    ),
    Setting(
        "external_url",
        "--external-url",
        ("MONITOR_EXTERNAL_URL",),
        "`http://<bind address, or this host's name>:<port>`",
        "the monitor's address as people reach it: alert notifications link to the alert on its dashboard",
    ),
    Setting(
        "expected_gpus",
        "--expected-gpus",
        ("MONITOR_EXPECTED_GPUS",),
        "0",
        "GPUs this host should have: NvmlUnavailable fires when NVML lists fewer; 0 turns that alert off",
    ),
    Setting(
        "price_per_kwh",
        "--price-per-kwh",
        ("MONITOR_PRICE_PER_KWH",),
        "none (no energy cost)",
        "what a kWh of GPU energy costs, in the currency of your choice: jobs' energy cost in the reports",
    ),
    Setting(
        "price_per_gpu_hour",
        "--price-per-gpu-hour",
        ("MONITOR_PRICE_PER_GPU_HOUR",),
        "none (no GPU-time cost)",
        "what an hour of one GPU costs, in the same currency: jobs' GPU-time cost in the reports",
    ),
    Setting(
        "ingest_token",
        None,
        ("I2V_INGEST_TOKEN",),
        "none (ingest open: allowed on loopback only)",
        "token the generator's event batches must carry",
        old_env=("INGEST_TOKEN",),
        secret=True,
    ),
    Setting(
        "admin_token",
        None,
        ("I2V_ADMIN_TOKEN",),
        "none",
        "the generator's cancel token; also guards ratings and alert acknowledgement",
        old_env=("ADMIN_TOKEN",),
        secret=True,
    ),
    Setting(
        "viewer_token",
        None,
        ("I2V_VIEWER_TOKEN",),
        "none",
        "required by what shows prompts, clips or reports (jobs, a job, its quality, the CSV reports) when set, "
        "and to listen anywhere but loopback",
        secret=True,
    ),
)
BY_FIELD = {setting.field: setting for setting in SETTINGS}
