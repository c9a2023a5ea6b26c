"""Configure a service's logging: one JSON object per line (what Loki, Fluent Bit and Vector parse), or text.

    configure_logging("monitor")              # LOG_LEVEL (default INFO) and LOG_FORMAT=json|text (default json)
    set_log_host("gpu-host-1")                # once the configuration names the host

Every record of the process goes through the root logger's one handler (on stderr), so the logs of Flask,
waitress, APScheduler and `warnings` come out in the same format. A JSON line holds `time` (RFC 3339 UTC),
`level`, `logger`, `message`, `service` and `host`, plus what the call site adds with `extra=`: the job
(`job_id`), the GPU (`gpu`, `gpu_uuid`), an event (`event`) and so on; an exception comes as `exc_info`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers that say too much at INFO for a service's log (APScheduler logs every sampler tick).
QUIET_LOGGERS = {"apscheduler": logging.WARNING}


class LogConfigError(ValueError):
    """LOG_LEVEL or LOG_FORMAT holds a value that cannot be used; the message says which values can."""


class _ServiceFields(logging.Filter):
    """Stamp every record with the service and host, so each line says where it came from."""

    def __init__(self, service: str, host: str) -> None:
        super().__init__()
        self.service = service
        self.host = host

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "host"):
            record.host = self.host
        return True


class _JsonLines(JsonFormatter):
    """python-json-logger's formatter with RFC 3339 UTC times in milliseconds."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Format the record's time as 2026-01-01T12:00:00.123Z."""
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def log_settings(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Read (level, format) from LOG_LEVEL and LOG_FORMAT; raise LogConfigError naming what is allowed."""
    env = os.environ if environ is None else environ
    level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LEVELS:
        raise LogConfigError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}, got {env.get('LOG_LEVEL')!r}")
    fmt = (env.get("LOG_FORMAT") or "json").strip().lower()
    if fmt not in FORMATS:
        raise LogConfigError(f"LOG_FORMAT must be json or text, got {env.get('LOG_FORMAT')!r}")
    return level, fmt


def configure_logging(
    service: str,
    *,
    environ: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
    host: str | None = None,
) -> None:
    """Send every log record of this process to `stream` (stderr) as JSON lines or text, at LOG_LEVEL.

    Raises:
        LogConfigError: LOG_LEVEL or LOG_FORMAT is not a value this accepts.
    """
    level, fmt = log_settings(environ)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ServiceFields(service, host or socket.gethostname()))
    formatter: logging.Formatter
    if fmt == "json":
        formatter = _JsonLines(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, logging.getLevelName(level)))
    logging.captureWarnings(True)


def set_log_host(host: str) -> None:
    """Name the host on every later line (the configured host name, once the configuration is read)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, _ServiceFields):
                log_filter.host = host


def fail(service: str, message: str) -> int:
    """Say why the service cannot start, as a log record when logging is set up (else on stderr); return 2."""
    logger = logging.getLogger(service)
    if logging.getLogger().handlers:
        logger.critical("%s: %s", service, message)
    else:
        print(f"{service}: {message}", file=sys.stderr)
    return 2


def extra(**fields: Any) -> dict[str, Any]:
    """Return `extra=` fields for a log call, leaving out those that are None."""
    return {key: value for key, value in fields.items() if value is not None}
