"""Time-series stores behind one small interface: InfluxDB (v1 HTTP API) and SQLite.

`open_store(url)` picks the backend from the URL's scheme through the `BACKENDS` registry and wraps it in
`RollupStore`, which keeps the sample measurements' rollups (monitor/storage/rollup.py).
"""

from __future__ import annotations

from collections.abc import Callable

from common.redact import redact_url
from monitor.storage.base import Point, Store, StoreRejected, StoreUnavailable, WindowRow
from monitor.storage.influx import InfluxStore
from monitor.storage.rollup import RollupStore
from monitor.storage.sqlite import SqliteStore

BACKENDS: dict[str, Callable[[str], Store]] = {
    "sqlite": SqliteStore.from_url,
    "influxdb": InfluxStore.from_url,
    "influxdbs": InfluxStore.from_url,
}

__all__ = [
    "BACKENDS",
    "Point",
    "RollupStore",
    "Store",
    "StoreRejected",
    "StoreUnavailable",
    "WindowRow",
    "open_store",
]


def open_store(url: str) -> Store:
    """Open the store a URL names (`sqlite:///path` or `influxdb://[user:pass@]host:port/db`); no network."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in BACKENDS:
        schemes = ", ".join(s + "://" for s in BACKENDS)
        raise ValueError(f"store URL must start with one of {schemes}, got {redact_url(url)!r}")
    return RollupStore(BACKENDS[scheme](url), rolled_up_fields())


def rolled_up_fields() -> dict[str, dict[str, str]]:
    """Return the numeric fields of the sample measurements (what the live tab charts), with their types."""
    from monitor.storage.schema import FIELD_TYPES, NUMERIC_FIELDS  # the schema imports the store's records

    return {m: {f: FIELD_TYPES[m][f] for f in fields} for m, fields in NUMERIC_FIELDS.items()}
