"""Fixtures shared across the suite: the real servers, started once per session on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import InfluxServer


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """Run one real influxd (Debian's influxdb) for the session; tests use their own databases on it."""
    server = InfluxServer(Path(tmp_path_factory.mktemp("influxd")))
    server.start()
    yield server
    server.stop()
