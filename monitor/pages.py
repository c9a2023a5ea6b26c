"""Read a measurement from any store in time-ordered pages: every point once, in constant memory.

`Store.query_points` returns a list; a report over a year of jobs must not hold that list. `iter_points`
asks for `page_size` points at a time from a moving cursor. Points are identified by (time, tag set), as the
stores identify them, so the points that share the last time of a page are remembered and skipped when the
next page starts at that time (two jobs may end in the same nanosecond on two GPUs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from monitor.store.base import FilterValue, Point, Store

PAGE_SIZE = 5000


def _key(point: Point) -> tuple[int, tuple[tuple[str, str], ...]]:
    return point.time_ns, tuple(sorted(point.tags.items()))


def iter_points(
    store: Store,
    measurement: str,
    start_ns: int,
    end_ns: int,
    *,
    tags: Mapping[str, str] | None = None,
    fields: Mapping[str, FilterValue] | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[Point]:
    """Yield the points in [start_ns, end_ns) matching the filters, oldest first, one page in memory at a time.

    Raises:
        StoreUnavailable, StoreRejected: as `Store.query_points`, from whichever page met the problem.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    cursor = start_ns
    seen_at_cursor: set[tuple[int, tuple[tuple[str, str], ...]]] = set()
    while cursor < end_ns:
        page = store.query_points(measurement, cursor, end_ns, tags=tags, fields=fields, limit=page_size)
        for point in page:
            if point.time_ns != cursor or _key(point) not in seen_at_cursor:
                yield point
        if len(page) < page_size:
            return
        last = page[-1].time_ns
        at_last = {_key(p) for p in page if p.time_ns == last}
        if last == cursor:
            # A whole page shares one instant: remember it all and ask for a larger page from the same time.
            seen_at_cursor |= at_last
            page_size *= 2
        else:
            seen_at_cursor = at_last
            cursor = last
