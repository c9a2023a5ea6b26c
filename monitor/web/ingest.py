"""POST /monitor/api/events: validate the generator's event batches and store each event once.

Body: `{"events": [...]}` or a bare list, at most `MAX_EVENTS` events and `MAX_BODY_BYTES` bytes. Every event
is validated with `Event.from_dict` before any is stored; the first bad one answers 400
`{"error": ..., "index": i}` and nothing of that batch is stored (the generator drops a refused batch, so a
bad event never blocks its spool).

An answer of 200 means the new events are on disk (the writer's spool, fsync'd), so a monitor killed right
after answering loses none of them; when the spool cannot take them the answer is 503 and the sender retries.

Idempotent on `event_id`, twice over: an event's point has a time derived from its `event_id`, so the store
keeps a replayed event once; and a bounded set of recently seen ids answers a replayed batch without writing
it again. The answer counts both: `{"accepted": n, "duplicates": d}`.

With a token configured (`INGEST_TOKEN`), requests need `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from common.auth import bearer_allows
from common.events import Event, EventError
from monitor.storage.schema import event_to_point

if TYPE_CHECKING:
    from monitor.web.app import MonitorContext

log = logging.getLogger(__name__)

MAX_EVENTS = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024

bp = Blueprint("ingest", __name__, url_prefix="/monitor/api")

EventListener = Callable[[Sequence[Event]], None]


class RecentIds:
    """A bounded set of the most recently seen event ids (oldest forgotten first); thread-safe."""

    def __init__(self, max_ids: int = 100_000) -> None:
        """Remember at most `max_ids` ids."""
        self.max_ids = max_ids
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add_new(self, ids: Sequence[str]) -> list[bool]:
        """Record the ids; return for each whether it was new (a repeat within `ids` counts as seen)."""
        fresh = []
        with self._lock:
            for event_id in ids:
                if event_id in self._ids:
                    self._ids.move_to_end(event_id)
                    fresh.append(False)
                    continue
                self._ids[event_id] = None
                fresh.append(True)
            while len(self._ids) > self.max_ids:
                self._ids.popitem(last=False)
        return fresh

    def forget(self, ids: Sequence[str]) -> None:
        """Forget ids recorded by `add_new` whose events were not stored after all, so a retry is stored."""
        with self._lock:
            for event_id in ids:
                self._ids.pop(event_id, None)


def init_app(app: Flask) -> None:
    """Register the ingest route (it reads the MonitorContext the app factory attached)."""
    app.register_blueprint(bp)


def _context() -> MonitorContext:
    from monitor.web.app import get_context  # the app module imports this one

    return get_context(current_app)


def _error(status: int, message: str, **extra: object) -> ResponseReturnValue:
    return jsonify(error=message, **extra), status


def _authorised(token: str | None) -> bool:
    return bearer_allows(request.headers.get("Authorization"), token)


@bp.post("/events")
def ingest_events() -> ResponseReturnValue:
    """Validate a batch of events, store the new ones through the writer, count the duplicates."""
    ctx = _context()
    if not _authorised(ctx.config.ingest_token):
        response = jsonify(error="send 'Authorization: Bearer <INGEST_TOKEN>' with the monitor's ingest token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="monitor"'
        return response, 401
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, f"the body is over {MAX_BODY_BYTES} bytes: send fewer events per request")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes: not an event batch
        body = None
    if body is None:
        return _error(400, 'the body must be JSON: {"events": [...]} with Content-Type: application/json')
    raw = body.get("events") if isinstance(body, dict) else body
    if not isinstance(raw, list):
        return _error(400, 'the body must be {"events": [...]} or a JSON list of events')
    if len(raw) > MAX_EVENTS:
        return _error(400, f"at most {MAX_EVENTS} events per request, got {len(raw)}: split the batch")
    events = []
    for index, item in enumerate(raw):
        try:
            events.append(Event.from_dict(item))
        except (EventError, TypeError) as e:
            return _error(400, f"event {index}: {e}", index=index)
    fresh = ctx.recent_ids.add_new([e.event_id for e in events])
    new_events = [e for e, is_new in zip(events, fresh, strict=True) if is_new]
    if new_events:
        try:  # on disk before the answer: the generator drops what it was told is stored
            ctx.writer.write_durable([event_to_point(e) for e in new_events])
        except OSError:
            ctx.recent_ids.forget([e.event_id for e in new_events])
            log.exception("cannot spool %d ingested events; answered 503 so the sender retries", len(new_events))
            return _error(503, "the monitor cannot store events right now (its disk spool failed); retry later")
        ctx.notify_events(new_events)
    ctx.count_ingest(len(new_events), len(events) - len(new_events))
    return jsonify(accepted=len(new_events), duplicates=len(events) - len(new_events)), 200
