"""The embedded default store: one SQLite file in WAL mode, one generic table of points.

Each point is a row (measurement, tags as canonical JSON, time_ns, fields as JSON). The primary key
(measurement, time_ns, tags) makes a rewrite of the same point store it once, and like InfluxDB a rewrite
merges its fields into the stored ones. Range scans by measurement and time use that key; tag and field
filters are `json_extract` on the rows in range, and buckets are integer division of time, done in SQL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.units import NS_PER_S
from monitor.storage.base import (
    FilterValue,
    Point,
    StoreRejected,
    StoreUnavailable,
    WindowRow,
    check_identifier,
    clean_point,
    numeric_only,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, time_ns, tags)
) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO points (measurement, time_ns, tags, fields) VALUES (?, ?, ?, ?)
ON CONFLICT (measurement, time_ns, tags) DO UPDATE SET fields = json_patch(points.fields, excluded.fields)
"""


def _numeric(field: str) -> str:
    """SQL for a field's value when it is a JSON number, else NULL (booleans and strings are skipped)."""
    path = f"'$.{field}'"
    is_number = f"json_type(fields, {path}) IN ('integer', 'real')"
    return f"(CASE WHEN {is_number} THEN json_extract(fields, {path}) END)"


class SqliteStore:
    """A Store in one SQLite file (or `:memory:`), safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        """Open or create the database at `path`, creating its folder."""
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Open `sqlite:///relative/path`, `sqlite:////absolute/path` or `sqlite:///:memory:`."""
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ValueError(f"SQLite store URL must look like sqlite:///path/to/file.db, got {url!r}")
        return cls(url[len(prefix) :])

    def write(self, points: Sequence[Point]) -> None:
        """Upsert the points in one transaction."""
        rows = []
        for point in points:
            cleaned = clean_point(point)
            if cleaned is None:
                continue
            tags = json.dumps(dict(cleaned.tags), sort_keys=True, ensure_ascii=False)
            fields = json.dumps(dict(cleaned.fields), ensure_ascii=False)
            rows.append((cleaned.measurement, cleaned.time_ns, tags, fields))
        if not rows:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(_UPSERT, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreUnavailable(f"SQLite write failed: {e}") from e
            except (ValueError, UnicodeError) as e:
                # The points themselves cannot be stored (e.g. a lone surrogate): refused, not retried, and the
                # transaction closed so that the next write starts clean.
                self._rollback()
                raise StoreRejected(f"SQLite cannot store these points: {e}") from e

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def query_window(
        self,
        measurement: str,
        fields: Sequence[str],
        start_ns: int,
        end_ns: int,
        tags: Mapping[str, str] | None = None,
        bucket_s: int | None = None,
    ) -> list[WindowRow]:
        """Return per tag set and bucket the mean and max of numeric fields (see Store.query_window)."""
        fields = [check_identifier(f, "field") for f in fields]
        if not fields:
            return []
        where, params = self._where(measurement, start_ns, end_ns, tags, None)
        values = [_numeric(f) for f in fields]
        if bucket_s is None:
            # One json_extract of every path per row (it answers a JSON array) rather than two JSON calls per
            # field and row; numbers are picked out here (JSON true/false arrive as booleans, strings as str).
            paths = ", ".join(f"'$.{f}'" for f in fields) + ("" if len(fields) > 1 else ", '$.__none__'")
            sql = (
                f"SELECT tags, time_ns, json_extract(fields, {paths}) FROM points WHERE {where} ORDER BY tags, time_ns"
            )
            rows = []
            tag_sets: dict[str, dict[str, str]] = {}  # one series' rows share its tags
            for tags_json, time_ns, array in self._select(sql, params):
                vals = [v if v.__class__ in (int, float) else None for v in json.loads(array)]
                if any(v is not None for v in vals):
                    mean = {f: None if v is None else float(v) for f, v in zip(fields, vals, strict=False)}
                    maxes = dict(zip(fields, vals, strict=False))
                    counts = {f: int(v is not None) for f, v in maxes.items()}
                    row_tags = tag_sets.get(tags_json) or tag_sets.setdefault(tags_json, json.loads(tags_json))
                    rows.append(WindowRow(row_tags, time_ns, mean, maxes, counts))
            return numeric_only(rows)
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be positive, got {bucket_s}")
        bucket_ns = bucket_s * NS_PER_S
        aggregates = ", ".join(f"avg({v}), max({v}), count({v})" for v in values)
        any_value = " OR ".join(f"count({v}) > 0" for v in values)
        sql = (
            f"SELECT tags, (time_ns / {bucket_ns}) * {bucket_ns} AS bucket, {aggregates} FROM points "
            f"WHERE {where} GROUP BY tags, bucket HAVING {any_value} ORDER BY tags, bucket"
        )
        rows = []
        for tags_json, bucket, *aggs in self._select(sql, params):
            mean = {f: aggs[3 * i] for i, f in enumerate(fields)}
            maxes = {f: aggs[3 * i + 1] for i, f in enumerate(fields)}
            counts = {f: aggs[3 * i + 2] for i, f in enumerate(fields)}
            rows.append(WindowRow(json.loads(tags_json), bucket, mean, maxes, counts))
        return numeric_only(rows)

    def query_points(
        self,
        measurement: str,
        start_ns: int,
        end_ns: int,
        tags: Mapping[str, str] | None = None,
        fields: Mapping[str, FilterValue] | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[Point]:
        """Return raw points matching the filters, ordered by time (see Store.query_points)."""
        where, params = self._where(measurement, start_ns, end_ns, tags, fields)
        order = "DESC" if descending else "ASC"
        sql = f"SELECT tags, fields, time_ns FROM points WHERE {where} ORDER BY time_ns {order}, tags"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [
            Point(measurement, json.loads(tags_json), json.loads(fields_json), time_ns)
            for tags_json, fields_json, time_ns in self._select(sql, params)
        ]

    def ping(self) -> bool:
        """Return whether the database answers a trivial query."""
        try:
            self._select("SELECT 1", [])
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _where(
        self,
        measurement: str,
        start_ns: int,
        end_ns: int,
        tags: Mapping[str, str] | None,
        fields: Mapping[str, FilterValue] | None,
    ) -> tuple[str, list[object]]:
        clauses = ["measurement = ?", "time_ns >= ?", "time_ns < ?"]
        params: list[object] = [measurement, int(start_ns), int(end_ns)]
        for column, filters in (("tags", tags or {}), ("fields", fields or {})):
            for key, value in filters.items():
                check_identifier(key, "filter key")
                clauses.append(f"json_extract({column}, '$.{key}') = ?")
                params.append(value)
        return " AND ".join(clauses), params

    def _select(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite query failed: {e}") from e
            except sqlite3.Error as e:
                raise StoreRejected(f"SQLite refused the query: {e}") from e
