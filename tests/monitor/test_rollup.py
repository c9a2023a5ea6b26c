"""Rollups answer long windows exactly as the raw points do, whatever order and repetition the points arrive in."""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.storage import Point, RollupStore, Store, StoreRejected, WindowRow, open_store, rolled_up_fields
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE
from tests.servers import InfluxServer

S = 1_000_000_000
T0 = 1_700_000_000 * S - 7 * S  # not on any bucket boundary
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "influxdb"])
def rolled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RollupStore]:
    """A fresh store as open_store opens it (wrapped), on SQLite or its own database on the session influxd."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/monitor.db"
    else:
        server: InfluxServer = request.getfixturevalue("influxd")
        url = server.store_url(f"rollup_{next(_databases)}_{uuid.uuid4().hex[:6]}")
    store = open_store(url)
    assert isinstance(store, RollupStore)
    yield store
    store.close()


def samples(seconds: int, every_s: int = 1, start_ns: int = T0, seed: int = 1) -> list[Point]:
    """GPU samples for two GPUs and host samples, with a field that comes and goes and a gap."""
    rng = random.Random(seed)
    points = []
    for second in range(0, seconds, every_s):
        if 400 <= second < 500:
            continue  # the monitor was down
        t = start_ns + second * S
        for gpu in ("0", "1"):
            fields: dict[str, object] = {
                "utilization_ratio": rng.random(),
                "memory_used_bytes": rng.randrange(10**9, 8 * 10**10),
                "power_w": 100 + 400 * rng.random(),
                "name": "NVIDIA H100 80GB HBM3",
                "up": True,
            }
            if second % 5 == 0:
                fields["generator_memory_bytes"] = rng.randrange(10**10)
            points.append(Point(GPU_SAMPLE, {"host": "node-a", "gpu": gpu}, fields, t))
        points.append(Point(HOST_SAMPLE, {"host": "node-a"}, {"cpu_ratio": rng.random()}, t))
    return points


def write_in_batches(store: Store, points: list[Point], seed: int = 2) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(points):
        size = rng.choice((1, 3, 50, 700))
        store.write(points[i : i + size])
        i += size


def assert_same(got: list[WindowRow], want: list[WindowRow]) -> None:
    assert [(r.tags, r.time_ns) for r in got] == [(r.tags, r.time_ns) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.max == w.max
        assert g.count == w.count
        assert set(g.mean) == set(w.mean)
        for name, value in w.mean.items():
            assert g.mean[name] == pytest.approx(value, rel=1e-12) if value is not None else g.mean[name] is None


FIELDS = ["utilization_ratio", "memory_used_bytes", "power_w", "generator_memory_bytes"]
WINDOWS = [  # start, end, bucket, what is read
    (T0, T0 + 3000 * S, 288, "_288s"),  # both ends partial
    (T0 + 13 * S, T0 + 2900 * S, 12, "_12s"),
    (T0 - 600 * S, T0 + 4000 * S, 576, "_288s"),  # beyond the data on both sides
    (T0, T0 + 3000 * S, 60, "_12s"),  # a multiple of 12 only
    (T0, T0 + 3000 * S, 7, ""),  # no level divides it: the raw points
    (T0 + 100 * S, T0 + 105 * S, 12, ""),  # shorter than a bucket: the raw points
]


@pytest.mark.parametrize(("start", "end", "bucket_s", "read"), WINDOWS)
def test_a_window_reads_the_same_from_rollups_as_from_raw_points(
    rolled: RollupStore, monkeypatch: pytest.MonkeyPatch, start: int, end: int, bucket_s: int, read: str
) -> None:
    points = samples(3000)
    write_in_batches(rolled, points)
    inner_query = rolled.inner.query_window
    asked: list[str] = []
    monkeypatch.setattr(rolled.inner, "query_window", lambda m, *a, **k: asked.append(m) or inner_query(m, *a, **k))
    if hasattr(rolled.inner, "query_windows"):  # InfluxDB: the rollup and both ends in one request
        many = rolled.inner.query_windows
        monkeypatch.setattr(rolled.inner, "query_windows", lambda qs: asked.extend(q[0] for q in qs) or many(qs))
    for measurement, fields, tags in (
        (GPU_SAMPLE, FIELDS, None),
        (GPU_SAMPLE, ["power_w"], {"gpu": "1"}),
        (HOST_SAMPLE, ["cpu_ratio"], {"host": "node-a"}),
    ):
        asked.clear()
        got = rolled.query_window(measurement, fields, start, end, tags=tags, bucket_s=bucket_s)
        assert asked[0] == measurement + read  # then finer rollups and the raw points towards the ends
        assert set(asked[1:]) <= {measurement, measurement + "_12s"}
        want = inner_query(measurement, fields, start, end, tags=tags, bucket_s=bucket_s)
        assert got
        assert_same(got, want)


def test_rollup_rows_are_written_per_level_with_sums_counts_and_maxima(rolled: RollupStore) -> None:
    rolled.write([Point(HOST_SAMPLE, {"host": "h"}, {"cpu_ratio": v}, T0 + i * S) for i, v in enumerate((0.25, 0.75))])
    start = T0 - T0 % (288 * S)
    [row] = rolled.inner.query_points(f"{HOST_SAMPLE}_288s", 0, 2**62)
    assert row.time_ns == start
    assert row.tags == {"host": "h"}
    assert row.fields == {"cpu_ratio_sum": 1.0, "cpu_ratio_count": 2, "cpu_ratio_max": 0.75}


def test_replays_and_rewrites_count_once_and_merge(rolled: RollupStore) -> None:
    points = samples(1200)
    rolled.write(points)
    rolled.write(points[:300])  # the writer's spool replays at least once
    rewritten = [Point(p.measurement, p.tags, {**p.fields, "power_w": 1.0}, p.time_ns) for p in points[:30]]
    rolled.write(rewritten)  # a rewrite merges its fields, as the stores do
    start, end = T0, T0 + 1200 * S
    for bucket_s in (12, 288):
        got = rolled.query_window(GPU_SAMPLE, FIELDS, start, end, bucket_s=bucket_s)
        assert_same(got, rolled.inner.query_window(GPU_SAMPLE, FIELDS, start, end, bucket_s=bucket_s))


def test_a_new_process_and_a_late_replay_read_the_stored_buckets_back_first(rolled: RollupStore) -> None:
    points = sorted(samples(2400), key=lambda p: p.time_ns)
    cut = len(points) // 2
    rolled.write(points[:cut])
    restarted = RollupStore(rolled.inner, rolled_up_fields())  # its buckets begin before it: read back once
    restarted.write(points[cut:-900])
    restarted.write(points[cut - 500 : cut])  # a spool replay of buckets it already let go
    restarted.write(points[-900:])
    start, end = T0, T0 + 2400 * S
    for bucket_s in (12, 288):
        got = restarted.query_window(GPU_SAMPLE, FIELDS, start, end, bucket_s=bucket_s)
        assert_same(got, rolled.inner.query_window(GPU_SAMPLE, FIELDS, start, end, bucket_s=bucket_s))


def test_a_refused_point_leaves_no_trace_in_the_rollups(rolled: RollupStore) -> None:
    good = Point(HOST_SAMPLE, {"host": "h"}, {"cpu_ratio": 0.5}, T0)
    bad = Point(HOST_SAMPLE, {"host": "bad\nname"}, {"cpu_ratio": 0.9}, T0 + S)
    with pytest.raises(StoreRejected):
        rolled.write([good, bad])
    rolled.write([good])
    [row] = rolled.query_window(HOST_SAMPLE, ["cpu_ratio"], T0 - 300 * S, T0 + 300 * S, bucket_s=288)
    assert row.max == {"cpu_ratio": 0.5}


def test_other_measurements_and_fields_pass_through(rolled: RollupStore) -> None:
    rolled.write([Point("job_event", {"host": "h"}, {"duration_s": 2.0}, T0)])
    rolled.write([Point(GPU_SAMPLE, {"host": "h", "gpu": "0"}, {"power_w": 300.0, "custom": 4.0}, T0)])
    assert [r.mean for r in rolled.query_window("job_event", ["duration_s"], T0 - S, T0 + S, bucket_s=288)] == [
        {"duration_s": 2.0}
    ]
    rows = rolled.query_window(GPU_SAMPLE, ["custom"], T0 - 288 * S, T0 + 288 * S, bucket_s=288)  # not rolled up
    assert [r.max for r in rows] == [{"custom": 4.0}]
    assert not any(math.isnan(v) for r in rows for v in r.mean.values() if v is not None)
