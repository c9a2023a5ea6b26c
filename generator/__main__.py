"""`python -m generator`: configure, load the model in the background, and serve with waitress."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from dataclasses import replace
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
    """Serve until interrupted; a bad configuration exits with one line saying what to change.

    `python -m generator worker ...` runs one GPU worker of queue mode instead (generator/fleet/gpu_worker.py).
    """
    try:
        configure_logging("generator")
    except LogConfigError as error:
        print(f"generator: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
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


def worker_main(argv: list[str]) -> int:
    """Run one queue-mode GPU worker; its probe port defaults to 7870 + its GPU index, its state to its own folder."""
    from generator.fleet.gpu_worker import redis_reachable, run_worker  # Celery loads only in queue mode

    try:
        config = GeneratorConfig.from_sources(argv)
        defaults = GeneratorConfig()
        config = replace(
            config,
            port=7870 + config.gpu if config.port == defaults.port else config.port,
            state_dir=config.state_dir / f"worker-gpu{config.gpu}"
            if config.state_dir == defaults.state_dir
            else config.state_dir,
        )
        config.validate(serves_jobs=False)
    except ValueError as error:
        print(f"generator worker: {error}", file=sys.stderr)
        return 2
    if not config.queue_url:
        print(
            "generator worker: a worker needs --queue redis://host:port/db (env GENERATOR_QUEUE_URL)", file=sys.stderr
        )
        return 2
    unreachable = redis_reachable(config.queue_url)
    if unreachable:
        print(
            f"generator worker: the queue at {redact_url(config.queue_url)} does not answer: {unreachable}",
            file=sys.stderr,
        )
        return 3
    return run_worker(config)


if __name__ == "__main__":
    # A crash in native code (a compiled UNet package, CUDA, a codec) has no Python exception: this leaves
    # every thread's Python stack on stderr, the log, before the process dies (here, where the process owns stderr).
    faulthandler.enable(all_threads=True)
    sys.exit(main())
