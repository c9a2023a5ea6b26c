"""The compose stack's InfluxDB credentials on a real influxd with authentication on, set up as the influxdb:1.8
image's first start does (INFLUXDB_DB, INFLUXDB_ADMIN_USER, INFLUXDB_READ_USER): the monitor writes through its
store with MONITOR_STORE's admin URL, and Grafana's read-only user runs the dashboards' queries but cannot write."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from monitor.collection.host import HostSnapshot
from monitor.collection.sampler import host_point
from monitor.storage.influx import InfluxStore
from tests.deploy.compose import filled_env
from tests.deploy.grafana import concrete, dashboard_queries
from tests.servers import InfluxServer

DATABASE = "i2v"
ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
READER, READER_PASSWORD = "grafana", "reader-secret"


class AuthInfluxServer(InfluxServer):
    """An influxd with HTTP authentication on, as the compose service runs it (INFLUXDB_HTTP_AUTH_ENABLED)."""

    def __init__(self, root: Path) -> None:
        """Write the usual test config with `auth-enabled = true` added to its [http] section."""
        super().__init__(root)
        self.config.write_text(self.config.read_text().replace("[http]\n", "[http]\n  auth-enabled = true\n"))

    def statement(self, q: str, user: str | None = None, password: str | None = None) -> requests.Response:
        """Run one InfluxQL statement as `user` (none: unauthenticated)."""
        auth = (user, password) if user is not None and password is not None else None
        return requests.post(f"{self.url}/query", params={"q": q, "db": DATABASE}, auth=auth, timeout=10)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthInfluxServer]:
    """The server after the image's init script: the admin, the database, the read-only user and its grant."""
    server = AuthInfluxServer(tmp_path_factory.mktemp("influxd-auth"))
    server.start()
    try:
        # With no user yet, influxd accepts exactly this unauthenticated statement: the first admin.
        assert server.statement(f"CREATE USER {ADMIN} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES").ok
        for q in (
            f"CREATE DATABASE {DATABASE}",
            f"CREATE USER {READER} WITH PASSWORD '{READER_PASSWORD}'",
            f"GRANT READ ON {DATABASE} TO {READER}",
        ):
            response = server.statement(q, ADMIN, ADMIN_PASSWORD)
            assert response.ok, response.text
        yield server
    finally:
        server.stop()


def test_the_monitor_writes_with_the_admin_url_and_grafana_reads_with_the_read_only_user(
    secured: AuthInfluxServer, tmp_path: Path
) -> None:
    _, values = filled_env(tmp_path)
    # MONITOR_STORE as .env.example describes it, pointed at this server instead of the `influxdb` service.
    assert values["MONITOR_STORE"].startswith("influxdb://admin:")
    url = f"influxdb://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{secured.http_port}/{DATABASE}"
    store = InfluxStore.from_url(url)
    now_ns = time.time_ns()
    snapshot = HostSnapshot(0.5, 10 * 10**9, 64 * 10**9, None, None, 100 * 10**9)
    try:
        store.write([host_point(snapshot, host_name="gpu-host-1", time_ns=now_ns - i * 10**9) for i in range(5)])
    finally:
        store.close()

    query = dict(dashboard_queries("influxdb"))["i2v-gpus: Host CPU A"]
    answer: dict[str, Any] = secured.statement(concrete(query, host="gpu-host-1"), READER, READER_PASSWORD).json()
    series = [s for r in answer["results"] for s in r.get("series", [])]
    assert [s["tags"]["host"] for s in series] == ["gpu-host-1"], answer

    unauthenticated = secured.statement('SELECT * FROM "host_sample"')
    assert unauthenticated.status_code == 401
    refused = requests.post(
        f"{secured.url}/write",
        params={"db": DATABASE, "u": READER, "p": READER_PASSWORD},
        data="host_sample,host=intruder cpu_ratio=1",
        timeout=10,
    )
    assert refused.status_code == 403, refused.text


def test_a_write_only_user_writes_without_rights_to_create_the_database(secured: AuthInfluxServer) -> None:
    writer, password = "monitor-writer", "writer-secret"
    for q in (f"CREATE USER \"{writer}\" WITH PASSWORD '{password}'", f'GRANT WRITE ON {DATABASE} TO "{writer}"'):
        assert secured.statement(q, ADMIN, ADMIN_PASSWORD).ok
    store = InfluxStore.from_url(f"influxdb://{writer}:{password}@127.0.0.1:{secured.http_port}/{DATABASE}")
    snapshot = HostSnapshot(0.25, 10 * 10**9, 64 * 10**9, None, None, 100 * 10**9)
    try:
        store.write([host_point(snapshot, host_name="write-only-host", time_ns=time.time_ns())])
    finally:
        store.close()

    answer = secured.statement(
        "SELECT cpu_ratio FROM host_sample WHERE host = 'write-only-host'", ADMIN, ADMIN_PASSWORD
    ).json()
    assert answer["results"][0]["series"][0]["values"][0][1] == 0.25
