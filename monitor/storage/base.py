"""The store interface every backend implements, the records it stores and returns, and the shared rules.

The rules both backends apply (so that both pass one contract suite, and so that what SQLite accepts today
InfluxDB 1.x, 2.x and 3.x accept tomorrow):

- Tags with an empty or null value are left out (InfluxDB cannot store an empty tag value).
- Fields with a null or non-finite value are left out; a point left with no field is skipped.
- Names (measurement, tag keys, field keys) and tag values are strings without a newline or carriage return;
  a backslash may appear in them only before a character other than a backslash, comma, equals sign or space,
  and never last (InfluxDB 1.x keeps backslashes literally there, 2.x and 3.x unescape `\\\\`: only these are
  read back the same by all). `time` is not a tag or field key, and no key is both a tag and a field (3.x).
- Integers fit in 64 bits; booleans stay booleans; a field keeps its type (InfluxDB refuses a float into an
  integer field: `monitor.storage.schema.conform` fixes types before points reach the writer).
- Query filter names (tag keys, field keys, field names) are identifiers: letters, digits, underscores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

FieldValue = float | int | str | bool | None
FilterValue = str | int | float | bool

_INT64 = (-(2**63), 2**63 - 1)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BAD_BACKSLASH = re.compile(r"\\([\\ ,=]|$)")
_GOOD_NAMES: set[str] = set()  # names that passed check_name (bounded: cleared when full)
_GOOD_NAMES_MAX = 10_000


@dataclass(frozen=True)
class Point:
    """One measurement at one time: low-cardinality `tags` (host, gpu, stage), `fields` (values, job_id)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int


@dataclass(frozen=True)
class _Cleaned(Point):
    """A point `clean_point` returned: cleaning it again is a no-op (stores stacked on stores clean once)."""


@dataclass(frozen=True)
class WindowRow:
    """One time bucket of one tag set: the mean, max and count of each numeric field (None, 0 where it had none).

    `count` is how many raw values each field's mean and max were taken over, so a bucket of one sample can be
    told from one of 120. Without bucketing (`bucket_s=None`) each row is one point: `mean` and `max` both hold
    its values and `count` is 1 for each field it has.
    """

    tags: Mapping[str, str]
    time_ns: int
    mean: Mapping[str, float | None]
    max: Mapping[str, float | int | None]
    count: Mapping[str, int]

    @property
    def samples(self) -> int:
        """Return the raw points the bucket aggregates: the count of its most often reported field."""
        return max(self.count.values(), default=0)


#: A `query_window` call's arguments in order: measurement, fields, start_ns, end_ns, tags, bucket_s. Stores that
#: can answer several at once (InfluxDB: one request) offer `query_windows(list[WindowQuery])`.
WindowQuery = tuple[str, Sequence[str], int, int, Mapping[str, str] | None, int | None]


class StoreUnavailable(Exception):
    """The store cannot be reached or refused the request for a reason that may pass (retry later)."""


class StoreRejected(ValueError):
    """The store refused the request itself (a bad point or query): sending it again fails again."""


class Store(Protocol):
    """Write points and read them back by window; the backend-specific parts live in each implementation."""

    def write(self, points: Sequence[Point]) -> None:
        """Store the points; writing the same point twice stores it once.

        Raises:
            StoreUnavailable: the store is down or overloaded; retry later.
            StoreRejected: a point breaks the rules above or the store's schema; retrying cannot help.
        """
        ...

    def query_window(
        self,
        measurement: str,
        fields: Sequence[str],
        start_ns: int,
        end_ns: int,
        tags: Mapping[str, str] | None = None,
        bucket_s: int | None = None,
    ) -> list[WindowRow]:
        """Return the numeric `fields` in [start_ns, end_ns) per tag set, bucketed server-side when asked.

        Each row says per field how many raw values it aggregates (`WindowRow.count`). Buckets start at
        multiples of `bucket_s` since the epoch; empty buckets are left out. Boolean and string fields are
        skipped. Rows are sorted by tag set, then time.
        """
        ...

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
        """Return raw points in [start_ns, end_ns) matching tag and field equality filters, by time."""
        ...

    def ping(self) -> bool:
        """Return whether the store answers now."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def check_name(name: object, what: str) -> str:
    """Return `name` if it is a portable measurement, tag or field name; raise StoreRejected otherwise."""
    if name.__class__ is str and name in _GOOD_NAMES:  # the same few names on every point: checked once
        return str(name)
    if not isinstance(name, str) or not name:
        raise StoreRejected(f"{what} must be a non-empty string, got {name!r}")
    if "\n" in name or "\r" in name:
        raise StoreRejected(f"{what} {name!r} contains a line break")
    if _BAD_BACKSLASH.search(name):
        raise StoreRejected(f"{what} {name!r} has a backslash last or before a backslash, comma, = or space")
    if len(_GOOD_NAMES) >= _GOOD_NAMES_MAX:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)
    return name


def clean_point(point: Point) -> Point | None:
    """Apply the shared rules: drop empty tags and null fields, check names; None when no field is left."""
    if point.__class__ is _Cleaned:
        return point
    check_name(point.measurement, "measurement")
    if isinstance(point.time_ns, bool) or not isinstance(point.time_ns, int):
        raise StoreRejected(f"time_ns must be an integer, got {point.time_ns!r}")
    tags: dict[str, str] = {}
    for key, value in point.tags.items():
        check_name(key, "tag key")
        if value is None or value == "":
            continue
        tags[key] = check_name(value, f"tag {key!r} value")
    fields: dict[str, FieldValue] = {}
    for key, field_value in point.fields.items():
        check_name(key, "field key")
        kind = field_value.__class__
        if kind is float:  # the common cases first, by exact type (a bool is an int subclass)
            if not math.isfinite(field_value):  # type: ignore[arg-type]  # narrowed by exact class, which mypy cannot follow
                continue
        elif kind is int:
            if not _INT64[0] <= field_value <= _INT64[1]:  # type: ignore[operator]  # as above: an int by exact class
                raise StoreRejected(f"field {key!r} = {field_value} does not fit in 64 bits")
        elif kind is not str and kind is not bool:
            if field_value is None or (isinstance(field_value, float) and not math.isfinite(field_value)):
                continue
            if isinstance(field_value, int) and not isinstance(field_value, bool):
                if not _INT64[0] <= field_value <= _INT64[1]:
                    raise StoreRejected(f"field {key!r} = {field_value} does not fit in 64 bits")
            elif not isinstance(field_value, bool | float | str):
                raise StoreRejected(f"field {key!r} has unsupported type {type(field_value).__name__}")
        fields[key] = field_value
    if "time" in tags or "time" in fields or (tags and not fields.keys().isdisjoint(tags)):
        key = "time" if "time" in tags or "time" in fields else next(k for k in tags if k in fields)
        raise StoreRejected(f"{key!r} cannot be a key here (reserved, or both a tag and a field)")
    if not fields:
        return None
    return _Cleaned(point.measurement, tags, fields, point.time_ns)


def check_identifier(name: str, what: str) -> str:
    """Return `name` if it is a plain identifier usable as a query filter or field name; raise ValueError."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{what} must be letters, digits and underscores, got {name!r}")
    return name


def numeric_only(rows: list[WindowRow]) -> list[WindowRow]:
    """Leave out fields with no number in any row (strings, booleans, absent), as InfluxDB's types do; sort."""
    present = {f for row in rows for f, v in row.max.items() if v is not None}
    if all(present.issuperset(row.max) for row in rows):
        return sort_rows(rows)  # every field has a number somewhere: nothing to leave out
    return sort_rows(
        [
            WindowRow(
                row.tags,
                row.time_ns,
                {f: v for f, v in row.mean.items() if f in present},
                {f: v for f, v in row.max.items() if f in present},
                {f: v for f, v in row.count.items() if f in present},
            )
            for row in rows
        ]
    )


def sort_rows(rows: list[WindowRow]) -> list[WindowRow]:
    """Order rows by tag set, then time: the order both backends return."""
    return sorted(rows, key=lambda r: (sorted(r.tags.items()), r.time_ns))
