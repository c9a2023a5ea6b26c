"""`python -m monitor`: read the configuration, open the store, start writer and sampler, serve the API."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import waitress

from common.spool import Spool
from monitor import schema
from monitor.app import create_app, get_context
from monitor.config import ConfigError, MonitorConfig
from monitor.store import Store, StoreUnavailable, open_store
from monitor.writer import Writer

if TYPE_CHECKING:
    from monitor.sampler import Sampler

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


def build_sampler(config: MonitorConfig, writer: Writer) -> Sampler:
    """Build the GPU and host sampler that writes through `writer` (see monitor/sampler.py)."""
    from monitor.host import HostReader
    from monitor.sampler import GeneratorPidProvider, Sampler

    return Sampler(
        interval_s=config.sample_interval_s,
        host_name=config.host_name,
        write=writer.write,
        host=HostReader(config.outputs_dir),
        generator_pid=GeneratorPidProvider(config.generator_url),
    )


def get_redacted(config: MonitorConfig) -> str:
    """Return the store URL without credentials, for messages."""
    scheme, _, rest = config.store_url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _fail(message: str) -> int:
    print(f"monitor: {message}", file=sys.stderr)
    return 2


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the monitor until SIGINT or SIGTERM; return the exit status (2: bad configuration or store)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO
    try:
        config = MonitorConfig.from_sources(argv).validate()
        store = open_store(config.store_url)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except StoreUnavailable as e:
        return _fail(f"cannot open the store: {e}")
    if not wait_for_store(store, config.store_wait_s):
        store.close()
        return _fail(
            f"the store at {get_redacted(config)} did not answer within {config.store_wait_s:.0f} s: "
            "start it, fix --store, or raise --store-wait"
        )
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    writer.start()
    sampler = build_sampler(config, writer)
    app = create_app(config, store=store, writer=writer, sampler=sampler)
    try:
        server = waitress.create_server(app, host=config.host, port=config.port, threads=8)
    except OSError as e:
        get_context(app).close()
        return _fail(f"cannot listen on {config.host}:{config.port} ({e.strerror}): pick another --port")
    signal.signal(signal.SIGTERM, _stop)
    sampler.start()
    log.info("monitor on http://%s:%d, store %s", config.host, config.port, get_context(app).redacted_store_url)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        log.info("stopping")
    finally:
        sampler.shutdown()
        server.close()
        get_context(app).close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
