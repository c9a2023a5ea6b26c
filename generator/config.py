"""The generator's configuration: defaults, then environment variables, then command-line flags."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything `python -m generator` needs; built by `from_sources`, checked by `validate`."""

    host: str = "127.0.0.1"
    port: int = 7860
    model: str = "tiny"
    monitor_url: str | None = None
    outputs: Path = Path("outputs")
    state_dir: Path = Path("var/generator")
    queue_size: int = 8
    max_upload_bytes: int = 20 * MiB
    admin_token: str | None = field(default=None, repr=False)
    ingest_token: str | None = field(default=None, repr=False)
    host_name: str = socket.gethostname()
    event_spool_bytes: int = 64 * MiB
    threads: int = 8
    gpu_memory_fraction: float | None = None
    # Queue mode (redis://host:port/db): the API enqueues, `python -m generator worker` processes run the jobs.
    queue_url: str | None = field(default=None, repr=False)
    gpu: int = 0  # the CUDA device a worker runs on
    lease_s: float = 30.0  # a worker that shows no sign of life for this long (twice) has its job handed on
    visibility_timeout_s: float = 6 * 3600.0  # must exceed the longest job: see generator/fleet/broker.py
    priority_max_wait_s: float = 600.0  # a job waiting longer below high priority is served as high

    def validate(self) -> None:
        """Raise ValueError with one line that says what to change; makes no network call."""
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be 1-65535, got {self.port}")
        if self.queue_size < 1:
            raise ValueError(f"GENERATOR_QUEUE_SIZE must be at least 1, got {self.queue_size}")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"GENERATOR_GPU_MEMORY_FRACTION must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.queue_url and not self.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--queue must be a redis://host:port/db URL, got {self.queue_url!r}")
        if self.lease_s <= 0 or self.visibility_timeout_s <= 0 or self.priority_max_wait_s <= 0:
            raise ValueError(
                "GENERATOR_LEASE_S, GENERATOR_VISIBILITY_TIMEOUT_S, GENERATOR_PRIORITY_MAX_WAIT_S must be > 0"
            )
        if self.gpu < 0:
            raise ValueError(f"--gpu must be a CUDA device index (0 or more), got {self.gpu}")
        if self.monitor_url and not self.monitor_url.startswith(("http://", "https://")):
            raise ValueError(f"--monitor-url must start with http:// or https://, got {self.monitor_url!r}")
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.admin_token:
            raise ValueError(
                f"binding to {self.host} exposes cancel to the network: set ADMIN_TOKEN, or bind to 127.0.0.1"
            )

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> GeneratorConfig:
        """Build the configuration from the environment, overridden by flags."""
        env = os.environ if environ is None else environ
        config = cls()
        env_names = {
            "host": "GENERATOR_BIND",
            "port": "GENERATOR_PORT",
            "model": "GENERATOR_MODEL",
            "monitor_url": "MONITOR_URL",
            "outputs": "GENERATOR_OUTPUTS",
            "state_dir": "GENERATOR_STATE_DIR",
            "queue_size": "GENERATOR_QUEUE_SIZE",
            "admin_token": "ADMIN_TOKEN",
            "ingest_token": "INGEST_TOKEN",
            "host_name": "I2V_HOST_NAME",
            "threads": "GENERATOR_THREADS",
            "gpu_memory_fraction": "GENERATOR_GPU_MEMORY_FRACTION",
            "queue_url": "GENERATOR_QUEUE_URL",
            "gpu": "GENERATOR_GPU",
            "lease_s": "GENERATOR_LEASE_S",
            "visibility_timeout_s": "GENERATOR_VISIBILITY_TIMEOUT_S",
            "priority_max_wait_s": "GENERATOR_PRIORITY_MAX_WAIT_S",
        }
        types = {f.name: f.type for f in fields(cls)}
        overrides: dict[str, object] = {}
        for name, variable in env_names.items():
            if env.get(variable):
                overrides[name] = _convert(types[name], env[variable], variable)
        parser = argparse.ArgumentParser(prog="python -m generator", description="The I2VGen-XL generation service.")
        parser.add_argument("--host", help="address to bind (env GENERATOR_BIND; default 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port (env GENERATOR_PORT; default 7860)")
        parser.add_argument("--model", help="tiny | full | a folder of saved weights (env GENERATOR_MODEL)")
        parser.add_argument("--monitor-url", help="where events go, e.g. http://127.0.0.1:7861 (env MONITOR_URL)")
        parser.add_argument("--outputs", type=Path, help="folder for clips (env GENERATOR_OUTPUTS)")
        parser.add_argument("--state-dir", type=Path, help="job database and event spool (env GENERATOR_STATE_DIR)")
        parser.add_argument("--queue-size", type=int, help="jobs waiting before 429 (env GENERATOR_QUEUE_SIZE)")
        parser.add_argument(
            "--queue", dest="queue_url", help="redis://host:port/db: queue mode (env GENERATOR_QUEUE_URL)"
        )
        parser.add_argument("--gpu", type=int, help="worker only: the CUDA device index (env GENERATOR_GPU)")
        args = parser.parse_args(argv)
        overrides.update({k: v for k, v in vars(args).items() if v is not None})
        return replace(config, **overrides)  # type: ignore[arg-type]  # values are checked by validate(), not here


def _convert(kind: object, value: str, variable: str) -> object:
    text = str(kind)
    try:
        if "float" in text:
            return float(value)
        if "int" in text:
            return int(value)
        if "Path" in text:
            return Path(value)
    except ValueError:
        raise ValueError(f"{variable} must be a number, got {value!r}") from None
    return value
