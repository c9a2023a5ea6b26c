"""Push one job's progress and state to a client as Server-Sent Events (`text/event-stream`), resumable.

`GET /api/jobs/<id>/events` streams the job's status. Every event carries the job's whole status (the JSON of
`GET /api/jobs/<id>`), so a client that missed events lost nothing: the latest one says everything. Its `id`
names what changed, `<state>.<step>.<queue position>.<notes>`; a client that reconnects with `Last-Event-ID`
(EventSource does so by itself) is sent the status at once only when it differs from the one it saw, then
follows as before. So resuming never repeats an event and never misses the present.

- `event: state` when the job's state changed (queued, running, succeeded, failed, cancelled), `event: progress`
  for a denoising step, a move up the queue or a new note.
- The stream ends after the final state's event. A client reconnecting after it saw the final state is answered
  204 No Content, which tells EventSource to stop reconnecting.
- A comment line every `KEEPALIVE_S` keeps proxies (and waitress' idle-channel timeout) from closing a quiet
  stream; a stream lasts at most `MAX_STREAM_S`, then ends and the client reconnects with its Last-Event-ID.
- Each open stream holds one of the server's threads (waitress is threaded), so at most `max_streams` are open
  at once; beyond that the answer is 503 with Retry-After and clients poll `GET /api/jobs/<id>` instead.

The job is read every `POLL_S`: a dictionary lookup in the job book, and the same code whichever process
changes the job, so no hook into the workers is needed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, stream_with_context

from common.events import FINAL_STATES

POLL_S = 0.25
KEEPALIVE_S = 15.0
MAX_STREAM_S = 300.0
RETRY_MS = 2000  # how long EventSource waits before it reconnects


def event_id(state: str, step: int, position: int | None, notes: int) -> str:
    """Return the id of a job's status: what a client must see again when it changes."""
    return f"{state}.{step}.{position or 0}.{notes}"


def format_event(kind: str, ident: str, data: dict[str, Any]) -> str:
    """Format one SSE event (a JSON body on one `data:` line)."""
    return f"event: {kind}\nid: {ident}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def events(
    key: Callable[[], str | None],
    view: Callable[[], dict[str, Any]],
    last_event_id: str | None,
    *,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    max_s: float = MAX_STREAM_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Yield the stream's text: the status whenever its id changes, keep-alive comments, until the job ends.

    `key()` is the job's current event id (None once the job is forgotten) and cheap, read every `poll_s`;
    `view()` builds the status, only when the id changed.
    """
    started = last_sent = clock()
    seen = last_event_id
    state = _state(seen)
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        ident = key()
        if ident is None:  # forgotten (retention) while followed: nothing more will come
            yield "event: gone\ndata: {}\n\n"
            return
        if ident != seen:
            kind = "state" if _state(ident) != state else "progress"
            yield format_event(kind, ident, view())
            seen, state, last_sent = ident, _state(ident), clock()
        if state in FINAL_STATES:
            return
        now = clock()
        if now - started >= max_s:
            return
        if now - last_sent >= keepalive_s:
            yield ": keepalive\n\n"
            last_sent = now
        sleep(poll_s)


def _state(ident: str | None) -> str | None:
    return ident.split(".", 1)[0] if ident else None


class StreamSlots:
    """At most `limit` streams open at once (each holds a server thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)
        self.open = 0

    def take(self) -> bool:
        """Take a slot if one is free."""
        if not self._free.acquire(blocking=False):
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        """Free a slot."""
        self.open -= 1
        self._free.release()


def respond(
    key: Callable[[], str | None], view: Callable[[], dict[str, Any]], last_event_id: str | None, slots: StreamSlots
) -> Response:
    """Answer a stream request: 204 when the client saw the job's end, 503 when every slot is taken, else the stream."""
    if last_event_id is not None and last_event_id == key() and _state(last_event_id) in FINAL_STATES:
        return Response(status=204)
    if not slots.take():
        body = {"error": f"{slots.limit} progress streams are open already: poll GET /api/jobs/<id> instead"}
        return Response(json.dumps(body), status=503, mimetype="application/json", headers={"Retry-After": "5"})

    response = Response(stream_with_context(events(key, view, last_event_id)), mimetype="text/event-stream")
    # The server closes the response when the stream ends or the client goes away (its next write fails), even
    # before the first event: the slot is freed then.
    response.call_on_close(slots.give_back)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx would hold the events back otherwise
    return response
