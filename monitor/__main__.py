"""`python -m monitor`: read the configuration, open the store, build and start the parts, serve the API.

The parts and their order: the writer (store + spool), the alert service (rules, notifiers, actions), the
sampler (whose every snapshot the alerts evaluate), the quality scorer (whose every result the alerts' low-
quality streak hears), then the app that serves them all. `build_monitor` wires them from one configuration;
`Monitor.start()`/`stop()` run them in that order and stop them in reverse, the writer flushed last.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import waitress
from flask import Flask

from common.spool import Spool
from monitor.config import ConfigError, MonitorConfig
from monitor.storage import Store, StoreUnavailable, open_store, schema
from monitor.storage.writer import Writer
from monitor.web.app import create_app, get_context

if TYPE_CHECKING:
    from monitor.alerts import AlertService
    from monitor.collection.sampler import GpuReader, Sampler, Snapshot
    from monitor.quality.scorer import QualityResult, QualityScorer

log = logging.getLogger("monitor")


def wait_for_store(store: Store, deadline_s: float) -> bool:
    """Ping the store until it answers or `deadline_s` passes (a store started beside us may be booting)."""
    end = time.monotonic() + deadline_s
    pause = threading.Event()
    while not store.ping():
        if time.monotonic() >= end:
            return False
        pause.wait(0.5)
    return True


def build_sampler(
    config: MonitorConfig,
    writer: Writer,
    *,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    gpus: GpuReader | None = None,
) -> Sampler:
    """Build the GPU and host sampler that writes through `writer` (see monitor/collection/sampler.py).

    `on_snapshot` hears every tick (the alert engine); `gpus` replaces NVML (tests, on machines without a GPU).
    """
    from monitor.collection.host import HostReader
    from monitor.collection.sampler import GeneratorPidProvider, Sampler

    return Sampler(
        interval_s=config.sample_interval_s,
        host_name=config.host_name,
        write=writer.write,
        gpus=gpus,
        host=HostReader(config.outputs_dir),
        generator_pid=GeneratorPidProvider(config.generator_url),
        on_snapshot=on_snapshot,
    )


def build_alerts(
    config: MonitorConfig, writer: Writer, run_command: Callable[..., Any] = subprocess.run
) -> AlertService:
    """Build the alert service; remediation outcomes are stored as points.

    Raises:
        ValueError: a bad setting, or a bad rule file (RuleFileError, naming the line).
    """
    from monitor.alerts import AlertService, AlertSettings

    settings = AlertSettings.from_config(config)
    settings.validate()
    return AlertService(
        settings,
        host=config.host_name,
        writer_health=writer.health,
        on_event=lambda outcome: writer.write([outcome.to_point(config.host_name)]),
        run_command=run_command,
    )


def build_quality(
    config: MonitorConfig,
    writer: Writer,
    sampler: Sampler,
    on_result: Callable[[QualityResult], None] | None = None,
) -> QualityScorer:
    """Build the clip scorer; with CLIP weights, CLIP takes the GPU only while the generator is idle or it fits.

    Raises:
        ClipLoadError: the configured CLIP folder cannot be loaded.
    """
    from monitor.quality import scorer as quality
    from monitor.quality.clip_score import ClipScorer, free_memory_reader, gpu_policy

    schema.declare_fields(quality.MEASUREMENT, quality.FIELD_TYPES)
    clip = ClipScorer.from_dir(config.clip_model) if config.clip_model is not None else None
    scorer = quality.QualityScorer(
        clip=clip,
        write=writer.write,
        host_name=config.host_name,
        outputs_dir=config.outputs_dir,
        threshold=config.quality_threshold,
        on_result=on_result,
    )
    if clip is not None:
        clip.gpu_allows = gpu_policy(
            generator_busy=scorer.generator_busy,
            free_memory_bytes=free_memory_reader(lambda: sampler.latest),
            required_bytes=clip.gpu_memory_estimate_bytes,
        )
    return scorer


@dataclass
class Monitor:
    """The monitor's running parts, built by `build_monitor`; the app serves them."""

    app: Flask
    sampler: Sampler
    alerts: AlertService
    quality: QualityScorer

    def start(self) -> None:
        """Start the scorer, the alerting and then the sampler (whose first tick the alerts evaluate)."""
        self.quality.start()
        self.alerts.start()
        self.sampler.start()

    def stop(self) -> None:
        """Stop in reverse: no more samples, alerts, scores; then flush the writer and close the store."""
        self.sampler.shutdown()
        self.alerts.stop()
        self.quality.stop()
        get_context(self.app).close()


def build_monitor(
    config: MonitorConfig,
    store: Store,
    writer: Writer,
    *,
    gpus: GpuReader | None = None,
    run_command: Callable[..., Any] = subprocess.run,
) -> Monitor:
    """Wire every part from one configuration around a started writer (nothing else is started yet).

    Raises:
        ValueError: a bad alert setting or rule file.
        ClipLoadError: the configured CLIP folder cannot be loaded.
    """
    alerts = build_alerts(config, writer, run_command)
    sampler = build_sampler(config, writer, on_snapshot=alerts.on_snapshot, gpus=gpus)
    quality = build_quality(config, writer, sampler, on_result=alerts.record_quality)
    app = create_app(config, store=store, writer=writer, sampler=sampler, quality=quality, alerts=alerts)
    return Monitor(app, sampler, alerts, quality)


def get_redacted(config: MonitorConfig) -> str:
    """Return the store URL without credentials, for messages."""
    scheme, _, rest = config.store_url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _fail(message: str) -> int:
    print(f"monitor: {message}", file=sys.stderr)
    return 2


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the monitor until SIGINT or SIGTERM; return the exit status (2: bad configuration or store)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["report"]:  # `python -m monitor report jobs|gpu ...`: a CSV report, then exit
        from monitor.analysis.reports import main as report

        return report(args[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO
    try:
        config = MonitorConfig.from_sources(argv).validate()
        store = open_store(config.store_url)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except StoreUnavailable as e:
        return _fail(f"cannot open the store: {e}")
    if not wait_for_store(store, config.store_wait_s):
        store.close()
        return _fail(
            f"the store at {get_redacted(config)} did not answer within {config.store_wait_s:.0f} s: "
            "start it, fix --store, or raise --store-wait"
        )
    from monitor.quality.clip_score import ClipLoadError

    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    writer.start()
    try:
        monitor = build_monitor(config, store, writer)
    except (ValueError, ClipLoadError) as e:
        writer.close()
        store.close()
        return _fail(str(e))
    try:
        server = waitress.create_server(monitor.app, host=config.host, port=config.port, threads=8)
    except OSError as e:
        monitor.sampler.shutdown()  # never started; releases NVML
        get_context(monitor.app).close()
        return _fail(f"cannot listen on {config.host}:{config.port} ({e.strerror}): pick another --port")
    signal.signal(signal.SIGTERM, _stop)
    monitor.start()
    log.info("monitor on http://%s:%d, store %s", config.host, config.port, get_context(monitor.app).redacted_store_url)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        log.info("stopping")
    finally:
        server.close()
        monitor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
