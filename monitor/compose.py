"""The composition root: build every part of the monitor from one configuration, wire who hears what, and own
the order they start and stop in.

Producers are handed one hook per thing they report and never know their listeners; the wiring is here alone,
through the bus (monitor/bus.py):

    sampler ── snapshot ──▶ alerts (GPU rules)
    ingest ─── events ────▶ job summarizer, quality scorer
    summarizer ─ job_summary ─▶ predictor (refit), energy meter (waits for the counter's next reading)
    sampler ── snapshot ──▶ energy meter (adds a GPU job's energy to its summary once it can)
    scorer ─── quality_result ─▶ alerts (low-quality streak)
    alerts' tick reads: writer health, sampler health (errors), scorer refusals (data lost or delayed)

Start order: scorer, alerts, sampler (whose first tick the alerts evaluate); stop in reverse, then the writer is
flushed and the store closed. With `MONITOR_QUALITY=0` there is no scorer: no clip is scored and no CLIP loaded.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask

from common.spool import Spool
from monitor import bus as topics
from monitor.analysis.energy import EnergyMeter
from monitor.analysis.job_summary import JobSummarizer
from monitor.analysis.predict import Predictor
from monitor.bus import Bus
from monitor.collection.fleet import FleetSource
from monitor.config import MonitorConfig
from monitor.storage import Store, open_store, schema
from monitor.storage.ingest import EventIngest
from monitor.storage.writer import Writer
from monitor.web.app import make_app
from monitor.web.context import MonitorContext, SamplerHealth, get_context

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # imported where built: a monitor built without them never loads them (torch, NVML)
    from monitor.alerts import AlertService
    from monitor.collection.sampler import GpuReader, Sampler
    from monitor.quality.scorer import QualityScorer


def open_writer(config: MonitorConfig, store: Store) -> Writer:
    """Return a started batching writer into `store`, spooling to the configured folder."""
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    writer.start()
    return writer


def build_sampler(
    config: MonitorConfig,
    writer: Writer,
    *,
    on_snapshot: Callable[[Any], None] | None = None,
    gpus: GpuReader | None = None,
) -> Sampler:
    """Build the GPU and host sampler that writes through `writer`; `gpus` replaces NVML (tests)."""
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
    on_result: Callable[[Any], None] | None = None,
    store: Store | None = None,
) -> QualityScorer:
    """Build the clip scorer: between jobs, or beside them on spare CPU after the longest wait; results from `store`.

    Raises:
        ClipLoadError: the configured CLIP folder cannot be loaded.
    """
    from monitor.quality import scorer as quality
    from monitor.quality.clip_score import ClipScorer, free_memory_reader, gpu_policy
    from monitor.quality.history import QualityHistory
    from monitor.quality.schedule import GpuActivity

    schema.declare_fields(quality.MEASUREMENT, quality.FIELD_TYPES)
    clip = ClipScorer.from_dir(config.clip_model) if config.clip_model is not None else None
    device = clip.device_tag if clip is not None else "cpu"
    activity = GpuActivity(device, max_wait_s=config.quality_max_wait_s, startup_quiet_s=config.quality_startup_quiet_s)
    scorer = quality.QualityScorer(
        clip=clip,
        write=writer.write,
        host_name=config.host_name,
        activity=activity,
        history=None if store is None else QualityHistory(store, config.host_name),
        outputs_dir=config.outputs_dir,
        max_queue=config.quality_max_queue,
        cpu_priority=config.quality_cpu_priority,
        threshold=config.quality_threshold,
        on_result=on_result,
    )
    if clip is not None and device != "cpu":
        resident = clip
        clip.gpu_allows = gpu_policy(
            free_memory_bytes=free_memory_reader(lambda: sampler.latest, gpu_index=int(device)),
            required_bytes=clip.gpu_memory_estimate_bytes,
            resident=lambda: resident.on_gpu,
        )
    return scorer


def create_app(
    config: MonitorConfig,
    *,
    store: Store | None = None,
    writer: Writer | None = None,
    sampler: SamplerHealth | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
    quality: QualityScorer | None = None,
    alerts: AlertService | None = None,
    bus: Bus | None = None,
) -> Flask:
    """Build the parts every monitor has (ingest, job summaries, prediction) around those given, wire them, and
    return the app serving them all. A store or writer not given is opened here and closed by the context.
    """
    config.validate()
    bus = bus or Bus()
    if store is None:
        store = open_store(config.store_url)
    if writer is None:
        writer = open_writer(config, store)
    predictor = Predictor(store, clock_ns=clock_ns)
    # Durable like the events it is made from: a summary only buffered would be lost with a killed monitor.
    summarizer = JobSummarizer(writer.write_durable, store, on_summary=bus.publisher(topics.JOB_SUMMARY))
    bus.subscribe(topics.EVENTS, summarizer.listen)
    bus.subscribe(topics.JOB_SUMMARY, predictor.mark_dirty)  # refitted in the background with the new job
    # A GPU job's energy needs the counter's first reading after its end: checked on each sampler tick.
    energy = EnergyMeter(store, writer.write_durable, clock_ns=clock_ns)
    bus.subscribe(topics.JOB_SUMMARY, energy.on_summary)
    bus.subscribe(topics.SNAPSHOT, energy.tick)
    if quality is not None:
        bus.subscribe(topics.EVENTS, quality.listen)
    context = MonitorContext(
        config=config,
        store=store,
        writer=writer,
        ingest=EventIngest(writer, on_events=bus.publisher(topics.EVENTS), sampled_host=config.host_name),
        predictor=predictor,
        summarizer=summarizer,
        sampler=sampler,
        quality=quality,
        alerts=alerts,
        fleet=FleetSource(config.generator_url) if config.generator_url else None,
        clock_ns=clock_ns,
        bus=bus,
    )
    predictor.start()  # one fit before serving, so that the first predictions are learned ones
    return make_app(context)


@dataclass
class Monitor:
    """The monitor's running parts, built by `build_monitor`; `app` serves them."""

    app: Flask
    sampler: Sampler
    alerts: AlertService
    quality: QualityScorer | None  # None: quality scoring is off

    def start(self) -> None:
        """Start the scorer, the alerting and then the sampler (whose first tick the alerts evaluate)."""
        if self.quality is not None:
            self.quality.start()
        self.alerts.start()
        self.sampler.start()

    def stop(self) -> None:
        """Stop in reverse: no more samples, alerts, scores; then flush the writer and close the store."""
        self.sampler.shutdown()
        self.alerts.stop()
        if self.quality is not None:
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
    """Build and wire every part from one configuration around a started writer (nothing else is started yet).

    Raises:
        ValueError: a bad alert setting or rule file.
        ClipLoadError: the configured CLIP folder cannot be loaded.
    """
    bus = Bus()
    alerts = build_alerts(config, writer, run_command)
    sampler = build_sampler(config, writer, on_snapshot=bus.publisher(topics.SNAPSHOT), gpus=gpus)
    quality = None
    if config.quality:
        quality = build_quality(config, writer, sampler, on_result=bus.publisher(topics.QUALITY_RESULT), store=store)
    elif config.clip_model is not None:
        log.info("quality scoring is off (MONITOR_QUALITY=0): the CLIP folder %s is not loaded", config.clip_model)
    bus.subscribe(topics.SNAPSHOT, alerts.on_snapshot)
    bus.subscribe(topics.QUALITY_RESULT, alerts.record_quality)
    # What the sampler and the scorer lost or refused, read on the alerts' tick (SamplerErrors, QualityQueueFull).
    alerts.observe(
        sampler_health=sampler.health,
        quality_rejected_total=None if quality is None else lambda: float(quality.rejected),
    )
    app = create_app(config, store=store, writer=writer, sampler=sampler, quality=quality, alerts=alerts, bus=bus)
    return Monitor(app, sampler, alerts, quality)
