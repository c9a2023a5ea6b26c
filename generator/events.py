"""Emit the generator's events: a JSON log line each, and delivery in batches to the monitor through a spool."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

from common.events import FINAL_STATES, MAX_TEXT, Event, parse_iso
from common.spool import Spool
from generator.jobs import Job
from generator.validation import ValidationError

log = logging.getLogger("generator.events")
event_log = logging.getLogger("generator.event")

BATCH_SIZE = 200
BACKOFF_MAX_S = 30.0


def iso(epoch_s: float) -> str:
    """Format epoch seconds as RFC 3339 UTC."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_state_event(job: Job, state: str, host: str, gpu: str) -> Event:
    """Build the event for a job entering `state`: a state's time is when it began; an end state spans the job.

    An end state ends at the job's `finished_at` where it has one (a job lost in a crash ended when it was last
    known alive, not when the event is sent), else now.
    """
    began = iso(job.started_at if state == "running" and job.started_at else job.created_at)
    duration_s = 0.0
    if state in FINAL_STATES:
        ended = iso(job.finished_at if job.finished_at is not None else time.time())
        # From the two times as the API shows them (whole microseconds), so that the monitor's end time is the
        # generator's `finished_at` to the microsecond.
        duration_s = max((parse_iso(ended) - parse_iso(began)).total_seconds(), 0.0)
    return Event(
        job_id=job.job_id,
        host=host,
        gpu=gpu,
        kind="job",
        status=state,
        started_at=began,
        duration_s=duration_s,
        params=job.effective.to_dict(),
        requested=job.requested.to_dict() if job.requested != job.effective else {},
        prompt=job.prompt,
        error=job.error,
        suggestion=job.suggestion,
        video_path=job.video_path,
        peak_memory_bytes=job.peak_memory_bytes,
        peak_memory_allocated_bytes=job.peak_memory_allocated_bytes,
        notes=list(job.notes),
    )


def rejection_event(error: ValidationError, prompt: str | None, host: str, gpu: str) -> Event:
    """Build the event for a submission refused at input: its own id, the field and why, no clip."""
    return Event(
        job_id=uuid.uuid4().hex,
        host=host,
        gpu=gpu,
        kind="job",
        status="rejected",
        started_at=iso(time.time()),
        prompt=prompt[:MAX_TEXT] if prompt else None,
        error=f"{error.field}: {error}"[:MAX_TEXT] if error.field else str(error)[:MAX_TEXT],
        suggestion=f"allowed: {error.allowed}"[:MAX_TEXT] if error.allowed is not None else None,
    )


class EventSender:
    """Deliver events to the monitor in order, exactly as emitted, surviving the monitor's absence.

    `emit` never blocks the worker: it logs the event and hands it to a thread that appends it to a disk
    spool and drains the spool in batches to `POST {monitor_url}/monitor/api/events`. A batch is acked only
    after the monitor accepted it, so a monitor or generator restart replays it; the monitor's ingest is
    idempotent on `event_id`, so a replay is stored once. Only the monitor's refusal of one named event drops
    that event (counted); any other refusal keeps the spool and backs off. Without a monitor URL events are only
    logged.
    """

    def __init__(
        self,
        monitor_url: str | None,
        spool_dir: Path,
        *,
        spool_max_bytes: int,
        token: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = f"{monitor_url.rstrip('/')}/monitor/api/events" if monitor_url else None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._inbox: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._spool = Spool(spool_dir, spool_max_bytes) if self._url else None
        self._session = requests.Session()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.delivered_total = 0
        self.failures_total = 0  # delivery attempts the monitor did not take (the events stayed spooled)
        self.refused_total = 0  # events the monitor refused as invalid, dropped one by one
        self._unspoolable_lost_total = 0
        # Emitted and not yet settled (in the spool, sent or counted lost): also those the sender thread has taken
        # off the inbox and is writing, so `queued` and `flush` never report an empty hand mid-write.
        self._unspooled = 0
        self._unspooled_lock = threading.Lock()
        self._spool_failing = False
        self._failing: str | None = None  # why the last attempt failed, logged once until it changes
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        if self._url:
            self._thread.start()

    def emit(self, event: Event) -> None:
        """Log the event (whole, as the record's `event`) and queue it for delivery."""
        event_log.info(
            "job %s %s %s",
            event.job_id,
            event.kind,
            event.stage or event.status or "",
            extra={"event": event.to_dict(), "job_id": event.job_id, "gpu": event.gpu},
        )
        if self._url:
            with self._unspooled_lock:
                self._unspooled += 1
            self._inbox.put(event)
            self._wake.set()

    def pending(self) -> int:
        """Return the events written to the spool and not yet accepted by the monitor."""
        return self._spool.pending() if self._spool else 0

    def spool_fill_ratio(self) -> float:
        """Return the spool's share of its bound in use (0 without a monitor URL)."""
        return self._spool.size_bytes() / self._spool.max_bytes if self._spool else 0.0

    def queued(self) -> int:
        """Return the events emitted and not yet written to the spool (those being written included)."""
        with self._unspooled_lock:
            return self._unspooled

    @property
    def dropped_total(self) -> int:
        """Return the events lost: the spool's oldest dropped at its bound, or unspoolable (disk full) and
        undeliverable at that moment."""
        spool_dropped = self._spool.dropped_total if self._spool else 0
        return spool_dropped + self._unspoolable_lost_total

    def flush(self, timeout_s: float) -> bool:
        """Wait until every emitted event is delivered; return whether that happened within the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queued() == 0 and self.pending() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the sender; undelivered events stay in the spool for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._spool:
            self._spool.close()

    def _drain_inbox(self) -> None:
        taken: list[Event] = []
        while not self._inbox.empty():
            event = self._inbox.get_nowait()
            if event is not None:
                taken.append(event)
        try:
            self._spool_batch([event.to_dict() for event in taken])
        finally:
            with self._unspooled_lock:
                self._unspooled -= len(taken)

    def _spool_batch(self, batch: list[dict]) -> None:
        if not batch or not self._spool:
            return
        try:
            self._spool.append(batch)
        except OSError as error:  # the disk is full or gone: hand the batch over directly if the monitor is there
            self._unspoolable(batch, error)
            return
        if self._spool_failing:
            log.warning("the event spool takes events again")
            self._spool_failing = False

    def _unspoolable(self, batch: list[dict], error: OSError) -> None:
        """Send a batch the spool refused straight to the monitor, after what is spooled; else count it lost."""
        if not self._spool_failing:
            log.error("cannot spool events (%s): sending them directly, dropping what the monitor cannot take", error)
            self._spool_failing = True
        if self._spool is not None and self._spool.pending() == 0:  # nothing older waits: order is kept
            try:
                response = self._session.post(
                    self._url or "", json={"events": batch}, headers=self._headers, timeout=self._timeout_s
                )
                if response.status_code == 200:
                    self.delivered_total += len(batch)
                    return
            except requests.RequestException:
                pass
        self._unspoolable_lost_total += len(batch)

    def _run(self) -> None:
        backoff_s = 0.5
        while not self._stop.is_set():
            try:
                self._drain_inbox()
                delivered = self._deliver_spooled()
            except Exception:  # the loop boundary: the sender must outlive a surprise; spooled events stay
                log.exception("event delivery failed; spooled events stay for the next attempt")
                delivered = False
            if delivered:
                backoff_s = 0.5
                self._wake.wait(timeout=1.0)
            else:
                self._wake.wait(timeout=backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            self._wake.clear()
        try:
            self._drain_inbox()
        except Exception:  # stopping: what cannot be spooled now is lost, and said so
            log.exception("could not spool the last events while stopping")

    def _deliver_spooled(self) -> bool:
        """Send spooled batches until the spool is empty; return False when the monitor did not take one.

        Only an answer that names a bad event may drop anything: the monitor validates a whole batch before
        storing any of it, and its 400 carries the first bad event's `index`. The events before it are sent
        again on their own, the bad one alone is dropped (counted in `refused_total`), and delivery goes on, so
        one malformed event never costs its neighbours. Every other answer (a 404 or 405 from a wrong
        MONITOR_URL or a proxy, a 400 without an index, 401, 5xx, no answer) keeps the whole spool and backs
        off: the events wait until the monitor takes them or the spool's bound drops them, counted.
        """
        assert self._spool is not None
        size = BATCH_SIZE
        while batch := self._spool.peek(size):
            try:
                response = self._session.post(
                    self._url or "", json={"events": batch}, headers=self._headers, timeout=self._timeout_s
                )
            except requests.RequestException as error:
                return self._failed(f"the monitor is unreachable ({error.__class__.__name__})")
            if response.status_code == 413 and len(batch) > 1:  # the monitor (or a proxy) takes smaller bodies
                size = max(1, len(batch) // 2)
                continue
            if response.status_code == 400 and (index := _refused_index(response, len(batch))) is not None:
                if index > 0:  # the events before the bad one are valid: send them alone
                    size = index
                    continue
                self._spool.ack(1)
                self.refused_total += 1
                log.error("the monitor refused an event as invalid, dropped it: %s", response.text[:300])
                size = BATCH_SIZE
                continue
            if response.status_code != 200:
                return self._failed(_refusal_reason(response, self._url or ""))
            self._spool.ack(len(batch))
            self.delivered_total += len(batch)
            size = BATCH_SIZE
            if self._failing is not None:
                log.warning("the monitor takes events again (%s before); spooled events delivered", self._failing)
                self._failing = None
        return True

    def _failed(self, reason: str) -> bool:
        """Count a failed attempt; warn once per distinct reason, not on every retry."""
        self.failures_total += 1
        if reason != self._failing:
            log.warning("%s: events stay in the spool and are retried with back-off", reason)
            self._failing = reason
        return False


def _refusal_reason(response: requests.Response, url: str) -> str:
    """Say why the monitor did not take a batch, and what to check."""
    status = response.status_code
    if status in (404, 405):
        return (
            f"{url} answered {status}: MONITOR_URL must be the monitor's base URL (e.g. http://host:7861), "
            "with nothing in between that changes the path or method"
        )
    if status == 401:
        return f"{url} answered 401: set the generator's INGEST_TOKEN to the monitor's"
    return f"{url} answered {status}"


def _refused_index(response: requests.Response, batch_size: int) -> int | None:
    """Return the index of the event the monitor refused as invalid, or None when the answer names none."""
    try:
        index = response.json()["index"]
    except (ValueError, KeyError, TypeError):  # not JSON, or JSON without an index: not the monitor's refusal
        return None
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < batch_size:
        return index
    return None
