"""One contract for every store: the same cases run against SQLite and a real influxd."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.storage import Point, Store, StoreRejected, open_store
from monitor.storage.sqlite import SqliteStore
from tests.servers import InfluxServer

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a round time, so buckets of 10 s start at T0
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each kind: its own SQLite file, or its own database on the session influxd."""
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/monitor.db")
    else:
        server: InfluxServer = request.getfixturevalue("influxd")
        opened = open_store(server.store_url(f"contract_{next(_databases)}_{uuid.uuid4().hex[:6]}"))
    yield opened
    opened.close()


def all_points(store: Store, measurement: str) -> list[Point]:
    return store.query_points(measurement, 0, 2**62)


AWKWARD = [
    "plain",
    "with space",
    "comma,here",
    "equals=here",
    'double "quotes"',
    "single 'quotes'",
    r"back\slash in the middle",
    "ünïcödé 🎬 日本",
    "all of, them = \"mixed\" 'up'",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_names_and_tag_values_round_trip(store: Store, text: str) -> None:
    point = Point(f"m {text}", {"host": text, f"k {text}": "v"}, {f"f {text}": 1.5, "s": text}, T0)
    store.write([point])
    assert all_points(store, point.measurement) == [point]


@pytest.mark.parametrize(
    "text",
    [
        *AWKWARD,
        "line1\nline2\r\nline3",
        "ends with a backslash \\",
        "\\\\ two backslashes \\\\",
        '\\"escaped-looking quote\\"',
        "",
        "x" * 5000,
    ],
)
def test_string_fields_round_trip_exactly(store: Store, text: str) -> None:
    point = Point("events", {"host": "h"}, {"prompt": text, "n": 1}, T0)
    store.write([point])
    assert all_points(store, "events")[0].fields["prompt"] == text


def test_int_float_and_bool_keep_their_types(store: Store) -> None:
    fields = {
        "i": 3,
        "big": 2**62,
        "neg": -7,
        "f": 2.0,
        "tiny": 1e-300,
        "pi": 3.141592653589793,
        "b": True,
        "nb": False,
    }
    store.write([Point("types", {"host": "h"}, fields, T0)])
    got = all_points(store, "types")[0].fields
    assert got == fields
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in fields.items()}


def test_none_and_non_finite_fields_and_empty_tags_are_left_out(store: Store) -> None:
    store.write([Point("sparse", {"host": "h", "gpu": ""}, {"a": 1.0, "b": None, "c": float("nan")}, T0)])
    assert all_points(store, "sparse") == [Point("sparse", {"host": "h"}, {"a": 1.0}, T0)]


def test_a_point_with_no_field_left_is_skipped(store: Store) -> None:
    store.write([Point("empty", {"host": "h"}, {"a": None}, T0), Point("empty", {"host": "h"}, {"a": 1}, T0 + S)])
    assert [p.time_ns for p in all_points(store, "empty")] == [T0 + S]


def test_writing_the_same_point_twice_stores_it_once(store: Store) -> None:
    point = Point("idem", {"host": "h", "gpu": "0"}, {"v": 1.0, "job_id": "j1"}, T0)
    store.write([point])
    store.write([point, point])
    assert all_points(store, "idem") == [point]


def test_a_rewrite_merges_fields_like_influxdb(store: Store) -> None:
    store.write([Point("merge", {"host": "h"}, {"a": 1.0, "b": 1.0}, T0)])
    store.write([Point("merge", {"host": "h"}, {"b": 2.0, "c": "x"}, T0)])
    assert all_points(store, "merge")[0].fields == {"a": 1.0, "b": 2.0, "c": "x"}


def test_same_time_different_tags_are_different_points(store: Store) -> None:
    store.write([Point("series", {"host": "h", "gpu": g}, {"v": float(i)}, T0) for i, g in enumerate("012")])
    assert len(all_points(store, "series")) == 3


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (Point("m", {"host": "ends\\"}, {"v": 1}, T0), "backslash"),
        (Point("m", {"host": "a\nb"}, {"v": 1}, T0), "line break"),
        (Point("m", {"host": "h"}, {"time": 1}, T0), "time"),
        (Point("m", {"host": "h"}, {"host": "x"}, T0), "host"),
        (Point("m", {}, {"v": 2**64}, T0), "64 bits"),
    ],
)
def test_points_no_influxdb_version_reads_back_the_same_are_rejected(store: Store, point: Point, reason: str) -> None:
    with pytest.raises(StoreRejected, match=reason):
        store.write([point])


def test_a_field_type_change_is_rejected_by_influxdb_style_stores(store: Store) -> None:
    store.write([Point("typed", {"host": "h"}, {"v": 1}, T0)])
    if isinstance(getattr(store, "inner", store), SqliteStore):  # open_store wraps the backend (RollupStore)
        pytest.skip("SQLite keeps each point's own types; monitor.storage.schema.conform keeps types stable for both")
    with pytest.raises(StoreRejected, match="conflict"):
        store.write([Point("typed", {"host": "h"}, {"v": 1.5}, T0 + S)])


def gpu_points() -> list[Point]:
    points = []
    for host, gpu in (("a", "0"), ("a", "1"), ("b", "0")):
        for second in range(30):
            value = second + (100 if gpu == "1" else 0) + (1000 if host == "b" else 0)
            fields = {"util": float(value), "mem": value * 10, "up": True, "name": "H100"}
            points.append(Point("gpu", {"host": host, "gpu": gpu}, fields, T0 + second * S))
    return points


def test_query_window_filters_by_host_and_gpu_and_time(store: Store) -> None:
    store.write(gpu_points())
    rows = store.query_window("gpu", ["util"], T0 + 5 * S, T0 + 10 * S, tags={"host": "a", "gpu": "1"})
    assert [r.tags for r in rows] == [{"host": "a", "gpu": "1"}] * 5
    assert [r.time_ns for r in rows] == [T0 + s * S for s in range(5, 10)]  # start included, end excluded
    assert [r.max["util"] for r in rows] == [105.0, 106.0, 107.0, 108.0, 109.0]
    by_host = store.query_window("gpu", ["util"], T0, T0 + 30 * S, tags={"host": "a"})
    assert {tuple(sorted(r.tags.items())) for r in by_host} == {
        (("gpu", "0"), ("host", "a")),
        (("gpu", "1"), ("host", "a")),
    }


def test_query_window_buckets_mean_and_max_per_tag_set(store: Store) -> None:
    store.write(gpu_points())
    rows = store.query_window("gpu", ["util", "mem", "up", "name"], T0, T0 + 30 * S, bucket_s=10)
    assert len(rows) == 9  # 3 tag sets x 3 buckets
    first = rows[0]
    assert first.tags == {"host": "a", "gpu": "0"}
    assert first.time_ns == T0
    assert first.mean == {"util": pytest.approx(4.5), "mem": pytest.approx(45.0)}  # bool and string skipped
    assert first.max == {"util": 9.0, "mem": 90}
    assert first.count == {"util": 10, "mem": 10}
    assert first.samples == 10
    assert isinstance(first.max["mem"], int)
    assert isinstance(first.max["util"], float)
    assert isinstance(first.mean["mem"], float)
    last = next(r for r in reversed(rows) if r.tags == {"host": "b", "gpu": "0"})
    assert last.time_ns == T0 + 20 * S
    assert last.max["util"] == 1029.0


def test_query_window_leaves_out_empty_buckets_and_aligns_to_the_epoch(store: Store) -> None:
    store.write(
        [
            Point("sparse", {"host": "h"}, {"v": 1.0}, T0 + 3 * S),
            Point("sparse", {"host": "h"}, {"v": 3.0}, T0 + 45 * S),
        ]
    )
    rows = store.query_window("sparse", ["v"], T0 + 1 * S, T0 + 60 * S, bucket_s=20)
    assert [(r.time_ns, r.mean["v"]) for r in rows] == [(T0, 1.0), (T0 + 40 * S, 3.0)]


def test_query_window_counts_the_values_each_bucket_aggregates(store: Store) -> None:
    # One sample in the first bucket, three in the second, one of them without `b`: an analyst must be able to
    # tell a bucket of one sample from a full one, and a field reported less often than the others.
    store.write(
        [
            Point("counted", {"host": "h"}, {"a": 1.0, "b": 10}, T0 + 2 * S),
            Point("counted", {"host": "h"}, {"a": 2.0, "b": 20}, T0 + 11 * S),
            Point("counted", {"host": "h"}, {"a": 4.0}, T0 + 12 * S),
            Point("counted", {"host": "h"}, {"a": 6.0, "b": 30}, T0 + 13 * S),
            Point("counted", {"host": "h"}, {"a": 8.0}, T0 + 25 * S),
        ]
    )
    rows = store.query_window("counted", ["a", "b"], T0, T0 + 30 * S, bucket_s=10)
    assert [(r.time_ns, dict(r.count), r.samples) for r in rows] == [
        (T0, {"a": 1, "b": 1}, 1),
        (T0 + 10 * S, {"a": 3, "b": 2}, 3),
        (T0 + 20 * S, {"a": 1, "b": 0}, 1),  # a field with no value in the bucket counts 0
    ]
    assert rows[2].mean["b"] is None
    assert rows[1].mean == {"a": pytest.approx(4.0), "b": pytest.approx(25.0)}
    raw = store.query_window("counted", ["a", "b"], T0 + 11 * S, T0 + 13 * S)
    assert [dict(r.count) for r in raw] == [{"a": 1, "b": 1}, {"a": 1, "b": 0}]  # a row per point


def test_query_window_of_unknown_things_is_empty(store: Store) -> None:
    assert store.query_window("nothing", ["v"], T0, T0 + S, bucket_s=1) == []
    store.write([Point("some", {"host": "h"}, {"v": 1.0}, T0)])
    assert store.query_window("some", ["absent"], T0, T0 + S) == []


def test_query_points_filters_by_field_orders_and_limits(store: Store) -> None:
    points = [
        Point("job_event", {"host": "h", "kind": "stage"}, {"job_id": f"job-{i % 2}", "step": i}, T0 + i * S)
        for i in range(10)
    ]
    store.write(points)
    mine = store.query_points("job_event", T0, T0 + 10 * S, fields={"job_id": "job-1"})
    assert [p.fields["step"] for p in mine] == [1, 3, 5, 7, 9]
    assert [p.fields["step"] for p in store.query_points("job_event", T0, T0 + 10 * S, limit=3)] == [0, 1, 2]
    newest = store.query_points("job_event", T0, T0 + 10 * S, limit=2, descending=True)
    assert [p.fields["step"] for p in newest] == [9, 8]
    assert store.query_points("job_event", T0, T0 + 10 * S, tags={"host": "other"}) == []


def test_filter_names_must_be_identifiers(store: Store) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        store.query_points("m", T0, T0 + S, tags={"host') OR 1=1 --": "x"})


def test_ping_answers(store: Store) -> None:
    assert store.ping() is True
