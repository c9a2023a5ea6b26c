"""Read a measurement from any store in time-ordered pages: every point once, in constant memory.

`Store.query_points` returns a list; a report over a year of jobs must not hold that list. `iter_points`
reads it a time window at a time, windows half-open and back to back, so each point is read once, and the
points of one instant always share a page. The window adapts to aim at `page_size` points: it grows where
points are sparse and shrinks where they are dense; a window that meets the limit (`OVERFILL` pages) ends
at its last instant, which the next window reads again whole. (Windows rather than only "the next N after
the last time": InfluxDB applies LIMIT per series, so with N series a limit-paged read fetches up to N
pages to keep one.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from common.units import NS_PER_S
from monitor.storage.base import FilterValue, Point, Store

PAGE_SIZE = 1000  # points: a page of job summaries is about 3 MB of Python objects
OVERFILL = 2  # a window may hold up to this many pages before it is read again smaller
FIRST_WINDOW_NS = 60 * NS_PER_S
MAX_GROWTH = 4


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
    """Yield the points in [start_ns, end_ns) matching the filters, oldest first, about one page in memory.

    Raises:
        StoreUnavailable, StoreRejected: as `Store.query_points`, from whichever page met the problem.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    limit = page_size * OVERFILL
    window = FIRST_WINDOW_NS
    cursor = start_ns
    while cursor < end_ns:
        upper = min(cursor + window, end_ns)
        page = store.query_points(measurement, cursor, upper, tags=tags, fields=fields, limit=limit)
        if len(page) >= limit:
            # Cut short: the stores return the oldest `limit` points, so every instant before the last one
            # is whole; the last instant is read again with the next window.
            last = page[-1].time_ns
            if last == cursor:  # more than a limit of points at one instant
                limit *= 2
                del page
                continue
            page = [p for p in page if p.time_ns < last]
            upper = last
        span = upper - cursor
        yield from page
        cursor = upper
        window = max(min(span * page_size // max(len(page), 1), span * MAX_GROWTH), 1)
        del page  # before the next page is read: one page in memory, not two
