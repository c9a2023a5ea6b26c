"""Who hears what: parts publish on typed topics, the composition root subscribes the listeners.

A producer never knows its listeners: it is handed one `publish` callable per thing it reports (`on_snapshot`,
`on_result`, ...), and `monitor/compose.py` connects those to a topic here. A listener that raises is logged once
while it keeps failing and never stops the producer or the other listeners: whatever was published is already
stored by then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from common.events import Event
    from monitor.collection.sampler import Snapshot
    from monitor.quality.scorer import QualityResult
    from monitor.storage.base import Point

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Topic(Generic[T]):
    """A named kind of news and the type of what is published on it."""

    name: str


EVENTS: Topic[Sequence[Event]] = Topic("events")  # each batch of newly ingested events
SNAPSHOT: Topic[Snapshot] = Topic("snapshot")  # every sampler tick
QUALITY_RESULT: Topic[QualityResult] = Topic("quality_result")  # every clip scored or found unscorable
JOB_SUMMARY: Topic[Point] = Topic("job_summary")  # every finished job's summary, once written


class Bus:
    """Deliver what is published on a topic to its listeners, in the order they subscribed."""

    def __init__(self) -> None:
        """Start with no listeners."""
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._failing: set[int] = set()
        self._lock = threading.Lock()

    def subscribe(self, topic: Topic[T], listener: Callable[[T], None]) -> None:
        """Call `listener` with everything later published on `topic`."""
        with self._lock:
            self._listeners.setdefault(topic.name, []).append(listener)

    def publisher(self, topic: Topic[T]) -> Callable[[T], None]:
        """Return a callable that publishes on `topic`: what a producer is handed as its hook."""
        return lambda payload: self.publish(topic, payload)

    def publish(self, topic: Topic[T], payload: T) -> None:
        """Hand `payload` to every listener of `topic`; a failing listener is logged once and skipped."""
        with self._lock:
            listeners = list(self._listeners.get(topic.name, ()))
        for listener in listeners:
            try:
                listener(payload)
            except Exception:  # a listener's boundary: the producer and the other listeners go on
                if id(listener) not in self._failing:
                    self._failing.add(id(listener))
                    log.exception("%s listener %r failed (logged once while it keeps failing)", topic.name, listener)
            else:
                self._failing.discard(id(listener))
