"""The parts the web layer serves, attached to the app once: a leaf module every blueprint reads them from.

`monitor/compose.py` builds the parts and the `MonitorContext`; `monitor/web/app.py` attaches it to the app;
blueprints call `get_context()` inside a request. Nothing here builds or starts anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, current_app

from common.redact import redact_url
from monitor.bus import Bus
from monitor.config import MonitorConfig
from monitor.storage.base import Store
from monitor.storage.ingest import EventIngest
from monitor.storage.writer import Writer

if TYPE_CHECKING:
    from monitor.alerts import AlertService
    from monitor.analysis.job_summary import JobSummarizer
    from monitor.analysis.predict import Predictor
    from monitor.collection.fleet import FleetSource
    from monitor.quality.scorer import QualityScorer

EXTENSION = "monitor"
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"


class SamplerHealth(Protocol):
    """What the API needs from the sampler (monitor.collection.sampler.Sampler)."""

    def health(self) -> dict[str, Any]:
        """Return the sampler's health, JSON-ready."""
        ...


@dataclass
class MonitorContext:
    """The monitor's parts as the web layer sees them; optional parts have their routes only when present."""

    config: MonitorConfig
    store: Store
    writer: Writer
    ingest: EventIngest
    predictor: Predictor
    summarizer: JobSummarizer
    sampler: SamplerHealth | None = None
    quality: QualityScorer | None = None
    alerts: AlertService | None = None
    fleet: FleetSource | None = None  # the generator's workers and queue (None: no --generator-url)
    clock_ns: Callable[[], int] = time.time_ns
    bus: Bus = field(default_factory=Bus)
    node_modules: Path = NODE_MODULES

    @property
    def redacted_store_url(self) -> str:
        """Return the store URL without its password."""
        return redact_url(self.config.store_url)

    def close(self) -> None:
        """Stop the predictor's fits, flush and stop the writer (undelivered points stay spooled), close the store."""
        self.predictor.close()
        if self.fleet is not None:
            self.fleet.close()
        self.writer.close()
        self.store.close()


def attach(app: Flask, context: MonitorContext) -> None:
    """Attach `context` to `app`."""
    app.extensions[EXTENSION] = context


def get_context(app: Flask | None = None) -> MonitorContext:
    """Return the MonitorContext attached to `app` (default: the app serving the current request)."""
    context: MonitorContext = (app or current_app).extensions[EXTENSION]
    return context
