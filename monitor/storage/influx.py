"""InfluxDB through its v1 HTTP API: line protocol on /write, InfluxQL on /query, with `requests`.

The v1 API is the one protocol InfluxDB 1.x serves natively and 2.x and 3.x serve for compatibility, so this
exact code is what runs against every version (and what the tests run against a real influxd 1.6.7).

URL: `influxdb://[user:password@]host:port/database` (`influxdbs://` for HTTPS). Credentials:
- user and password: sent as the v1 `u` and `p` query parameters (1.x users; 2.x and 3.x take a token as `p`);
- password only (`influxdb://:TOKEN@host:port/db`): sent as `Authorization: Token TOKEN` (2.x and 3.x tokens).

The database is created on first use (`CREATE DATABASE` is idempotent in 1.x); where the server refuses it
(3.x creates databases on first write) that is logged once and writing goes on. A write to a database that
vanished (404) creates it and retries once.

Errors: connection failures, timeouts, 5xx, 401/403 (credentials: fix and the spool replays) and 429 raise
StoreUnavailable, so the writer keeps the points; other 4xx raise StoreRejected with InfluxDB's own message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from common.redact import redact_url
from monitor.storage.base import (
    FilterValue,
    Point,
    StoreRejected,
    StoreUnavailable,
    WindowQuery,
    WindowRow,
    check_identifier,
    clean_point,
    sort_rows,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.05
READ_TIMEOUT_S = 10.0
_FIELD_TYPES_TTL_S = 60.0
_ESCAPED_KEYS: dict[str, str] = {}  # escape_key's answers (bounded: cleared when full)
_ESCAPED_KEYS_MAX = 10_000


# ---- line protocol ----------------------------------------------------------------------------------------


def _escape(value: str, specials: str) -> str:
    for char in specials:
        value = value.replace(char, "\\" + char)
    return value


def escape_measurement(name: str) -> str:
    """Escape a measurement name: commas and spaces."""
    return _escape(name, ", ")


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key: commas, equals signs and spaces."""
    escaped = _ESCAPED_KEYS.get(name)
    if escaped is None:  # the same few names on every point: escaped once
        escaped = _escape(name, ",= ")
        if len(_ESCAPED_KEYS) >= _ESCAPED_KEYS_MAX:
            _ESCAPED_KEYS.clear()
        _ESCAPED_KEYS[name] = escaped
    return escaped


def format_field(value: object) -> str:
    """Format a field value: `i`-suffixed integers, repr floats, true/false, quoted escaped strings."""
    kind = value.__class__
    if kind is float:  # the common cases first, by exact type (a bool is an int subclass)
        return repr(value)
    if kind is int:
        return f"{value}i"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # Only backslash and double quote are escaped inside a string field; a newline is sent as it is.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise StoreRejected(f"unsupported field type {type(value).__name__}")


def to_line(point: Point) -> str:
    """Serialise one cleaned point as a line of line protocol with a nanosecond timestamp."""
    tags = point.tags
    head = escape_measurement(point.measurement)
    if tags:
        head += "".join(f",{escape_key(key)}={escape_key(tags[key])}" for key in sorted(tags))  # InfluxDB's fast path
    fields = []
    for key, value in point.fields.items():
        kind = value.__class__
        if kind is float:  # most values: inlined rather than a call per value
            fields.append(f"{escape_key(key)}={value!r}")
        elif kind is int:
            fields.append(f"{escape_key(key)}={value}i")
        else:
            fields.append(f"{escape_key(key)}={format_field(value)}")
    return f"{head} {','.join(fields)} {point.time_ns}"


# ---- InfluxQL ---------------------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: FilterValue) -> str:
    """Format an InfluxQL literal: single-quoted escaped strings, numbers, booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


class InfluxStore:
    """A Store on an InfluxDB server's v1 HTTP API."""

    def __init__(
        self,
        base_url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        session: requests.Session | None = None,
    ) -> None:
        """Talk to `base_url` (http[s]://host:port) and `database`; no request is made until first use."""
        self.base_url = base_url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._params: dict[str, str] = {}
        if username:
            self._params = {"u": username, "p": password or ""}
        elif password:
            self._session.headers["Authorization"] = f"Token {password}"
        self._database_ready = False
        self._field_types: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> InfluxStore:
        """Build from `influxdb://[user:password@]host:port/database` (or `influxdbs://` for HTTPS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("influxdb", "influxdbs"):
            raise ValueError(f"InfluxDB URL must start with influxdb:// or influxdbs://, got {redact_url(url)!r}")
        database = unquote(parts.path.strip("/"))
        if not parts.hostname or not database or "/" in database:
            raise ValueError(f"InfluxDB URL must look like influxdb://host:8086/database, got {redact_url(url)!r}")
        try:
            port = parts.port or 8086
        except ValueError:
            raise ValueError(f"InfluxDB URL has a bad port: {redact_url(url)!r}") from None
        scheme = "https" if parts.scheme == "influxdbs" else "http"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(
            f"{scheme}://{host}:{port}",
            database,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            **kwargs,
        )

    # ---- writing ----------------------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        """Write the points as one line-protocol request (see the module docstring for errors)."""
        lines = [to_line(p) for p in (clean_point(point) for point in points) if p is not None]
        if not lines:
            return
        body = ("\n".join(lines) + "\n").encode()
        self._ensure_database()
        response = self._request("POST", "/write", params={"db": self.database, "precision": "ns"}, data=body)
        if response.status_code == 404 and "database not found" in response.text:
            self._database_ready = False
            self._ensure_database()
            response = self._request("POST", "/write", params={"db": self.database, "precision": "ns"}, data=body)
            if response.status_code == 404:
                # Kept, not dropped: the points stay spooled until an administrator creates the database.
                raise StoreUnavailable(f"database {self.database!r} does not exist and this user may not create it")
        self._raise_for_status(response, "write")

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        create = f"CREATE DATABASE {quote_ident(self.database)}"
        response = self._request("POST", "/query", params={"q": create})
        if response.status_code == 403:
            # A write-only user may not create databases (InfluxDB 1.x needs admin rights for it): the database is
            # then the administrator's to create, and writing goes ahead.
            log.warning("this InfluxDB user may not CREATE DATABASE %s; writing to it as it is", self.database)
            self._database_ready = True
            return
        if response.status_code >= 500 or response.status_code in (401, 429):
            self._raise_for_status(response, "CREATE DATABASE")
        error = self._statement_error(response)
        if error:
            log.warning("InfluxDB refused CREATE DATABASE %s (%s); writing anyway", self.database, error)
        self._database_ready = True

    # ---- reading ----------------------------------------------------------------------------------------

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
        return self.query_windows([(measurement, fields, start_ns, end_ns, tags, bucket_s)])[0]

    def query_windows(self, queries: Sequence[WindowQuery]) -> list[list[WindowRow]]:
        """Answer several `query_window` calls (their arguments in order) in one HTTP request.

        InfluxQL takes statements separated by `;` and answers each apart: one round trip instead of several
        (the rollup reader asks for a rollup and the raw points at both ends of a window at once).
        """
        plans: list[tuple[str, list[str], dict[str, str], bool] | None] = []
        for measurement, fields, start_ns, end_ns, tags, bucket_s in queries:
            fields = [check_identifier(f, "field") for f in fields]
            types = self._types(measurement, fields)
            numeric = [f for f in fields if types.get(f) in ("float", "integer")]
            if not numeric:
                plans.append(None)
                continue
            if bucket_s is not None and bucket_s <= 0:
                raise ValueError(f"bucket_s must be positive, got {bucket_s}")
            source = f"FROM {quote_ident(measurement)} WHERE {self._where(start_ns, end_ns, tags, None)}"
            if bucket_s is None:
                select = ", ".join(f"{quote_ident(f)} AS v{i}" for i, f in enumerate(numeric))
                q = f"SELECT {select} {source} GROUP BY *"
            else:
                select = ", ".join(
                    f"mean({q}) AS mean{i}, max({q}) AS max{i}, count({q}) AS count{i}"
                    for i, q in enumerate(map(quote_ident, numeric))
                )
                q = f"SELECT {select} {source} GROUP BY time({int(bucket_s)}s), * fill(none)"
            plans.append((q, numeric, types, bucket_s is None))
        answers = iter(self._series_many([plan[0] for plan in plans if plan is not None]))
        out: list[list[WindowRow]] = []
        for plan in plans:
            if plan is None:
                out.append([])
                continue
            _, numeric, types, raw = plan
            rows = []
            for series_tags, values in next(answers):
                for row in values:
                    if raw:
                        vals = {f: self._cast(types[f], row[f"v{i}"]) for i, f in enumerate(numeric)}
                        mean = {f: None if v is None else float(v) for f, v in vals.items()}
                        counts = {f: int(v is not None) for f, v in vals.items()}
                        rows.append(WindowRow(series_tags, row["time"], mean, vals, counts))
                    else:
                        mean = {f: self._cast("float", row[f"mean{i}"]) for i, f in enumerate(numeric)}
                        maxes = {f: self._cast(types[f], row[f"max{i}"]) for i, f in enumerate(numeric)}
                        counts = {f: int(row[f"count{i}"] or 0) for i, f in enumerate(numeric)}
                        rows.append(WindowRow(series_tags, row["time"], mean, maxes, counts))
            out.append(sort_rows(rows))
        return out

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
        where = self._where(start_ns, end_ns, tags, fields)
        q = f"SELECT * FROM {quote_ident(measurement)} WHERE {where} GROUP BY *"
        q += " ORDER BY time DESC" if descending else ""
        if limit is not None:
            q += f" LIMIT {int(limit)}"  # per series: merged and cut again below
        series = self._series(q)
        seen = {key for _, values in series for row in values for key in row if key != "time"}
        types = self._types(measurement, sorted(seen))
        points = []
        for series_tags, values in series:
            for row in values:
                time_ns = row.pop("time")
                row_fields = {k: self._cast(types.get(k, ""), v) for k, v in row.items() if v is not None}
                points.append(Point(measurement, series_tags, row_fields, time_ns))
        points.sort(key=lambda p: (p.time_ns, sorted(p.tags.items())), reverse=descending)
        return points if limit is None else points[: int(limit)]

    def ping(self) -> bool:
        """Return whether the server answers /ping."""
        try:
            response = self._request("GET", "/ping")
        except StoreUnavailable:
            return False
        return response.status_code < 300

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    # ---- helpers ----------------------------------------------------------------------------------------

    def _where(
        self,
        start_ns: int,
        end_ns: int,
        tags: Mapping[str, str] | None,
        fields: Mapping[str, FilterValue] | None,
    ) -> str:
        clauses = [f"time >= {int(start_ns)}", f"time < {int(end_ns)}"]
        for key, value in {**(tags or {}), **(fields or {})}.items():
            clauses.append(f"{quote_ident(check_identifier(key, 'filter key'))} = {quote_literal(value)}")
        return " AND ".join(clauses)

    @staticmethod
    def _cast(field_type: str, value: Any) -> Any:
        """Restore a value's type: InfluxDB's JSON writes the float 2.0 as 2."""
        if value is None:
            return None
        if field_type == "float":
            return float(value)
        if field_type == "integer":
            return int(value)
        return value

    def _types(self, measurement: str, wanted: Sequence[str]) -> dict[str, str]:
        """Return field key → InfluxDB type for a measurement, cached; refreshed when a field is missing."""
        with self._lock:
            cached = self._field_types.get(measurement)
        now = time.monotonic()
        if cached and now - cached[0] < _FIELD_TYPES_TTL_S and all(f in cached[1] for f in wanted):
            return cached[1]
        types: dict[str, str] = {}
        for _, values in self._series(f"SHOW FIELD KEYS FROM {quote_ident(measurement)}"):
            for row in values:
                types[row["fieldKey"]] = row["fieldType"]
        with self._lock:
            self._field_types[measurement] = (now, types)
        return types

    def _series(self, q: str) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
        """Run one InfluxQL statement; return (tags without empty values, rows as dicts) per series."""
        return self._series_many([q])[0]

    def _series_many(self, statements: Sequence[str]) -> list[list[tuple[dict[str, str], list[dict[str, Any]]]]]:
        """Run InfluxQL statements in one request; return each one's (tags, rows as dicts) per series."""
        if not statements:
            return []
        q = ";".join(statements)
        response = self._request("GET", "/query", params={"db": self.database, "q": q, "epoch": "ns"})
        self._raise_for_status(response, "query")
        body = response.json()
        answers: list[list[tuple[dict[str, str], list[dict[str, Any]]]]] = []
        for index in range(len(statements)):
            results = body.get("results") or []
            result = results[index] if index < len(results) else {}
            error = body.get("error") or result.get("error")
            if error:
                if str(error).startswith("database not found"):
                    answers.append([])
                    continue
                raise StoreRejected(f"InfluxDB refused the query: {error}")
            out = []
            for series in result.get("series", []):
                tags = {k: v for k, v in (series.get("tags") or {}).items() if v}
                columns = series["columns"]
                out.append((tags, [dict(zip(columns, values, strict=True)) for values in series["values"]]))
            answers.append(out)
        return answers

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        params = {**kwargs.pop("params", {}), **self._params}
        try:
            return self._session.request(method, self.base_url + path, params=params, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as e:
            raise StoreUnavailable(f"InfluxDB at {self.base_url} unreachable: {type(e).__name__}") from e

    @staticmethod
    def _message(response: requests.Response) -> str:
        try:
            return str(response.json().get("error", response.text))
        except ValueError:
            return response.text.strip()[:500]

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        message = f"InfluxDB {what} answered {status}: {self._message(response)}"
        if status >= 500 or status in (401, 403, 429):
            raise StoreUnavailable(message)
        raise StoreRejected(message)

    @staticmethod
    def _statement_error(response: requests.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if body.get("error"):
            return str(body["error"])
        results = body.get("results") or [{}]
        error = results[0].get("error")
        return None if error is None else str(error)
