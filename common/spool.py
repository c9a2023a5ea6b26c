"""An append-only, bounded, crash-safe disk spool of JSON records, replayed oldest first.

Both processes use it: the generator spools events while the monitor is down, the monitor spools points while
its store is down. Records live as JSON lines in numbered segment files (`segment-<n>.jsonl`); a cursor file
(`cursor.json`) names the first record not yet acknowledged. Every append and every ack is fsync'd before it
returns, so what `append` accepted survives a crash or a SIGKILL.

Delivery is at least once: a consumer peeks, delivers, then acks. A crash between delivery and ack redelivers
those records after a restart. Both consumers are idempotent (the monitor's ingest dedupes on `event_id`; a
store stores a point with the same series and time once), so a redelivery never counts twice. `ack(n)`
acknowledges the first n records the last `peek` returned, not the n records now at the head: another
thread's append may drop the oldest segment at the bound while the consumer delivers, and the records that
then move up to the head were never delivered. One consumer per spool; appends may come from any thread.

A failed append (a full disk: ENOSPC) raises OSError and leaves no trace: its partial bytes are cut off, so
the records before and after it read back intact.

The bound: when the segment files exceed `max_bytes`, whole segments are dropped, oldest first, and the
records they held counted in `dropped_total` (logged once per episode: the first drop, then a summary when
the spool drains). Records dropped while a peek had handed them out are counted once their fate is known:
not at all when the ack covers them (they were delivered), as dropped when the consumer peeks again without
having acked them. The newest segment is never dropped, so the bound can be exceeded by at most one segment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl$")
_CURSOR = "cursor.json"
_MIN_SEGMENT_BYTES = 4096


@dataclass
class _Segment:
    """One segment file and the byte span of each complete, parseable record in it."""

    seq: int
    path: Path
    first_id: int  # this process's number for the segment's first record (ids count up across segments)
    size_bytes: int = 0
    starts: array[int] = field(default_factory=lambda: array("q"))
    ends: array[int] = field(default_factory=lambda: array("q"))


def _fsync_dir(directory: Path) -> None:
    """Make a file creation, rename or deletion in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A FIFO of JSON-serialisable dicts on disk, bounded by `max_bytes`, safe across threads and restarts."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        """Open (or create) the spool in `directory`, rebuilding its state from the files there."""
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_max_bytes = max(_MIN_SEGMENT_BYTES, max_bytes // 8)
        self.dropped_total = 0
        self._episode_dropped = 0
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._head_index = 0  # records of the first segment already acknowledged
        # Record ids number every record this process has seen, so an ack can name what a peek handed out
        # even after the bound dropped segments under it.
        self._next_id = 0  # the id the next appended record gets
        self._ack_from = 0  # the id the next ack counts from: where the last peek started, moved on by acks
        self._peek_end = 0  # one past the last id the last peek returned: [_ack_from, _peek_end) is in flight
        self._limbo = (0, 0)  # ids dropped while in flight: delivered if acked, else counted at the next peek
        # The segment this process appends to: never one found on disk, whose last line may be torn.
        self._writable: _Segment | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- public API ---------------------------------------------------------------------------------------

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records durably (fsync'd before returning), dropping the oldest ones past the bound."""
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=True) + "\n" for r in records).encode()
        with self._lock:
            segment = self._writable_segment(len(data))
            offset = segment.size_bytes
            # Opened per append (microseconds) so no file handle outlives a call or needs closing.
            try:
                with segment.path.open("ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                self._undo_partial_write(segment)
                raise
            for line in data.splitlines(keepends=True):
                segment.starts.append(offset)
                offset += len(line)
                segment.ends.append(offset)
            segment.size_bytes = offset
            self._next_id += len(records)
            self._enforce_bound()

    def peek(self, max_records: int) -> list[dict[str, Any]]:
        """Return up to `max_records` of the oldest unacknowledged records, without removing them."""
        out: list[dict[str, Any]] = []
        with self._lock:
            self._count_limbo_lost()  # what the bound dropped under the last peek was not acked: it is lost
            self._ack_from = self._head_id()
            index = self._head_index
            for segment in self._segments:
                if len(out) >= max_records:
                    break
                take = min(len(segment.starts) - index, max_records - len(out))
                if take > 0:
                    out.extend(self._read(segment, index, take))
                index = 0
            self._peek_end = self._ack_from + len(out)
        return out

    def ack(self, count: int) -> None:
        """Remove durably the first `count` records the last `peek` returned (those the bound dropped since are
        already gone; the records after them stay)."""
        if count <= 0:
            return
        with self._lock:
            end = self._ack_from + count
            if end > self._next_id:
                available = self._next_id - max(self._ack_from, self._head_id())
                raise ValueError(f"cannot ack {count} records, only {available} pending")
            self._ack_from = end
            limbo_start, limbo_end = self._limbo
            self._limbo = (max(limbo_start, end), limbo_end)  # those before `end` were delivered after all
            if end > self._head_id():
                self._remove_head(end - self._head_id())
            if self._pending_locked() == 0:
                self._end_drop_episode()

    def pending(self) -> int:
        """Return how many records are waiting to be acknowledged."""
        with self._lock:
            return self._pending_locked()

    def size_bytes(self) -> int:
        """Return the bytes the segment files take on disk (what the bound applies to)."""
        with self._lock:
            return sum(s.size_bytes for s in self._segments)

    def close(self) -> None:
        """Release the spool (it holds no open file between calls); the files stay for the next process."""

    # ---- internals ----------------------------------------------------------------------------------------

    def _pending_locked(self) -> int:
        return sum(len(s.starts) for s in self._segments) - self._head_index

    def _head_id(self) -> int:
        """Return the id of the oldest unacknowledged record (the next id to come when there is none)."""
        if not self._segments:
            return self._next_id
        return self._segments[0].first_id + self._head_index

    def _remove_head(self, count: int) -> None:
        """Remove the `count` oldest records durably: whole segments go, the cursor moves past the rest."""
        index = self._head_index + count
        while self._segments and index >= len(self._segments[0].starts):
            segment = self._segments.pop(0)
            index -= len(segment.starts)
            if segment is self._writable:
                self._writable = None  # the next append starts a fresh segment
            # The cursor moves past the segment before the file goes: a crash in between leaves a file the
            # next load deletes, never a cursor pointing into a deleted file.
            self._write_cursor(segment.seq + 1, 0)
            segment.path.unlink(missing_ok=True)
        self._head_index = index
        if self._segments:
            head = self._segments[0]
            self._write_cursor(head.seq, head.starts[index])

    def _count_limbo_lost(self) -> None:
        """Count as dropped the records dropped under a peek and not acked before the next peek."""
        start, end = self._limbo
        if end > start:
            self._count_dropped(end - start)
        self._limbo = (0, 0)

    def _count_dropped(self, records: int) -> None:
        self.dropped_total += records
        if self._episode_dropped == 0:
            log.warning(
                "spool %s is full (%d bytes): dropping the oldest records; further drops are summarised when it drains",
                self.directory,
                self.max_bytes,
            )
        self._episode_dropped += records

    def _load(self) -> None:
        """Rebuild segments and cursor from disk: skip torn or unparseable lines, delete consumed segments."""
        cursor_seq, cursor_offset = self._read_cursor()
        found = sorted((int(m.group(1)), p) for p in self.directory.iterdir() if (m := _SEGMENT_RE.match(p.name)))
        for seq, path in found:
            if seq < cursor_seq:
                path.unlink(missing_ok=True)
                continue
            segment = _Segment(seq, path, first_id=self._next_id)
            self._scan(segment)
            if not segment.starts:  # empty, or only torn lines: nothing to replay
                path.unlink(missing_ok=True)
                continue
            self._segments.append(segment)
            self._next_id += len(segment.starts)
        self._next_seq = max([cursor_seq, *(s.seq + 1 for s in self._segments)])
        if self._segments and self._segments[0].seq == cursor_seq:
            starts = self._segments[0].starts
            self._head_index = sum(1 for start in starts if start < cursor_offset)
        self._ack_from = self._peek_end = self._head_id()
        if self._pending_locked():
            log.info("spool %s: %d records pending from a previous run", self.directory, self._pending_locked())

    def _scan(self, segment: _Segment) -> None:
        """Index the complete JSON lines of a segment; a torn last line (no newline) or garbage is skipped."""
        data = segment.path.read_bytes()
        segment.size_bytes = len(data)
        offset = 0
        skipped = 0
        for line in data.splitlines(keepends=True):
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                skipped += 1  # torn by a crash mid-write: never acknowledged to the caller
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(record, dict):
                segment.starts.append(start)
                segment.ends.append(offset)
            else:
                skipped += 1
        if skipped:
            log.warning("spool %s: skipped %d torn or unreadable line(s)", segment.path, skipped)

    def _read(self, segment: _Segment, index: int, count: int) -> list[dict[str, Any]]:
        """Read `count` indexed records of a segment starting at record `index`."""
        first, last = segment.starts[index], segment.ends[index + count - 1]
        with segment.path.open("rb") as f:
            f.seek(first)
            blob = f.read(last - first)
        records = []
        for i in range(index, index + count):
            start, end = segment.starts[i] - first, segment.ends[i] - first
            records.append(json.loads(blob[start:end]))
        return records

    def _writable_segment(self, incoming_bytes: int) -> _Segment:
        """Return the segment to append to, starting a new one when there is none or it is full."""
        current = self._writable
        if current is not None and (
            current.size_bytes == 0 or current.size_bytes + incoming_bytes <= self.segment_max_bytes
        ):
            return current
        segment = _Segment(
            self._next_seq, self.directory / f"segment-{self._next_seq:012d}.jsonl", first_id=self._next_id
        )
        self._next_seq += 1
        segment.path.touch()
        _fsync_dir(self.directory)
        self._segments.append(segment)
        self._writable = segment
        return segment

    def _undo_partial_write(self, segment: _Segment) -> None:
        """Cut a failed append's partial bytes (disk full) so the next record starts where the index says."""
        try:
            os.truncate(segment.path, segment.size_bytes)
        except OSError:
            # Cannot even truncate: leave that file to the next start's scan (which skips a torn line) and
            # append to a fresh segment from now on.
            self._writable = None
            log.warning("spool %s: a failed append left a torn line in %s", self.directory, segment.path.name)

    def _enforce_bound(self) -> None:
        """Drop the oldest segments while the files exceed `max_bytes`; the newest one always stays."""
        while len(self._segments) > 1 and sum(s.size_bytes for s in self._segments) > self.max_bytes:
            first, end = self._head_id(), self._segments[0].first_id + len(self._segments[0].starts)
            segment = self._segments.pop(0)
            self._head_index = 0
            self._write_cursor(segment.seq + 1, 0)
            segment.path.unlink(missing_ok=True)
            # Records a peek handed out may be being delivered right now: their fate waits for the ack.
            in_flight_end = min(end, max(first, self._peek_end))
            if in_flight_end > first:
                limbo_start, limbo_end = self._limbo
                self._limbo = (first if limbo_end <= limbo_start else limbo_start, in_flight_end)
            if end > in_flight_end:
                self._count_dropped(end - in_flight_end)

    def _end_drop_episode(self) -> None:
        if self._episode_dropped:
            log.warning(
                "spool %s drained; %d records were dropped while it was full",
                self.directory,
                self._episode_dropped,
            )
            self._episode_dropped = 0

    def _read_cursor(self) -> tuple[int, int]:
        path = self.directory / _CURSOR
        try:
            data = json.loads(path.read_text())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError):
            log.warning("spool %s: unreadable cursor, replaying from the oldest segment", self.directory)
            return 0, 0

    def _write_cursor(self, seq: int, offset: int) -> None:
        """Replace the cursor file atomically and durably (write, fsync, rename, fsync the directory)."""
        tmp = self.directory / (_CURSOR + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps({"segment": seq, "offset": offset}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / _CURSOR)
        _fsync_dir(self.directory)
