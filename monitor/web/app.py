"""The monitor's app factory: one MonitorContext (store, writer, sampler, ingest state) and the blueprints.

    app = create_app(config)                       # opens the store named by config, starts the writer
    app = create_app(config, store=s, writer=w, sampler=sampler)   # parts built by the caller
    app = create_app(config, ..., quality=scorer, alerts=alert_service)  # their routes, events and metrics
    ...
    get_context(app).close()                       # flush the writer (the rest stays spooled); close store

The factory owns the writer it is given or makes (`close()` flushes and stops it) but not the sampler, the
quality scorer or the alert service: whoever built them starts them and stops them before `close()`
(`python -m monitor` does, in monitor/__main__.py). Other parts subscribe to ingested events with
`get_context(app).event_listeners.append(callback)`; a callback gets each batch of new events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from common.events import Event
from common.spool import Spool
from monitor.config import MonitorConfig
from monitor.storage import Store, open_store, schema
from monitor.storage.writer import Writer
from monitor.web import advice as advice_api
from monitor.web import api, dashboard, ingest
from monitor.web.ingest import EventListener, RecentIds

if TYPE_CHECKING:  # imported where used: a monitor built without them never loads them
    from monitor.alerts import AlertService
    from monitor.quality.scorer import QualityScorer

log = logging.getLogger(__name__)

EXTENSION = "monitor"


class SamplerHealth(Protocol):
    """What the API needs from the sampler (monitor.collection.sampler.Sampler)."""

    def health(self) -> dict[str, Any]:
        """Return the sampler's health, JSON-ready."""
        ...


@dataclass
class MonitorContext:
    """The monitor's parts, attached to the app as `app.extensions["monitor"]`."""

    config: MonitorConfig
    store: Store
    writer: Writer
    sampler: SamplerHealth | None = None
    clock_ns: Callable[[], int] = time.time_ns
    recent_ids: RecentIds = field(default_factory=RecentIds)
    event_listeners: list[EventListener] = field(default_factory=list)
    _accepted_total: int = 0
    _duplicates_total: int = 0
    _failing_listeners: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def redacted_store_url(self) -> str:
        """Return the store URL without its password."""
        parts = urlsplit(self.config.store_url)
        if parts.password is None:
            return self.config.store_url
        user = f"{parts.username}:***@" if parts.username else ":***@"
        netloc = user + parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=netloc))

    def count_ingest(self, accepted: int, duplicates: int) -> None:
        """Count ingested events."""
        with self._lock:
            self._accepted_total += accepted
            self._duplicates_total += duplicates

    def ingest_counts(self) -> dict[str, int]:
        """Return the ingest counters."""
        with self._lock:
            return {
                "events_accepted_total": self._accepted_total,
                "events_duplicate_total": self._duplicates_total,
            }

    def notify_events(self, events: Sequence[Event]) -> None:
        """Hand new events to each listener; a failing listener is logged once and never fails the ingest."""
        for listener in list(self.event_listeners):
            try:
                listener(events)
            except Exception:  # a subscriber's boundary: the events are stored whatever it does
                if id(listener) not in self._failing_listeners:
                    self._failing_listeners.add(id(listener))
                    log.exception("event listener %r failed (logged once); the events are stored", listener)
            else:
                self._failing_listeners.discard(id(listener))

    def close(self) -> None:
        """Flush and stop the writer (undelivered points stay in the spool), then close the store."""
        self.writer.close()
        self.store.close()


def get_context(app: Flask) -> MonitorContext:
    """Return the MonitorContext the factory attached to `app`."""
    ctx: MonitorContext = app.extensions[EXTENSION]
    return ctx


class BoundedJSONProvider(DefaultJSONProvider):
    """Parse request bodies as Flask does, but a body nested too deeply to parse is a parse error (400), not a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON; a RecursionError becomes the ValueError that request.get_json turns into a 400."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def create_app(
    config: MonitorConfig,
    *,
    store: Store | None = None,
    writer: Writer | None = None,
    sampler: SamplerHealth | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
    quality: QualityScorer | None = None,
    alerts: AlertService | None = None,
) -> Flask:
    """Build the monitor's Flask app: ingest and read API under /monitor/api, /metrics with a sampler.

    With `quality`, its routes are served and it hears every ingested event; with `alerts`, so are the alerts
    routes. Their metrics join /metrics.
    """
    config.validate()
    if store is None:
        store = open_store(config.store_url)
    if writer is None:
        writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
        writer.start()
    app = Flask("monitor")
    app.json = BoundedJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = ingest.MAX_BODY_BYTES
    app.extensions[EXTENSION] = MonitorContext(config, store, writer, sampler, clock_ns)
    ingest.init_app(app)
    api.init_app(app)
    dashboard.init_app(app)
    advice_api.init_app(app)  # predict, recommendation, summary, CSV reports; summarises each finished job
    if quality is not None:
        from monitor.web import quality as quality_api

        quality_api.init_app(app, quality, admin_token=config.admin_token)
        get_context(app).event_listeners.append(quality.listen)
    if alerts is not None:
        from monitor.web.alerts import init_app as init_alerts

        init_alerts(app, alerts)
    if sampler is not None and hasattr(sampler, "latest"):
        from monitor.web.metrics import make_registry, metrics_view  # needs the real sampler's snapshots

        registry = make_registry(sampler, writer_health=writer.health)  # type: ignore[arg-type]
        for part in (quality, alerts):
            if part is not None:
                registry.register(part.registry)
        app.add_url_rule("/metrics", "metrics", metrics_view(registry))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


_HINTS = {
    404: "no such endpoint: see /monitor/api/status, /series, /jobs, /jobs/<id>, POST /events",
    405: "this endpoint does not take that method",
    413: f"the body is over {ingest.MAX_BODY_BYTES} bytes: send fewer events per request",
}


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    return jsonify(error=_HINTS.get(code, error.description or error.name)), code


def _unexpected_error(error: Exception) -> ResponseReturnValue:
    log.exception("unexpected error while serving a request (answered 500)")
    return jsonify(error=f"internal error ({type(error).__name__}); the monitor's log has the details"), 500
