"""Fixtures shared across the suite: the real servers, started once per session on free loopback ports."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import InfluxServer


def share_the_cores_among_workers() -> None:
    """Give each pytest-xdist worker, and every process it starts, its share of the cores for torch's threads.

    torch starts one OpenMP thread per core in every process; two workers on two cores then run four threads that
    spin waiting for each other, and a tiny-model job that takes 10 s alone takes over a minute. Set before the
    first import of torch (the environment is also what the generator and monitor processes the tests start
    inherit); an OMP_NUM_THREADS given by the caller is kept.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported by a plugin before this file: its thread pool is already sized
        sys.modules["torch"].set_num_threads(threads)


share_the_cores_among_workers()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """Run one real influxd (Debian's influxdb) for the session; tests use their own databases on it."""
    server = InfluxServer(Path(tmp_path_factory.mktemp("influxd")))
    server.start()
    yield server
    server.stop()
