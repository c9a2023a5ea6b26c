"""Time-series stores behind one small interface: InfluxDB (v1 HTTP API) and SQLite.

`open_store(url)` picks the backend from the URL's scheme through the `BACKENDS` registry.
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.store.base import Point, Store, StoreRejected, StoreUnavailable, WindowRow
from monitor.store.influx import InfluxStore
from monitor.store.sqlite import SqliteStore

BACKENDS: dict[str, Callable[[str], Store]] = {
    "sqlite": SqliteStore.from_url,
    "influxdb": InfluxStore.from_url,
    "influxdbs": InfluxStore.from_url,
}

__all__ = ["BACKENDS", "Point", "Store", "StoreRejected", "StoreUnavailable", "WindowRow", "open_store"]


def open_store(url: str) -> Store:
    """Open the store a URL names (`sqlite:///path` or `influxdb://[user:pass@]host:port/db`); no network."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in BACKENDS:
        schemes = ", ".join(s + "://" for s in BACKENDS)
        raise ValueError(f"store URL must start with one of {schemes}, got {url!r}")
    return BACKENDS[scheme](url)
