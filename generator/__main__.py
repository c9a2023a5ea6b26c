"""`python -m generator`: configure, load the model in the background, and serve with waitress."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from waitress import serve

from common.logs import LogConfigError, configure_logging, fail, set_log_host
from common.redact import redact_url
from generator.app import create_app
from generator.config import GeneratorConfig


def _stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (docker stop, systemd) ends serve() like Ctrl-C does, so the workers stop and events are flushed.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; a bad configuration exits with one line saying what to change."""
    try:
        configure_logging("generator")
    except LogConfigError as error:
        print(f"generator: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        config = GeneratorConfig.from_sources(argv)
        config.validate()
    except ValueError as error:
        return fail("generator", str(error))
    set_log_host(config.host_name)
    signal.signal(signal.SIGTERM, _stop)
    app = create_app(config)
    logging.getLogger("generator").info(
        "serving on http://%s:%d (model %s, monitor %s)",
        config.host,
        config.port,
        config.model,
        redact_url(config.monitor_url) if config.monitor_url else None,
    )
    try:
        serve(app, host=config.host, port=config.port, threads=config.threads, ident="i2v-generator")
    finally:
        app.extensions["generator"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
