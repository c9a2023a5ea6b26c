"""POST /monitor/api/events: validate the generator's event batches and store each event once.

Body: `{"events": [...]}` or a bare list, at most `MAX_EVENTS` events and `MAX_BODY_BYTES` bytes. Every event
is validated with `Event.from_dict` before any is stored; the first bad one answers 400
`{"error": ..., "index": i}` and nothing of that batch is stored. The index is what lets the generator drop
that one event (and resend the ones before it), so a bad event never blocks its spool; any other refusal keeps
the generator's spool whole.

An answer of 200 means the new events are on disk (the writer's spool, fsync'd), so a monitor killed right
after answering loses none of them; when the spool cannot take them the answer is 503 and the sender retries.

Idempotent on `event_id`, twice over: an event's point has a time derived from its `event_id`, so the store
keeps a replayed event once; and a bounded set of recently seen ids answers a replayed batch without writing
it again. The answer counts both: `{"accepted": n, "duplicates": d}`.

With a token configured (`INGEST_TOKEN`), requests need `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from common.auth import bearer_allows
from common.events import Event, EventError
from monitor.web.context import get_context
from monitor.web.errors import MAX_BODY_BYTES

log = logging.getLogger(__name__)

MAX_EVENTS = 1000

bp = Blueprint("ingest", __name__, url_prefix="/monitor/api")


def init_app(app: Flask) -> None:
    """Register the ingest route."""
    app.register_blueprint(bp)


def _error(status: int, message: str, **extra: object) -> ResponseReturnValue:
    return jsonify(error=message, **extra), status


@bp.post("/events")
def ingest_events() -> ResponseReturnValue:
    """Validate a batch of events, store the new ones through the writer, count the duplicates."""
    ctx = get_context()
    if not bearer_allows(request.headers.get("Authorization"), ctx.config.ingest_token):
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
    try:
        result = ctx.ingest.ingest(events)
    except OSError:
        log.exception("cannot spool %d ingested events; answered 503 so the sender retries", len(events))
        return _error(503, "the monitor cannot store events right now (its disk spool failed); retry later")
    return jsonify(accepted=result.accepted, duplicates=result.duplicates), 200
