"""The generator's configuration: defaults, then environment variables, then command-line flags."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from common.settings import Setting, env_value
from common.version import version_line
from generator.acceleration import DEFAULT_WARMUP, Acceleration, parse_shapes

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
    viewer_token: str | None = field(default=None, repr=False)
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
    # Finished jobs (their row and outputs/<id>/) are removed past either limit, oldest first; 0 turns one off.
    retention_days: float = 30.0
    retention_gb: float = 0.0
    # Off until GPU figures show that it pays (bench/compile_gpu.py); on, each warm-up size compiles before /ready.
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    compile_scope: str = "whole"
    compile_cache: Path | None = None
    compile_warmup: str = DEFAULT_WARMUP
    compile_vae: bool = False
    attention: str = "auto"
    channels_last: bool = False

    def acceleration(self, on_gpu: bool) -> Acceleration:
        """Return how the pipeline runs on a GPU (`on_gpu`) or the CPU; the cache defaults to the state dir."""
        return Acceleration(
            # On the CPU inductor would build C++ for minutes at each size: compiling is for GPUs.
            compile=self.compile and on_gpu,
            mode=self.compile_mode,
            backend=self.compile_backend,
            scope=self.compile_scope,
            cache_dir=self._compile_cache_dir(),
            warmup=parse_shapes(self.compile_warmup),
            compile_vae=self.compile_vae,
            attention=self.attention,
            channels_last=self.channels_last,
        )

    def _compile_cache_dir(self) -> Path:
        # torch's cache keys leave out the attention kernel chosen when a graph was traced: a graph cached under
        # one choice would be reused under another, so each choice but the default has its own folder.
        base = self.compile_cache or self.state_dir / "compile-cache"
        return base if self.attention == "auto" else base / f"attention-{self.attention}"

    @property
    def retention_max_age_s(self) -> float | None:
        """Return the age past which finished jobs are removed, or None when there is no limit."""
        return self.retention_days * 86400 if self.retention_days else None

    @property
    def retention_max_bytes(self) -> int | None:
        """Return the outputs' size past which the oldest finished jobs are removed, or None (no limit)."""
        return int(self.retention_gb * 1e9) if self.retention_gb else None

    def validate(self, *, serves_jobs: bool = True) -> None:
        """Raise ValueError with one line that says what to change; makes no network call.

        `serves_jobs`: this process serves the job API (prompts, clips), so a public bind needs the viewer token;
        a queue-mode worker serves only its probes.
        """
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
        if self.retention_days < 0 or self.retention_gb < 0:
            raise ValueError(
                "GENERATOR_RETENTION_DAYS and GENERATOR_RETENTION_GB must be 0 (no limit) or positive, got "
                f"{self.retention_days} and {self.retention_gb}"
            )
        if self.monitor_url and not self.monitor_url.startswith(("http://", "https://")):
            raise ValueError(f"--monitor-url must start with http:// or https://, got {self.monitor_url!r}")
        self.acceleration(on_gpu=True).validate()
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            tokens = [("I2V_ADMIN_TOKEN", self.admin_token)]
            if serves_jobs:
                tokens.append(("I2V_VIEWER_TOKEN", self.viewer_token))
            missing = [name for name, value in tokens if not value]
            if missing:
                raise ValueError(
                    f"binding to {self.host} exposes cancel, prompts and clips to the network: set "
                    f"{' and '.join(missing)}, or bind to 127.0.0.1"
                )

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> GeneratorConfig:
        """Build the configuration from the environment, overridden by flags (SETTINGS names both)."""
        env = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls)}
        overrides: dict[str, object] = {}
        for setting in SETTINGS:
            raw = env_value(setting, env)
            if raw is not None:
                overrides[setting.field] = _convert(types[setting.field], raw, setting.env[0])
        parser = argparse.ArgumentParser(prog="python -m generator", description="The I2VGen-XL generation service.")
        parser.add_argument("--version", action="version", version=version_line("generator"))
        for setting in SETTINGS:
            if setting.flag is not None:
                kind = str(types[setting.field])
                described = f"{setting.help} (env {setting.env[0]}; default {setting.default})"
                if "bool" in kind:  # --compile / --no-compile
                    parser.add_argument(
                        setting.flag, dest=setting.field, action=argparse.BooleanOptionalAction, help=described
                    )
                    continue
                parse: Callable[[str], object] = (
                    int if kind == "int" else float if kind == "float" else Path if "Path" in kind else str
                )
                parser.add_argument(setting.flag, dest=setting.field, type=parse, help=described)
        args = parser.parse_args(argv)
        overrides.update({k: v for k, v in vars(args).items() if v is not None})
        return replace(cls(), **overrides)  # type: ignore[arg-type]


#: Every setting of the generator: the README's table is generated from these (python scripts/settings_table.py).
SETTINGS: tuple[Setting, ...] = (
    Setting("host", "--host", ("GENERATOR_BIND",), "127.0.0.1", "address to listen on"),
    Setting("port", "--port", ("GENERATOR_PORT",), "7860", "port to listen on"),
    Setting("model", "--model", ("GENERATOR_MODEL",), "tiny", "`tiny`, `full`, or a folder of saved weights"),
    Setting(
        "monitor_url",
        "--monitor-url",
        ("GENERATOR_MONITOR_URL",),
        "none",
        "the monitor that events go to, e.g. `http://127.0.0.1:7861`",
        old_env=("MONITOR_URL",),
    ),
    Setting("outputs", "--outputs", ("GENERATOR_OUTPUTS",), "outputs", "folder for the clips"),
    Setting("state_dir", "--state-dir", ("GENERATOR_STATE_DIR",), "var/generator", "job database and event spool"),
    Setting("queue_size", "--queue-size", ("GENERATOR_QUEUE_SIZE",), "8", "jobs waiting before new ones get 429"),
    Setting("threads", None, ("GENERATOR_THREADS",), "8", "HTTP server threads"),
    Setting(
        "gpu_memory_fraction",
        None,
        ("GENERATOR_GPU_MEMORY_FRACTION",),
        "none",
        "cap on torch's share of a card shared with others, (0, 1]",
    ),
    Setting("queue_url", "--queue", ("GENERATOR_QUEUE_URL",), "none", "`redis://host:port/db`: queue mode (Celery)"),
    Setting("gpu", "--gpu", ("GENERATOR_GPU",), "0", "queue-mode worker only: the CUDA device index"),
    Setting("lease_s", None, ("GENERATOR_LEASE_S",), "30", "queue mode: seconds a worker's job lease lasts"),
    Setting(
        "visibility_timeout_s",
        None,
        ("GENERATOR_VISIBILITY_TIMEOUT_S",),
        "21600",
        "queue mode: Redis redelivery timeout, above the longest job",
    ),
    Setting(
        "priority_max_wait_s",
        None,
        ("GENERATOR_PRIORITY_MAX_WAIT_S",),
        "600",
        "seconds a job waits below high priority before it is served as high",
    ),
    Setting(
        "compile",
        "--compile",
        ("GENERATOR_COMPILE",),
        "0",
        "torch.compile the UNet on a GPU (`1`, `--compile`), a static graph per warm-up size; off by default",
    ),
    Setting(
        "compile_mode",
        "--compile-mode",
        ("GENERATOR_COMPILE_MODE",),
        "default",
        "`default`, `reduce-overhead` (CUDA graphs), `max-autotune-no-cudagraphs` or `max-autotune`",
    ),
    Setting(
        "compile_backend",
        None,
        ("GENERATOR_COMPILE_BACKEND",),
        "inductor",
        "`inductor`; `aoti`: a package per warm-up size, loaded at restart without tracing; "
        "`eager` or `aot_eager` (tests)",
    ),
    Setting(
        "compile_scope",
        "--compile-scope",
        ("GENERATOR_COMPILE_SCOPE",),
        "whole",
        "`whole`: the UNet, one graph per size; `regional`: its repeated blocks one by one, identical blocks "
        "sharing a graph (fewer and smaller traces)",
    ),
    Setting(
        "compile_cache",
        "--compile-cache",
        ("GENERATOR_COMPILE_CACHE",),
        "`<state dir>/compile-cache`",
        "torch.compile's caches and the Mega-Cache file (a subfolder per non-default attention kernel)",
    ),
    Setting(
        "compile_warmup",
        "--compile-warmup",
        ("GENERATOR_COMPILE_WARMUP",),
        DEFAULT_WARMUP,
        "sizes (resolution x frames) compiled before `/ready`, one denoising step each",
    ),
    Setting("compile_vae", None, ("GENERATOR_COMPILE_VAE",), "0", "compile the VAE's decoder too (`1`)"),
    Setting(
        "attention",
        None,
        ("GENERATOR_ATTENTION",),
        "auto",
        "attention kernel tried first: `auto`, `flash`, `efficient`, `cudnn` or `math`",
    ),
    Setting("channels_last", None, ("GENERATOR_CHANNELS_LAST",), "0", "channels-last (NHWC) convolution weights (`1`)"),
    Setting("host_name", None, ("I2V_HOST_NAME",), "this machine's name", "the `host` tag of events and metrics"),
    Setting(
        "admin_token",
        None,
        ("I2V_ADMIN_TOKEN",),
        "none",
        "required by cancel when set, and to listen anywhere but loopback",
        old_env=("ADMIN_TOKEN",),
        secret=True,
    ),
    Setting(
        "ingest_token",
        None,
        ("I2V_INGEST_TOKEN",),
        "none",
        "sent to the monitor with every event batch",
        old_env=("INGEST_TOKEN",),
        secret=True,
    ),
    Setting(
        "viewer_token",
        None,
        ("I2V_VIEWER_TOKEN",),
        "none",
        "required by every `/api/jobs` route (prompts, clips) when set, and to listen anywhere but loopback",
        secret=True,
    ),
    Setting(
        "retention_days",
        "--retention-days",
        ("GENERATOR_RETENTION_DAYS",),
        "30",
        "remove finished jobs (row and outputs folder) after this many days; 0: never",
    ),
    Setting(
        "retention_gb",
        "--retention-gb",
        ("GENERATOR_RETENTION_GB",),
        "0",
        "remove the oldest finished jobs while their outputs take more than this many GB; 0: no limit",
    ),
)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(kind: object, value: str, variable: str) -> object:
    text = str(kind)
    if "bool" in text:
        if "None" in text and value.lower() == "auto":
            return None
        if value.lower() not in _TRUE + _FALSE:
            choices = ("auto", *_TRUE, *_FALSE) if "None" in text else _TRUE + _FALSE
            raise ValueError(f"{variable} must be one of {', '.join(choices)}, got {value!r}")
        return value.lower() in _TRUE
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
