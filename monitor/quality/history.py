"""What the store remembers of quality across restarts: a job's latest result, the CLIP baseline, the backlog.

The scorer keeps recent results in memory; every result is also a `quality` point. After a monitor restart
the scorer reads back, each read bounded:

- `latest(job_id)`: the job's newest point within `lookback_s` (served, and rated, as before the restart);
- `recent_cosines(n)`: the raw CLIP cosines of this host's last `n` scored jobs (one per job: a rating writes
  the job's point again), to restore the rolling baseline, from at most `BASELINE_READ_FACTOR`·n points;
- `unscored(window_s, limit)`: this host's jobs that succeeded in the window and have no quality point (the
  clips that finished while the monitor was down or waited in its queue when it stopped), oldest first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.quality.record import MEASUREMENT, QualityResult, from_point
from monitor.storage.base import Store
from monitor.storage.pages import iter_points
from monitor.storage.schema import JOB_EVENT

S = 1_000_000_000
LOOKBACK_S = 30 * 86_400
BASELINE_READ_FACTOR = 4
BACKLOG_READ = 1000  # succeeded events read at most, newest first
CLOCK_SKEW_S = 60  # events carry the generator's clock


@dataclass(frozen=True)
class FinishedClip:
    """A succeeded job's clip as its `succeeded` event named it."""

    job_id: str
    gpu: str
    video_path: str
    prompt: str | None


class QualityHistory:
    """Read quality results back from the store (see the module's notes); every read is bounded."""

    def __init__(
        self,
        store: Store,
        host_name: str,
        *,
        lookback_s: float = LOOKBACK_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._host = host_name
        self._lookback_ns = int(lookback_s * S)
        self._clock_ns = clock_ns

    def latest(self, job_id: str) -> QualityResult | None:
        """Return the job's newest stored result, or None when there is none within the lookback."""
        end_ns = self._clock_ns() + CLOCK_SKEW_S * S
        points = self._store.query_points(
            MEASUREMENT, end_ns - self._lookback_ns, end_ns, fields={"job_id": job_id}, limit=1, descending=True
        )
        return from_point(points[0]) if points else None

    def recent_cosines(self, count: int) -> list[float]:
        """Return the raw CLIP cosines of this host's last `count` scored jobs, oldest first."""
        end_ns = self._clock_ns() + CLOCK_SKEW_S * S
        points = self._store.query_points(
            MEASUREMENT,
            end_ns - self._lookback_ns,
            end_ns,
            tags={"host": self._host},
            limit=BASELINE_READ_FACTOR * count,
            descending=True,
        )
        newest: dict[str, float | None] = {}
        for point in points:
            job_id = point.fields.get("job_id")
            if isinstance(job_id, str) and job_id not in newest:
                newest[job_id] = from_point(point).clip_cos
        cosines = [c for c in newest.values() if c is not None][:count]
        return cosines[::-1]

    def unscored(self, window_s: float, limit: int, skip: Callable[[str], bool]) -> list[FinishedClip]:
        """Return up to `limit` of this host's clips that succeeded in the window with no quality point, oldest first.

        `skip(job_id)` leaves out jobs the caller already holds.
        """
        end_ns = self._clock_ns() + CLOCK_SKEW_S * S
        tags = {"host": self._host, "kind": "job", "status": "succeeded"}
        events = self._store.query_points(
            JOB_EVENT, end_ns - int(window_s * S), end_ns, tags=tags, limit=BACKLOG_READ, descending=True
        )
        clips: dict[str, tuple[int, FinishedClip]] = {}
        for point in events:
            f = point.fields
            job_id, video = f.get("job_id"), f.get("video_path")
            if isinstance(job_id, str) and isinstance(video, str) and video and not skip(job_id):
                prompt = f.get("prompt") if isinstance(f.get("prompt"), str) else None
                clips[job_id] = (point.time_ns, FinishedClip(job_id, point.tags.get("gpu", ""), video, prompt))  # type: ignore[arg-type]
        if not clips:
            return []
        # Quality is written after the job ended: reading from the oldest candidate's end covers every answer.
        oldest_ns = min(t for t, _ in clips.values())
        for point in iter_points(self._store, MEASUREMENT, oldest_ns, end_ns, tags={"host": self._host}):
            clips.pop(point.fields.get("job_id"), None)  # type: ignore[arg-type]
        return [clip for _, clip in sorted(clips.values(), key=lambda tc: tc[0])][:limit]
