"""Keep the outputs folder and the job database bounded: remove the oldest finished jobs past an age or a size.

A job is kept whole or not at all: retention deletes its folder (`outputs/<id>/`: the input image and the clip)
and then its row, so the API answers 404 for it afterwards, never a job whose clip is gone. Only finished jobs
(succeeded, failed, cancelled) are ever removed, oldest finished first; a queued or running job is never
touched. The folder goes before the row: a crash in between leaves a row whose folder is missing, which the
next sweep removes, never a folder that nothing points to.

Sizes are measured once, when a sweep first sees a job finished, and kept in the job's row, so a sweep reads
an index rather than walking the whole folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.jobs import JobBook

log = logging.getLogger(__name__)

BATCH_JOBS = 1000  # rows read and removed per round, so a sweep never holds the book's lock for long


@dataclass
class SweepResult:
    """What one sweep removed, and the measured bytes the finished jobs' outputs take afterwards."""

    removed_for_age: int = 0
    removed_for_size: int = 0
    outputs_bytes: int = 0


def folder_bytes(folder: Path) -> int:
    """Return the bytes of the files directly and below `folder` (0 when it does not exist)."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += folder_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


class Retention:
    """Remove finished jobs older than `max_age_s`, then the oldest while outputs exceed `max_bytes`.

    Either limit may be None (off). `start` runs a sweep at once and then every `interval_s` on its own
    thread; `sweep` runs one now.
    """

    def __init__(
        self,
        book: JobBook,
        outputs: Path,
        *,
        max_age_s: float | None,
        max_bytes: int | None,
        interval_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.outputs = outputs
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.interval_s = interval_s
        self._clock = clock
        self.removed_total = {"age": 0, "size": 0}
        self.outputs_bytes = 0
        self._failing: str | None = None  # a deletion error, logged once until a sweep succeeds
        self._sweep_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        """Sweep now and then every `interval_s`, on a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a sweep in progress finishes its current batch)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def sweep(self) -> SweepResult:
        """Measure newly finished jobs, then remove what the limits say must go."""
        with self._sweep_lock:
            result = SweepResult()
            self._measure_new()
            if self.max_age_s is not None:
                cutoff = self._clock() - self.max_age_s
                while not self._stop.is_set() and (ids := self.book.finished_before(cutoff, BATCH_JOBS)):
                    removed = self._remove(ids)
                    result.removed_for_age += removed
                    if removed < len(ids):  # some could not be deleted: try again next sweep
                        break
            total = self.book.output_bytes()
            if self.max_bytes is not None:
                while not self._stop.is_set() and total > self.max_bytes:
                    oldest = self.book.oldest_finished(BATCH_JOBS)
                    chosen = []
                    for job_id, size in oldest:
                        if total <= self.max_bytes:
                            break
                        chosen.append(job_id)
                        total -= size
                    removed = self._remove(chosen)
                    result.removed_for_size += removed
                    total = self.book.output_bytes()
                    if not chosen or removed < len(chosen):
                        break
            self.removed_total["age"] += result.removed_for_age
            self.removed_total["size"] += result.removed_for_size
            self.outputs_bytes = result.outputs_bytes = total
            if result.removed_for_age or result.removed_for_size:
                log.info(
                    "retention removed %d job(s) older than the age limit and %d for the size limit; outputs "
                    "now take %d bytes",
                    result.removed_for_age,
                    result.removed_for_size,
                    total,
                )
            return result

    def _measure_new(self) -> None:
        while not self._stop.is_set() and (ids := self.book.unmeasured(BATCH_JOBS)):
            self.book.set_output_bytes([(job_id, folder_bytes(self._folder(job_id))) for job_id in ids])

    def _folder(self, job_id: str) -> Path:
        # Ids are the generator's own (uuid4 hex); refuse anything that could name a path outside outputs/.
        if not job_id or Path(job_id).name != job_id or job_id in (".", ".."):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.outputs / job_id

    def _remove(self, job_ids: list[str]) -> int:
        """Delete each job's folder, then the rows of those whose folder is gone; return how many went."""
        gone = []
        for job_id in job_ids:
            try:
                shutil.rmtree(self._folder(job_id))
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as error:
                if self._failing is None:
                    log.warning("retention cannot delete %s (%s): the job is kept and retried", job_id, error)
                self._failing = str(error)
                continue
            gone.append(job_id)
        if len(gone) == len(job_ids) and self._failing is not None:
            log.warning("retention deletes again")
            self._failing = None
        return self.book.forget(gone)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # the loop boundary: retention must outlive a surprise; nothing is lost by waiting
                log.exception("retention sweep failed; retrying in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)
