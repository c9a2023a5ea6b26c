"""The batching writer between the monitor's producers and its store: it owns batching, retries and the spool.

Telegraf's `running_output` idea, with a disk spool where Telegraf keeps an in-memory ring that overwrites the
oldest points: `write()` appends to a bounded in-memory buffer and returns at once (when the buffer is full
the points go straight to the disk spool, never to the network). A background thread sends batches when
`batch_size` points are waiting or every `flush_interval_s`:

- the spool is replayed first, oldest first, so points reach the store in the order they were written;
- on StoreUnavailable the batch and the buffer go to the spool, and the store is tried again after an
  exponential backoff (`backoff_initial_s` doubling to `backoff_max_s`);
- on StoreRejected (a bad point), or a point the store cannot serialise (ValueError, TypeError,
  OverflowError), the batch is bisected until the bad points are isolated; those are dropped, counted and
  logged (once per distinct error), and the rest is written: a bad point never blocks the spool.

Delivery is at least once: a crash between a store write and the spool's ack replays that batch, which the
store stores once (same series and time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from common.spool import Spool
from monitor.storage.base import Point, Store, StoreRejected, StoreUnavailable

log = logging.getLogger(__name__)

_MAX_LOGGED_REJECTIONS = 100


def encode_point(point: Point) -> dict[str, Any]:
    """Serialise a point as a spool record."""
    return {"m": point.measurement, "t": dict(point.tags), "f": dict(point.fields), "ns": point.time_ns}


def decode_point(record: dict[str, Any]) -> Point:
    """Rebuild a point from a spool record (KeyError/TypeError on a record that is not one)."""
    return Point(record["m"], dict(record["t"]), dict(record["f"]), int(record["ns"]))


@dataclass(frozen=True)
class WriterHealth:
    """The writer's own health, for /status, /metrics and the alert rules (store_up, spool_records)."""

    store_reachable: bool | None  # None until the first attempt
    store_errors_total: int
    points_written_total: int
    points_rejected_total: int
    points_dropped_total: int  # lost: the spool was full, or a spool record was unreadable
    buffer_points: int
    spool_pending_points: int
    spool_bytes: int
    last_write_at: str | None  # RFC 3339 UTC of the last successful store write
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


class Writer:
    """Accept points without blocking; deliver them in batches, through the spool while the store is down."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 1.0,
        buffer_max_points: int = 20_000,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        conform: Callable[[Point], Point] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap `store`, spooling to `spool`; `conform` fixes each point's field types as it is written."""
        self.store = store
        self.spool = spool
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.buffer_max_points = buffer_max_points
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._conform = conform
        self._clock = clock
        self._buffer: deque[Point] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flush_waiters = 0
        self._cycles_started = 0
        self._cycles_done = 0
        self._send_lock = threading.Lock()  # one delivery cycle at a time
        # State below is written by the delivery cycle only.
        self._reachable: bool | None = None
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._errors_total = 0
        self._written_total = 0
        self._rejected_total = 0
        self._unreadable_total = 0
        self._overflow_lost_total = 0
        self._last_write_at: str | None = None
        self._last_error: str | None = None
        self._logged_rejections: set[str] = set()

    # ---- producer side ----------------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        """Queue points for the store; returns at once (a disk append only when the buffer is full)."""
        if self._conform is not None:
            points = [self._conform(p) for p in points]
        overflow: Sequence[Point] = ()
        with self._cond:
            room = self.buffer_max_points - len(self._buffer)
            if len(points) > room:
                points, overflow = points[: max(room, 0)], points[max(room, 0) :]
            self._buffer.extend(points)
            if len(self._buffer) >= self.batch_size:
                self._cond.notify_all()
        if overflow:
            self._to_spool(overflow)

    def write_durable(self, points: Sequence[Point]) -> None:
        """Append points to the disk spool (fsync'd) before returning; the delivery thread sends them on.

        For what a sender was told is stored: ingested events. A point only buffered in memory is lost when
        the monitor is killed, yet its sender (the generator) had already dropped it from its own spool.

        Raises:
            OSError: the spool could not take them (disk full or gone): nothing was accepted.
        """
        if self._conform is not None:
            points = [self._conform(p) for p in points]
        if points:
            self.spool.append([encode_point(p) for p in points])

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Run one delivery cycle now and wait for it; return whether buffer and spool are both empty.

        While the store is down the cycle moves the buffer to the spool (safe on disk) and this returns False.
        """
        if self._thread is None or not self._thread.is_alive():
            self._cycle()
        else:
            with self._cond:
                wanted = self._cycles_started + 1
                self._flush_waiters += 1
                self._cond.notify_all()
                try:
                    self._cond.wait_for(lambda: self._cycles_done >= wanted, timeout=timeout_s)
                finally:
                    self._flush_waiters -= 1
        with self._cond:
            buffered = len(self._buffer)
        return buffered == 0 and self.spool.pending() == 0

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop the thread after a last delivery attempt; whatever is not delivered stays in the spool."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is None or self._thread.is_alive():
            # No thread, or it is stuck on a slow store: keep the buffer on disk rather than lose it.
            self._spool_buffer()

    def health(self) -> WriterHealth:
        """Return the current health figures."""
        with self._cond:
            buffered = len(self._buffer)
        return WriterHealth(
            store_reachable=self._reachable,
            store_errors_total=self._errors_total,
            points_written_total=self._written_total,
            points_rejected_total=self._rejected_total,
            points_dropped_total=self.spool.dropped_total + self._unreadable_total + self._overflow_lost_total,
            buffer_points=buffered,
            spool_pending_points=self.spool.pending(),
            spool_bytes=self.spool.size_bytes(),
            last_write_at=self._last_write_at,
            last_error=self._last_error,
        )

    # ---- delivery thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        next_cycle = self._clock() + self.flush_interval_s
        while True:
            with self._cond:
                while not (self._stopping or self._flush_waiters or len(self._buffer) >= self.batch_size):
                    remaining = next_cycle - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                stopping = self._stopping
                self._cycles_started += 1
            next_cycle = self._clock() + self.flush_interval_s
            try:
                self._cycle()
            except Exception:  # the loop boundary: the thread must outlive any surprise
                log.exception("store writer cycle failed; undelivered points stay buffered or spooled for the next")
            with self._cond:
                self._cycles_done += 1
                self._cond.notify_all()
            if stopping:
                return

    def _cycle(self) -> None:
        """Deliver the spool, then the buffer; while the store is down and backing off, spool the buffer."""
        with self._send_lock:
            if self._reachable is False and self._clock() < self._retry_at:
                self._spool_buffer()
                return
            batch: list[Point] = []
            try:
                self._replay_spool()
                while batch := self._take(self.batch_size):
                    self._send(batch)
            except StoreUnavailable as e:
                self._mark_down(e)  # first, so that whoever sees the points spooled sees the store down
                self._to_spool(batch)  # the batch in flight (empty when the spool replay failed)
                self._spool_buffer()

    def _replay_spool(self) -> None:
        while records := self.spool.peek(self.batch_size):
            points = []
            for record in records:
                try:
                    points.append(decode_point(record))
                except (KeyError, TypeError, ValueError):
                    self._unreadable_total += 1
            self._send(points)
            self.spool.ack(len(records))

    def _send(self, points: list[Point]) -> None:
        """Write a batch; on StoreRejected bisect it, drop the points refused alone, write the rest."""
        if not points:
            return
        try:
            self.store.write(points)
        except (StoreRejected, ValueError, TypeError, OverflowError) as e:
            # StoreRejected: the store refused a point. The others: the store could not even serialise one
            # (text that is not valid Unicode, a number out of range). Either way only the bad point goes;
            # retrying it would block every point behind it in the spool forever.
            error = e if isinstance(e, StoreRejected) else StoreRejected(f"unwritable point: {type(e).__name__}: {e}")
            if len(points) == 1:
                self._reject(points[0], error)
            else:
                middle = len(points) // 2
                self._send(points[:middle])
                self._send(points[middle:])
            return
        self._written_total += len(points)
        self._last_write_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self._reachable is not True:
            self._mark_up()

    def _reject(self, point: Point, error: StoreRejected) -> None:
        self._rejected_total += 1
        message = str(error)
        self._last_error = message
        if message not in self._logged_rejections and len(self._logged_rejections) < _MAX_LOGGED_REJECTIONS:
            self._logged_rejections.add(message)
            log.warning("store rejected a %s point, dropped (%s); %r", point.measurement, message, point)

    def _mark_down(self, error: StoreUnavailable) -> None:
        self._errors_total += 1
        self._last_error = str(error)
        if self._reachable is not False:
            self._down_since = self._clock()
            self._backoff_s = self.backoff_initial_s
            log.warning("store unavailable (%s); spooling points to disk until it answers", error)
        else:
            self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)
        self._reachable = False
        self._retry_at = self._clock() + self._backoff_s

    def _mark_up(self) -> None:
        if self._reachable is False and self._down_since is not None:
            log.warning(
                "store answers again after %.1f s; replaying %d spooled points",
                self._clock() - self._down_since,
                self.spool.pending(),
            )
        self._reachable = True
        self._down_since = None
        self._backoff_s = 0.0

    def _take(self, count: int) -> list[Point]:
        with self._cond:
            return [self._buffer.popleft() for _ in range(min(count, len(self._buffer)))]

    def _spool_buffer(self) -> None:
        while batch := self._take(self.batch_size):
            self._to_spool(batch)

    def _to_spool(self, points: Sequence[Point]) -> None:
        try:
            self.spool.append([encode_point(p) for p in points])
        except OSError as e:  # disk full or gone: nothing else can keep them
            self._overflow_lost_total += len(points)
            self._last_error = f"spool append failed: {e}"
            log.exception("cannot spool %d points: they are lost", len(points))
