"""The disk spool: order, restart, torn lines, the bound, ack durability, threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from common.spool import Spool


def records(start: int, count: int) -> list[dict]:
    return [{"n": i, "text": f"record {i}"} for i in range(start, start + count)]


def test_peek_returns_oldest_first_and_does_not_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 3))
    spool.append(records(3, 2))
    assert [r["n"] for r in spool.peek(10)] == [0, 1, 2, 3, 4]
    assert [r["n"] for r in spool.peek(2)] == [0, 1]
    assert spool.pending() == 5


def test_ack_removes_exactly_the_peeked_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 5))
    spool.ack(2)
    assert [r["n"] for r in spool.peek(10)] == [2, 3, 4]
    spool.ack(3)
    assert spool.pending() == 0
    assert spool.peek(10) == []
    spool.append(records(5, 1))
    assert spool.peek(10) == records(5, 1)


def test_ack_more_than_pending_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 2))
    with pytest.raises(ValueError, match="only 2 pending"):
        spool.ack(3)


def test_state_survives_a_restart_and_acks_are_durable(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 10))
    spool.ack(4)
    # No close(): the process dies. A new one rebuilds everything from the files.
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.pending() == 6
    assert [r["n"] for r in reopened.peek(100)] == list(range(4, 10))
    reopened.append(records(10, 2))
    reopened.ack(7)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [r["n"] for r in again.peek(100)] == [11]


def test_acks_across_many_segments_survive_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)  # segments of 128 KiB
    big = [{"n": i, "pad": "x" * 1000} for i in range(400)]
    for i in range(0, 400, 10):
        spool.append(big[i : i + 10])
    assert len(list(tmp_path.glob("segment-*"))) > 2
    spool.ack(250)
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.pending() == 150
    assert reopened.peek(1)[0]["n"] == 250
    reopened.ack(150)
    assert list(tmp_path.glob("segment-*")) == []
    assert Spool(tmp_path, max_bytes=1 << 20).pending() == 0


def test_torn_last_line_from_a_crash_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 3))
    segment = next(tmp_path.glob("segment-*"))
    with segment.open("ab") as f:
        f.write(b'{"n": 99, "text": "half wri')  # the crash came mid-write
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert [r["n"] for r in reopened.peek(10)] == [0, 1, 2]
    reopened.append(records(3, 1))  # goes to a new segment, never glued to the torn line
    assert [r["n"] for r in reopened.peek(10)] == [0, 1, 2, 3]
    reopened.ack(4)
    assert reopened.pending() == 0


def test_garbage_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(0, 1))
    segment = next(tmp_path.glob("segment-*"))
    with segment.open("ab") as f:
        f.write(b"not json\n[1, 2]\n" + json.dumps(records(1, 1)[0]).encode() + b"\n")
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert [r["n"] for r in reopened.peek(10)] == [0, 1]


def test_bound_drops_the_oldest_records_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024)  # 8 KiB segments
    appended = 0
    for i in range(200):
        spool.append([{"n": i, "pad": "y" * 500}])
        appended += 1
    assert spool.dropped_total > 0
    assert spool.pending() + spool.dropped_total == appended
    kept = [r["n"] for r in spool.peek(1000)]
    assert kept == list(range(spool.dropped_total, appended))  # the newest survive, in order
    assert spool.size_bytes() <= 64 * 1024 + spool.segment_max_bytes


def test_drop_counts_only_unacked_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=16 * 1024)  # 4 KiB segments
    spool.append([{"n": i, "pad": "z" * 100} for i in range(20)])
    spool.ack(5)
    for i in range(20, 400):
        spool.append([{"n": i, "pad": "z" * 100}])
    assert spool.pending() + spool.dropped_total == 400 - 5


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 22)

    def writer(base: int) -> None:
        for i in range(50):
            spool.append([{"n": base + i}])

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [r["n"] for r in spool.peek(1000)]
    assert sorted(seen) == sorted(k * 1000 + i for k in range(4) for i in range(50))
    for k in range(4):  # each writer's own records keep their order
        mine = [n for n in seen if k * 1000 <= n < (k + 1) * 1000]
        assert mine == sorted(mine)


def test_unicode_and_newlines_in_values_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    record = {"s": 'line1\nline2 \u2028 héllo 🎬 "q" \\', "f": 1.0, "i": 1, "b": True, "none": None}
    spool.append([record])
    got = Spool(tmp_path, max_bytes=1 << 20).peek(1)[0]
    assert got == record
    assert isinstance(got["f"], float)
    assert isinstance(got["i"], int)


def _append_until_the_oldest_segment_is_dropped(spool: Spool, start: int) -> tuple[int, int]:
    """Append one record at a time, as another thread would while the consumer delivers, until the bound drops
    the oldest segment; return the next record number and the number of the first record the drop left."""
    n = start
    while n < start + 10_000:
        oldest = min(spool.directory.glob("segment-*"))
        first_left = json.loads(oldest.read_bytes().splitlines()[-1])["n"] + 1  # read before its file goes
        spool.append([{"n": n, "pad": "w" * 100}])
        n += 1
        if not oldest.exists():
            return n, first_left
    raise AssertionError("the bound never dropped a segment")


def test_a_drop_at_the_bound_between_peek_and_ack_never_acks_undelivered_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=16 * 1024)  # 4 KiB segments of about 30 records
    spool.append([{"n": n, "pad": "w" * 100} for n in range(10)])
    delivered = [r["n"] for r in spool.peek(10)]  # handed to the store or the monitor...
    appended, first_left = _append_until_the_oldest_segment_is_dropped(spool, 10)
    spool.ack(len(delivered))  # ...which took them while the bound dropped the segment they came from

    kept = [r["n"] for r in spool.peek(100_000)]
    assert delivered == list(range(10))
    assert kept == list(range(first_left, appended))  # nothing after the dropped segment acknowledged unsent
    # The delivered ones went with the dropped segment, but they arrived: only the others count as dropped.
    assert spool.dropped_total == first_left - len(delivered)


def test_records_dropped_under_a_failed_delivery_are_counted_at_the_next_peek(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=16 * 1024)
    spool.append([{"n": n, "pad": "w" * 100} for n in range(10)])
    assert len(spool.peek(10)) == 10  # the delivery fails: no ack
    appended, first_left = _append_until_the_oldest_segment_is_dropped(spool, 10)
    kept = [r["n"] for r in spool.peek(100_000)]
    assert kept == list(range(first_left, appended))  # the peeked records went with their segment
    assert spool.dropped_total == first_left
    spool.ack(len(kept))
    assert spool.pending() == 0
    assert len(kept) + spool.dropped_total == appended


def test_a_partial_ack_after_a_drop_acks_only_what_was_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=16 * 1024)
    for n in range(40):  # over one segment: the drop takes part of them
        spool.append([{"n": n, "pad": "w" * 100}])
    peeked = [r["n"] for r in spool.peek(40)]
    appended, first_left = _append_until_the_oldest_segment_is_dropped(spool, 40)
    assert first_left < 35  # the drop took part of what was peeked
    spool.ack(35)  # the monitor took the first 35 (its 400 named the 36th)
    kept = [r["n"] for r in spool.peek(100_000)]
    assert peeked == list(range(40))
    assert kept == list(range(35, appended))  # the refused one and the rest are still there
    assert spool.dropped_total == 0  # everything dropped had been delivered
