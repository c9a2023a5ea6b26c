"""Both services' real Flask apps, built as their `python -m` entry points build them, with no model and no GPU.

The generator's workers never start (no model loads; submitted jobs stay queued), the monitor's sampler and
alerting threads never start (their routes serve what they have): what is under test is the HTTP surface.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from common.spool import Spool
from generator.app import Runtime, create_app
from generator.config import GeneratorConfig
from monitor.compose import build_monitor
from monitor.config import MonitorConfig
from monitor.storage import schema
from monitor.storage.sqlite import SqliteStore
from monitor.storage.writer import Writer
from monitor.web.context import get_context

TOKEN = "t0ken-for-tests"


class IdleRuntime(Runtime):
    """The generator's runtime with its workers never started: the API works, no job ever runs."""

    def start(self) -> None:
        """Start nothing."""

    def close(self) -> None:
        """Close the event sender and the job book (no worker to stop)."""
        self.events.close()
        self.book.close()


class NoGpus:
    """A GPU reader on a machine without GPUs."""

    available = False
    reason = "no GPU in this test"

    def read(self) -> tuple:
        """Return no GPU."""
        return ()

    def call_stats(self) -> dict:
        """Return no call costs."""
        return {}

    def error_counts(self) -> dict:
        """Return no errors."""
        return {}

    def shutdown(self) -> None:
        """Nothing to release."""


def make_generator_app(root: Path, **overrides: object) -> Flask:
    """Build the generator's app on an idle runtime under `root`."""
    config = GeneratorConfig(outputs=root / "outputs", state_dir=root / "state", queue_size=4, **overrides)
    return create_app(config, runtime_factory=IdleRuntime)


def make_monitor_app(root: Path, **overrides: object) -> Flask:
    """Build the monitor's app as `python -m monitor` does (every part wired), on SQLite, nothing started."""
    config = MonitorConfig(
        store_url=f"sqlite:///{root / 'monitor.db'}",
        data_dir=root,
        spool_dir=root / "spool",
        outputs_dir=root / "outputs",
        alert_state_path=None,
        generator_url=None,
        host_name="api-host",
        **overrides,
    ).validate()
    store = SqliteStore(root / "monitor.db")
    writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
    return build_monitor(config, store, writer, gpus=NoGpus()).app


@pytest.fixture(scope="module")
def generator_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The generator's app with an admin token."""
    app = make_generator_app(tmp_path_factory.mktemp("generator-api"), admin_token=TOKEN)
    yield app
    app.extensions["generator"].close()


@pytest.fixture(scope="module")
def monitor_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The monitor's app with ingest and admin tokens."""
    app = make_monitor_app(tmp_path_factory.mktemp("monitor-api"), ingest_token=TOKEN, admin_token=TOKEN)
    yield app
    get_context(app).close()
