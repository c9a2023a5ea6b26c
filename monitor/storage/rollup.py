"""Rollups: the sample measurements pre-aggregated as they are written, so that long windows read few rows.

The live tab's 24 h chart asks for 288 s buckets over 86,400 one-second samples per series. Aggregating that
many points per refresh took 160-400 ms in influxd and 1.2-1.5 s in SQLite on a shared 2-core machine; the
dashboard needs tens of milliseconds. So `RollupStore` wraps any store and, for the measurements it is given
(`gpu_sample`, `host_sample`), writes beside every raw point the running aggregate of its bucket at each level
(12 s and 288 s): measurement `<name>_<level>s`, the same tags, time = the bucket's start, and per numeric field
`<field>_sum`, `<field>_count` and `<field>_max`. A `query_window` whose buckets are a multiple of a level reads
the coarsest such level's rows for the whole buckets in the middle of the window, finer levels' rows towards its
ends, and the raw points of the slivers left at both ends (InfluxDB: all in one request), so the answer is
exactly the raw query's (means to rounding); any other query goes to the raw points unchanged.

How the aggregates stay exact:
- Each bucket's values are kept by point time while it is open, so a point written twice (the writer's spool
  replays at least once) counts once, and a rewrite merges its fields as the stores do.
- A bucket not held in memory that may already have points in the store (one that began before this process,
  or one already let go, e.g. a spool replay after an outage) is first read back from the raw points.
- Raw and rollup points go to the store in one write, so a failed write is retried whole by the writer.

What they cannot know: points written to the same store without this wrapper (another tool, or a monitor from
before rollups) have no rollup rows, and long windows do not show them. Every store `open_store` opens is
wrapped, so every monitor writes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from common.units import NS_PER_S
from monitor.storage.base import FilterValue, Point, Store, WindowQuery, WindowRow, clean_point, numeric_only

LEVELS_S = (12, 288)  # 1 h at 12 s buckets and 24 h at 288 s (the API's 300 buckets) read one row per bucket
Number = int | float
TagsKey = tuple[tuple[str, str], ...]


def rollup_measurement(measurement: str, level_s: int) -> str:
    """Return the name of `measurement`'s rollup at `level_s` seconds."""
    return f"{measurement}_{level_s}s"


@dataclass
class _Bucket:
    """One open bucket of one series at one level: its points' numeric values by time, and their totals."""

    tags: Mapping[str, str]
    values: dict[int, dict[str, Number]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    maxima: dict[str, Number] = field(default_factory=dict)
    stale: bool = False  # a point was rewritten: the totals are summed again from `values`

    def put(self, time_ns: int, numbers: Mapping[str, Number]) -> None:
        """Add a point's values; a point already held (a replay, a rewrite) merges instead of counting twice."""
        held = self.values.get(time_ns)
        if held is not None:
            if any(held.get(k) != v for k, v in numbers.items()):
                self.values[time_ns] = {**held, **numbers}
                self.stale = True
            return
        self.values[time_ns] = dict(numbers)
        self._count(numbers)

    def _count(self, numbers: Mapping[str, Number]) -> None:
        sums, counts, maxima = self.sums, self.counts, self.maxima
        for name, value in numbers.items():
            if name in counts:
                sums[name] += value
                counts[name] += 1
                if value > maxima[name]:
                    maxima[name] = value
            else:
                sums[name], counts[name], maxima[name] = value, 1, value

    def totals(self) -> tuple[dict[str, float], dict[str, int], dict[str, Number]]:
        """Return the sums, counts and maxima of every field."""
        if self.stale:
            self.sums, self.counts, self.maxima, self.stale = {}, {}, {}, False
            for numbers in self.values.values():
                self._count(numbers)
        return self.sums, self.counts, self.maxima


@dataclass
class _Totals:
    """Sum, count and max of one field in one output bucket."""

    total: float = 0.0
    count: int = 0
    largest: Number | None = None

    def add(self, total: float, count: int, largest: Number) -> None:
        self.total += total
        self.count += count
        self.largest = largest if self.largest is None or largest > self.largest else self.largest


def _numbers(fields: Mapping[str, object], wanted: Mapping[str, str]) -> dict[str, Number]:
    return {k: v for k, v in fields.items() if k in wanted and v.__class__ in (int, float)}


class RollupStore:
    """A Store that keeps 12 s and 288 s rollups of some measurements and reads long windows from them.

    Args:
        inner: the store holding raw and rollup points.
        numeric_fields: measurement → {numeric field: "int" or "float"}: what is rolled up.
        levels_s: the bucket lengths kept, in seconds.
        clock_ns: wall-clock nanoseconds (buckets that began before construction are read back once).
    """

    def __init__(
        self,
        inner: Store,
        numeric_fields: Mapping[str, Mapping[str, str]],
        levels_s: Sequence[int] = LEVELS_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.inner = inner
        self.numeric_fields = {m: dict(f) for m, f in numeric_fields.items()}
        self.levels_s = tuple(sorted(levels_s))
        self._created_ns = clock_ns()
        self._buckets: dict[tuple[str, int, TagsKey, int], _Bucket] = {}
        self._newest: dict[tuple[str, int], int] = {}  # newest bucket start seen per (measurement, level)
        self._let_go_until: dict[tuple[str, int], int] = {}  # buckets starting before this were let go
        self._lock = threading.Lock()

    # ---- writing ----------------------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        """Write the points and, for rolled-up measurements, the updated aggregate of every bucket they touch."""
        if not any(p.measurement in self.numeric_fields for p in points):
            self.inner.write(points)
            return
        cleaned = [c for c in map(clean_point, points) if c is not None]  # refuses a bad point before any state
        sampled = [p for p in cleaned if p.measurement in self.numeric_fields]
        with self._lock:
            self._load_missing(sampled)
            touched: dict[tuple[str, int, TagsKey, int], _Bucket] = {}
            for point in sampled:
                numbers = _numbers(point.fields, self.numeric_fields[point.measurement])
                tags_key = tuple(sorted(point.tags.items()))
                for level in self.levels_s:
                    key = (point.measurement, level, tags_key, point.time_ns - point.time_ns % (level * NS_PER_S))
                    bucket = self._buckets.get(key)
                    if bucket is None:
                        bucket = self._buckets[key] = _Bucket(point.tags)
                    bucket.put(point.time_ns, numbers)
                    touched[key] = bucket
            rollups = [self._rollup_point(key, bucket) for key, bucket in touched.items()]
            self._let_go(touched)
        self.inner.write([*cleaned, *(p for p in rollups if p is not None)])

    def _rollup_point(self, key: tuple[str, int, TagsKey, int], bucket: _Bucket) -> Point | None:
        measurement, level, _, start_ns = key
        kinds = self.numeric_fields[measurement]
        sums, counts, maxima = bucket.totals()
        fields: dict[str, Number] = {}
        for name, count in counts.items():
            fields[f"{name}_sum"] = float(sums[name])
            fields[f"{name}_count"] = count
            fields[f"{name}_max"] = int(maxima[name]) if kinds[name] == "int" else float(maxima[name])
        if not fields:
            return None
        return Point(rollup_measurement(measurement, level), dict(bucket.tags), fields, start_ns)

    def _needs_reading(self, measurement: str, level: int, start_ns: int) -> bool:
        """Whether a bucket not held may already have points in the store (then it is read back first)."""
        return start_ns < max(self._created_ns, self._let_go_until.get((measurement, level), 0))

    def _load_missing(self, points: Sequence[Point]) -> None:
        """Read back the raw points of every bucket these points touch that may have some and is not held."""
        spans: dict[str, tuple[int, int]] = {}
        missing: set[tuple[str, int, TagsKey, int]] = set()
        for point in points:
            tags_key = tuple(sorted(point.tags.items()))
            for level in self.levels_s:
                start = point.time_ns - point.time_ns % (level * NS_PER_S)
                key = (point.measurement, level, tags_key, start)
                if key in self._buckets or key in missing or not self._needs_reading(point.measurement, level, start):
                    continue
                missing.add(key)
                low, high = spans.get(point.measurement, (start, start + level * NS_PER_S))
                spans[point.measurement] = (min(low, start), max(high, start + level * NS_PER_S))
        for measurement, (low, high) in spans.items():
            for stored in self._raw_rows(measurement, list(self.numeric_fields[measurement]), low, high, None):
                tags_key = tuple(sorted(stored.tags.items()))
                numbers = {k: v for k, v in stored.max.items() if v is not None}
                for level in self.levels_s:
                    key = (measurement, level, tags_key, stored.time_ns - stored.time_ns % (level * NS_PER_S))
                    if key in missing:
                        bucket = self._buckets.get(key) or self._buckets.setdefault(key, _Bucket(stored.tags))
                        bucket.put(stored.time_ns, numbers)
        for key in missing:  # read and found empty: now held, so not read again
            self._buckets.setdefault(key, _Bucket(dict(key[2])))

    def _let_go(self, touched: Mapping[tuple[str, int, TagsKey, int], _Bucket]) -> None:
        """Keep each series' current and previous bucket per level; remember where the ones let go end."""
        for measurement, level, _, start in touched:
            if start > self._newest.get((measurement, level), -1):
                self._newest[(measurement, level)] = start
        old = [k for k in self._buckets if k[3] < self._newest.get((k[0], k[1]), 0) - k[1] * NS_PER_S]
        for key in old:
            del self._buckets[key]
            measurement, level, _, start = key
            end = start + level * NS_PER_S
            if end > self._let_go_until.get((measurement, level), 0):
                self._let_go_until[(measurement, level)] = end

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
        """Answer from the rollups whose levels divide `bucket_s` (raw points at the ends), else from raw points."""
        kinds = self.numeric_fields.get(measurement, {})
        levels = [lv for lv in self.levels_s if bucket_s and bucket_s > 0 and bucket_s % lv == 0]
        if not levels or not fields or any(f not in kinds for f in fields):
            return self.inner.query_window(measurement, fields, start_ns, end_ns, tags=tags, bucket_s=bucket_s)
        bucket_ns = int(bucket_s or 0) * NS_PER_S
        # The window in pieces: whole buckets of the coarsest level in the middle, whole buckets of finer levels
        # nearer the ends, and the raw points of the slivers left at both ends (the window rarely starts on a
        # bucket boundary). Every level used divides the output bucket, so no piece straddles an output bucket.
        columns = [f"{name}_{part}" for name in fields for part in ("sum", "count", "max")]
        queries: list[WindowQuery] = []
        pieces = [(start_ns, end_ns)]
        for level in reversed(levels):
            level_ns, left = level * NS_PER_S, []
            for low, high in pieces:
                whole_low, whole_high = -(-low // level_ns) * level_ns, high - high % level_ns
                if whole_low >= whole_high:
                    left.append((low, high))
                    continue
                queries.append((rollup_measurement(measurement, level), columns, whole_low, whole_high, tags, None))
                left += [(low, whole_low), (whole_high, high)]
            pieces = [(low, high) for low, high in left if low < high]
        if not queries:  # shorter than the finest rollup bucket
            return self.inner.query_window(measurement, fields, start_ns, end_ns, tags=tags, bucket_s=bucket_s)
        rolled_up = len(queries)
        queries += [(measurement, fields, low, high, tags, None) for low, high in pieces]
        out: dict[TagsKey, dict[int, dict[str, _Totals]]] = {}
        tags_of: dict[TagsKey, Mapping[str, str]] = {}

        def totals(row_tags: Mapping[str, str], time_ns: int) -> dict[str, _Totals]:
            key = tuple(sorted(row_tags.items()))
            tags_of.setdefault(key, row_tags)
            per_bucket = out.setdefault(key, {}).setdefault(time_ns - time_ns % bucket_ns, {})
            return per_bucket

        answers = self._query_windows(queries)
        for row in (row for rows in answers[:rolled_up] for row in rows):
            bucket = totals(row.tags, row.time_ns)
            for name in fields:
                count = row.max.get(f"{name}_count")
                if count:
                    total, most = row.max[f"{name}_sum"], row.max[f"{name}_max"]
                    bucket.setdefault(name, _Totals()).add(float(total or 0.0), int(count), most or 0)
        for raw in (row for rows in answers[rolled_up:] for row in rows):  # the slivers' raw points
            bucket = totals(raw.tags, raw.time_ns)
            for name, value in raw.max.items():
                if value is not None:
                    bucket.setdefault(name, _Totals()).add(value, 1, value)
        rows = []
        for key, buckets in out.items():
            for time_ns, by_field in buckets.items():
                if not by_field:
                    continue
                mean = {f: (by_field[f].total / by_field[f].count) if f in by_field else None for f in fields}
                maxima = {f: self._typed(kinds[f], by_field[f].largest) if f in by_field else None for f in fields}
                counts = {f: by_field[f].count if f in by_field else 0 for f in fields}
                rows.append(WindowRow(tags_of[key], time_ns, mean, maxima, counts))
        return numeric_only(rows)

    def _raw_rows(
        self, measurement: str, fields: list[str], start_ns: int, end_ns: int, tags: Mapping[str, str] | None
    ) -> list[WindowRow]:
        """Return the raw points' numeric `fields` in [start_ns, end_ns), a row per point (values in `max`)."""
        return self.inner.query_window(measurement, fields, start_ns, end_ns, tags=tags)

    def _query_windows(self, queries: Sequence[WindowQuery]) -> list[list[WindowRow]]:
        """Ask the inner store several window queries, in one request where it can (InfluxDB); empty spans: []."""
        asked = [q for q in queries if q[2] < q[3]]
        many = getattr(self.inner, "query_windows", None)
        answers = iter(many(asked) if many is not None else [self.inner.query_window(*q) for q in asked])
        return [next(answers) if q[2] < q[3] else [] for q in queries]

    @staticmethod
    def _typed(kind: str, value: Number | None) -> Number | None:
        if value is None:
            return None
        return int(value) if kind == "int" else float(value)

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
        """Return raw points (see Store.query_points)."""
        return self.inner.query_points(
            measurement, start_ns, end_ns, tags=tags, fields=fields, limit=limit, descending=descending
        )

    def ping(self) -> bool:
        """Return whether the store answers."""
        return self.inner.ping()

    def close(self) -> None:
        """Close the store."""
        self.inner.close()
