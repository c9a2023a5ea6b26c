"""Fixtures for the fault tests: real processes and servers that the tests kill and restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.events import Event, utc_now_iso
from tests.servers import InfluxServer


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[InfluxServer]:
    """An influxd of this test's own, since the test kills it."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    yield server
    server.stop()


def make_events(count: int, job_id: str | None = None) -> list[dict[str, Any]]:
    """Return `count` valid generator events (fresh event ids), as the generator sends them."""
    job_id = job_id or uuid.uuid4().hex
    return [
        Event(
            job_id=job_id,
            host="fault-host",
            gpu="0",
            kind="stage",
            stage="denoising_step",
            step=i + 1,
            total_steps=count,
            started_at=utc_now_iso(),
            duration_s=0.01,
        ).to_dict()
        for i in range(count)
    ]


def influx_values(server: InfluxServer, database: str, query: str) -> list[list[Any]]:
    """Run InfluxQL on the server directly and return the first series' rows (empty when there is none)."""
    result = server.query(query, database=database)["results"][0]
    series = result.get("series") or []
    return series[0]["values"] if series else []
