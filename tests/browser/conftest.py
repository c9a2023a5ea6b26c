"""A real browser (Debian's Chromium, driven by playwright) against the real generator and monitor.

Both services run in this process on free loopback ports, wired as `make run` wires them: the generator (tiny
model) sends its events to the monitor, which is assembled by `build_monitor` exactly as `python -m monitor`
assembles it, with its real sampler (on CI: no GPU, host samples only). Playwright's own browser download
does not work here, so it drives /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from common.spool import Spool
from monitor.compose import Monitor, build_monitor
from monitor.config import MonitorConfig
from monitor.storage import open_store, schema
from monitor.storage.writer import Writer
from tests.generator.conftest import GeneratorServer, serve_generator
from tests.servers import AppServer, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HOST = "test-host"  # the name serve_generator gives the generator
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class Stack:
    """The served pair: the generator and the monitor's parts and URL."""

    generator: GeneratorServer
    monitor: Monitor
    monitor_url: str

    def api(self, path: str) -> requests.Response:
        """GET a monitor API path (under /monitor/api)."""
        return requests.get(f"{self.monitor_url}/monitor/api{path}", timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Serve the generator and the monitor, each knowing the other's URL; stop both afterwards."""
    root = tmp_path_factory.mktemp("browser")
    monitor_port = free_port()
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    with contextlib.contextmanager(serve_generator)(root / "generator", monitor_url=monitor_url) as generator:
        config = replace(
            MonitorConfig(),
            port=monitor_port,
            store_url=f"sqlite:///{root / 'monitor.db'}",
            data_dir=root,
            spool_dir=root / "spool",
            alert_state_path=None,
            generator_url=generator.url,
            sample_interval_s=1.0,
            host_name=HOST,
            outputs_dir=generator.config.outputs,
            # The generator started first and spooled only its start-up events: no job in a replay to wait for, so
            # a clip is scored as soon as its job ends (tests/quality/test_schedule.py covers the quiet period).
            quality_startup_quiet_s=0.0,
        ).validate()
        store = open_store(config.store_url)
        writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
        writer.start()
        monitor = build_monitor(config, store, writer)
        server = AppServer(monitor.app, port=monitor_port, threads=8).start()
        monitor.start()
        try:
            yield Stack(generator, monitor, monitor_url)
        finally:
            server.stop()  # from waitress' own loop: closing its sockets from here could fail its select() (EBADF)
            monitor.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Launch headless Chromium for the module."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is missing: run scripts/install-system-deps.sh (Debian package chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """One desktop-sized page the tests walk through in order (generator, then the monitor tab).

    It needs the stack so that it closes first: a page left polling would race the servers' shutdown.
    """
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the pages raised JavaScript errors: {errors}"


def screenshots(page: Page, name: str) -> list[Path]:
    """Save full-page screenshots of the page as it stands, at 1280x800 and at phone width (390 px)."""
    ARTIFACTS.mkdir(exist_ok=True)
    paths = []
    for label, viewport in (("1280x800", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        # Two animation frames: the charts' resize observers redraw at the new width before the shot.
        page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        path = ARTIFACTS / f"{name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        paths.append(path)
    page.set_viewport_size(DESKTOP)
    return paths
