"""`python -m monitor`: read the configuration, open the store, build the parts (monitor/compose.py), serve the API.

`python -m monitor report ...` writes a CSV report instead (monitor/report_command.py).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import waitress

from common.logs import LogConfigError, configure_logging, fail, set_log_host
from common.redact import redact_url
from monitor.compose import build_monitor, open_writer
from monitor.config import ConfigError, MonitorConfig
from monitor.storage import Store, StoreUnavailable, open_store
from monitor.web.context import get_context

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


def _fail(message: str) -> int:
    return fail("monitor", message)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the monitor until SIGINT or SIGTERM; return the exit status (2: bad configuration or store)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["report"]:  # `python -m monitor report jobs|gpu ...`: a CSV report, then exit
        from monitor.report_command import main as report

        return report(args[1:])
    try:
        configure_logging("monitor")
    except LogConfigError as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 2
    try:
        config = MonitorConfig.from_sources(argv).validate()
        set_log_host(config.host_name)
        store = open_store(config.store_url)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except StoreUnavailable as e:
        return _fail(f"cannot open the store: {e}")
    if not wait_for_store(store, config.store_wait_s):
        store.close()
        return _fail(
            f"the store at {redact_url(config.store_url)} did not answer within {config.store_wait_s:.0f} s: "
            "start it, fix --store, or raise --store-wait"
        )
    from monitor.quality.clip_score import ClipLoadError

    writer = open_writer(config, store)
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
    # A crash in native code (NVML, a store's driver, CLIP's kernels) has no Python exception: this leaves
    # every thread's Python stack on stderr, the log, before the process dies (here, where the process owns stderr).
    faulthandler.enable(all_threads=True)
    sys.exit(main())
