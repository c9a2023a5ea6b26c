"""The monitor's app-wide error handlers: every route answers a refusal as JSON `{"error": ...}` in one wording.

Bad parameters are 400 with the parser's message; a store that cannot answer is 503 (retry later); a store that
refuses a query is 400; an unknown route or method names what exists; anything unexpected is logged and 500.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from monitor.storage.base import StoreRejected, StoreUnavailable
from monitor.web.params import BadRequest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024

_HINTS = {
    404: "no such endpoint: see /monitor/api/status, /series, /jobs, /jobs/<id>, POST /events",
    405: "this endpoint does not take that method",
    413: f"the body is over {MAX_BODY_BYTES} bytes: send fewer events per request",
}


def init_app(app: Flask) -> None:
    """Register the handlers on `app`."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_error_handler(BadRequest, _bad_request)
    app.register_error_handler(StoreUnavailable, _store_down)
    app.register_error_handler(StoreRejected, _store_refused)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def _bad_request(error: BadRequest) -> ResponseReturnValue:
    return jsonify(error=str(error)), 400


def _store_down(error: StoreUnavailable) -> ResponseReturnValue:
    message = f"the store is unreachable ({error}); samples and events are spooled, try again when it answers"
    return jsonify(error=message), 503


def _store_refused(error: StoreRejected) -> ResponseReturnValue:
    return jsonify(error=f"the store refused the query: {error}"), 400


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    return jsonify(error=_HINTS.get(code, error.description or error.name)), code


def _unexpected_error(error: Exception) -> ResponseReturnValue:
    log.exception("unexpected error while serving a request (answered 500)")
    return jsonify(error=f"internal error ({type(error).__name__}); the monitor's log has the details"), 500
