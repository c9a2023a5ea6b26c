"""Rebuild the queue's length and running jobs over time from the job state events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common.events import FINAL_STATES, parse_iso

LEAVES_QUEUE = ("running", *FINAL_STATES)


def queue_steps(events: Iterable[dict[str, Any]], start_ms: int, end_ms: int) -> list[dict[str, int]]:
    """Rebuild queue length and running jobs over [start_ms, end_ms] from job state events, as a step series.

    A job waits from its `queued` event to its first `running` or final event, and runs from `running` to its
    final event. Events are dicts as `point_to_event` makes them; a state's time is the event's `ended_at` (the
    generator's final-state event starts when the job was created and lasts until it ended). Each change gives
    one point `{t_ms, pending, running}`; the first point is at `start_ms`, the last at `end_ms`.
    """
    first: dict[str, dict[str, int]] = {}
    for event in events:
        status, job_id = event.get("status"), event.get("job_id")
        if event.get("kind") != "job" or not status or not job_id:
            continue
        at_ms = _ms(event["ended_at"])  # a state's time: a final state's event spans the job and ends with it
        seen = first.setdefault(job_id, {})
        if status not in seen or at_ms < seen[status]:
            seen[status] = at_ms
    changes: list[tuple[int, int, int]] = []  # (t_ms, d_pending, d_running)
    for seen in first.values():
        left = min((seen[s] for s in LEAVES_QUEUE if s in seen), default=None)
        done = min((seen[s] for s in FINAL_STATES if s in seen), default=None)
        if "queued" in seen:
            changes.append((seen["queued"], 1, 0))
            if left is not None:
                changes.append((max(left, seen["queued"]), -1, 0))
        if "running" in seen:
            changes.append((seen["running"], 0, 1))
            if done is not None:
                changes.append((max(done, seen["running"]), 0, -1))
    changes.sort()
    pending = running = 0
    steps = [{"t_ms": start_ms, "pending": 0, "running": 0}]
    for at_ms, d_pending, d_running in changes:
        if at_ms > end_ms:
            break
        pending, running = pending + d_pending, running + d_running
        point = {"t_ms": max(at_ms, start_ms), "pending": pending, "running": running}
        if steps[-1]["t_ms"] == point["t_ms"]:
            steps[-1] = point
        else:
            steps.append(point)
    steps.append({"t_ms": end_ms, "pending": pending, "running": running})
    return steps


def _ms(text: str) -> int:
    return int(parse_iso(text).timestamp() * 1000)
