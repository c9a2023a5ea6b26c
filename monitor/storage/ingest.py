"""Store each ingested event exactly once: durable before it is acknowledged, then published to listeners.

Idempotent on `event_id`, twice over: an event's point has a time derived from its `event_id`, so the store keeps
a replayed event once; and a bounded set of recently seen ids answers a replayed batch without writing it again.

One batch at a time, so listeners hear the events in the order they happened. A sender posts its spool in order,
one batch at a time, but a monitor that was frozen (SIGSTOP, a long pause) finds, once thawed, the posts the
sender timed out on still waiting in its sockets beside the newer ones that replay them, and serves them on
several threads: side by side, the older batch would claim the first events, the newer one the rest, and the
newer one could publish its part first. The scorer's job tracker then heard a job's steps after its end and took
it for running, holding every clip for minutes; the job summaries left those steps out.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.events import Event
from monitor.storage.schema import event_to_point
from monitor.storage.writer import Writer

log = logging.getLogger(__name__)


class RecentIds:
    """A bounded set of the most recently seen event ids (oldest forgotten first); thread-safe."""

    def __init__(self, max_ids: int = 100_000) -> None:
        """Remember at most `max_ids` ids."""
        self.max_ids = max_ids
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add_new(self, ids: Sequence[str]) -> list[bool]:
        """Record the ids; return for each whether it was new (a repeat within `ids` counts as seen)."""
        fresh = []
        with self._lock:
            for event_id in ids:
                if event_id in self._ids:
                    self._ids.move_to_end(event_id)
                    fresh.append(False)
                    continue
                self._ids[event_id] = None
                fresh.append(True)
            while len(self._ids) > self.max_ids:
                self._ids.popitem(last=False)
        return fresh

    def forget(self, ids: Sequence[str]) -> None:
        """Forget ids recorded by `add_new` whose events were not stored after all, so a retry is stored."""
        with self._lock:
            for event_id in ids:
                self._ids.pop(event_id, None)


@dataclass(frozen=True)
class IngestResult:
    """How many events of a batch were new and how many were seen before."""

    accepted: int
    duplicates: int


class EventIngest:
    """Write new events durably through the writer, publish them, and count what was accepted and repeated."""

    def __init__(
        self,
        writer: Writer,
        on_events: Callable[[Sequence[Event]], None] | None = None,
        sampled_host: str | None = None,
    ) -> None:
        """Write through `writer`; `on_events` hears each batch of new events once it is on disk.

        `sampled_host` is the host name this monitor samples as: events tagged with another name are logged once
        per name (a generator and a monitor on one machine must agree on its name, or its views split).
        """
        self.writer = writer
        self.sampled_host = sampled_host
        self.event_hosts: set[str] = set()
        self.recent_ids = RecentIds()
        self._on_events = on_events
        self._accepted_total = 0
        self._duplicates_total = 0
        self._lock = threading.Lock()
        self._one_batch = threading.Lock()  # see the module's notes

    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Store the events not seen before, durably; raise OSError (nothing counted) if the spool fails."""
        with self._one_batch:
            fresh = self.recent_ids.add_new([e.event_id for e in events])
            new_events = [e for e, is_new in zip(events, fresh, strict=True) if is_new]
            if new_events:
                try:  # on disk before the answer: the generator drops what it was told is stored
                    self.writer.write_durable([event_to_point(e) for e in new_events])
                except OSError:
                    self.recent_ids.forget([e.event_id for e in new_events])
                    raise
                if self._on_events is not None:
                    self._on_events(new_events)
        self._note_hosts(new_events)
        result = IngestResult(len(new_events), len(events) - len(new_events))
        with self._lock:
            self._accepted_total += result.accepted
            self._duplicates_total += result.duplicates
        return result

    def _note_hosts(self, events: Sequence[Event]) -> None:
        for host in {e.host for e in events} - self.event_hosts:
            self.event_hosts.add(host)
            if self.sampled_host is not None and host != self.sampled_host:
                log.warning(
                    "events arrive tagged host %r while this monitor samples as %r: if they come from this machine, "
                    "set the same host name on both (I2V_HOST_NAME), or its jobs and samples will not meet",
                    host,
                    self.sampled_host,
                )

    def counts(self) -> dict[str, int]:
        """Return the ingest counters."""
        with self._lock:
            return {"events_accepted_total": self._accepted_total, "events_duplicate_total": self._duplicates_total}
