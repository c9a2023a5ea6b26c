"""When a finished clip is scored: between jobs on the device scoring uses, or after a bounded wait beside them.

Scoring a clip while the generator denoises slows the job down (on an H200, the backlog scored after a monitor
restart made the running job 1.8% slower), so each clip waits for a gap between jobs. The rule, one decision
per clip, taken by the scorer's worker:

- A clip waits while a job runs on the device scoring uses (`device`: the GPU CLIP runs on, "0" by default;
  "cpu" when scoring has no GPU, so that a generator running on the CPU is not slowed either), as the ingested
  events say. A job's `running` event or any of its stage events marks it running there; its end event clears
  it; a job silent for `SILENT_AFTER_S` counts as gone (its end event was lost, it must not block forever).
- Once the device has been idle for `SETTLE_S`, the clip is scored, and CLIP may take the GPU. The settle time
  covers the next queued job's `running` event, which the generator sends within about a second of the
  previous job's end, possibly in the next batch.
- A clip that has waited `max_wait_s` is overdue: while jobs run it is scored anyway, one overdue clip per job
  that ends (or per `max_wait_s` during one long job), so a generator that never idles still gets every clip
  scored within a bounded delay, at the pace it makes them. Beside a running job CLIP stays on the CPU, where the
  scorer's thread runs in the idle class (common/cpu_priority.py) on cores the generator leaves spare:
  on an H200, CLIP on the GPU beside back-to-back 512p/16/10 jobs cost each job about 0.15 s of its 2.0 s of
  denoising (7%), since two processes' kernels take turns on the card. The pace keeps a backlog (the clips that
  waited while the monitor was down) from being scored in one burst during a job; it drains between jobs.
- Beside a job on a GPU, the scoring works only while that job is inside its denoising loop, where the generator
  waits on the GPU: it pauses (`wait_for_denoising`, called between frames) while the job encodes its inputs,
  decodes or exports, which are the generator's CPU work. On the H200, CLIP on the CPU beside a job left its
  denoising as fast as with the monitor paused (1.002) but took 0.03-0.2 s more of its 0.7 s outside the loop:
  the idle class keeps the scorer off a core the generator wants, most likely not off that core's other
  hyperthread or the memory bandwidth they share. A pause lasts at most `max_pause_s` (a lost event must not
  stall scoring).
- For `startup_quiet_s` after the scorer starts, nothing is scored between jobs: the generator replays what it
  spooled while the monitor was down (retrying at most every 30 s), and a job running now may be in it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.events import FINAL_STATES, STARTUP_JOB_ID, Event

SETTLE_S = 2.0
SILENT_AFTER_S = 600.0  # a denoising step is seconds at most: ten minutes without an event is no running job
STARTUP_QUIET_S = 40.0  # above the generator's longest retry back-off (30 s)
MAX_WAIT_S = 300.0
MAX_TRACKED_JOBS = 64
MAX_PAUSE_S = 30.0  # over 5x the longest stretch outside the loop seen on an H200 (1024p/32: 5.4 s)


@dataclass(frozen=True)
class Decision:
    """Whether to score the oldest waiting clip now, whether CLIP may use the GPU, and why (in words)."""

    run: bool
    allow_gpu: bool
    reason: str
    wait_s: float = 0.0  # when not run: the longest the decision can stay the same without a new event
    overdue: bool = False  # scored after waiting the bound, while jobs may run
    beside: bool = False  # scored while a job runs on a GPU: pause while that job is outside its denoising loop


class GpuActivity:
    """Follow which jobs run on the scoring device from the ingested events, and decide when a clip is scored.

    Args:
        device: the `gpu` tag of the device scoring uses ("0" for CLIP on cuda:0, "cpu" without a GPU).
        max_wait_s: the longest a clip waits for a gap between jobs before it is scored beside a running job.
        startup_quiet_s: how long after `start()` no clip is scored between jobs (see the module's notes).
        max_pause_s: the longest one `wait_for_denoising` waits.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        device: str,
        *,
        max_wait_s: float = MAX_WAIT_S,
        startup_quiet_s: float = STARTUP_QUIET_S,
        settle_s: float = SETTLE_S,
        silent_after_s: float = SILENT_AFTER_S,
        max_pause_s: float = MAX_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.max_wait_s = max_wait_s
        self.max_pause_s = max_pause_s
        self._startup_quiet_s = startup_quiet_s
        self._settle_s = settle_s
        self._silent_after_s = silent_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._heard = threading.Condition(self._lock)  # notified when a job enters or leaves its loop or ends
        self._running: dict[str, float] = {}  # job id → when it was last heard, on this device
        self._denoising: set[str] = set()  # running jobs inside their denoising loop, as their last event says
        self._released = False  # no more pauses: the scorer is stopping
        self._idle_since = -float("inf")  # when the last job here ended
        self._quiet_until = -float("inf")
        self._ends = 0  # jobs ended here since the start
        self._overdue_at = (-1, -float("inf"))  # (jobs ended, time) when the last overdue clip was let through

    def start(self) -> None:
        """Begin the start-up quiet period (the scorer's start)."""
        with self._lock:
            self._quiet_until = self._clock() + self._startup_quiet_s
            self._released = False

    def hear(self, events: Sequence[Event]) -> bool:
        """Follow a batch of ingested events; return whether a job started or ended on the device."""
        changed = False
        now = self._clock()
        with self._lock:
            for event in events:
                if event.gpu != self.device or event.job_id == STARTUP_JOB_ID:
                    continue
                if event.kind == "job" and event.status in FINAL_STATES:
                    self._denoising.discard(event.job_id)
                    if self._running.pop(event.job_id, None) is not None:
                        self._idle_since = now
                        self._ends += 1
                        changed = True
                elif event.kind == "stage" or event.status == "running":
                    changed |= event.job_id not in self._running
                    self._running[event.job_id] = now
                    if _inside_denoising(event):
                        self._denoising.add(event.job_id)
                    else:
                        self._denoising.discard(event.job_id)
                    while len(self._running) > MAX_TRACKED_JOBS:  # a bound for lost end events
                        self._denoising.discard(oldest := next(iter(self._running)))
                        del self._running[oldest]
            self._heard.notify_all()
        return changed

    def wait_for_denoising(self) -> float:
        """Block while a job on this GPU is outside its denoising loop (at most `max_pause_s`); return the seconds.

        Returns at once on the CPU device (a CPU generator's loop is CPU work too), between jobs, and once
        `release()` was called.
        """
        if self.device == "cpu":
            return 0.0
        started = self._clock()
        deadline = time.monotonic() + self.max_pause_s  # the condition waits in real seconds, whatever `clock` is
        waited = False
        with self._lock:
            while not self._released and not all(job in self._denoising for job in self._live(self._clock())):
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                # A silent job stops counting after silent_after_s: wake then at the latest.
                self._heard.wait(min(left_s, self._silent_after_s))
                waited = True
        return max(0.0, self._clock() - started) if waited else 0.0

    def release(self) -> None:
        """End every pause now and for good (the scorer is stopping)."""
        with self._lock:
            self._released = True
            self._heard.notify_all()

    def running(self) -> list[str]:
        """Return the jobs running on the device now, as the events say."""
        with self._lock:
            return self._live(self._clock())

    def decide(self, waited_s: float) -> Decision:
        """Decide for a clip that has waited `waited_s` (the oldest waiting one)."""
        now = self._clock()
        with self._lock:
            running = self._live(now)
            ready_at = max(self._quiet_until, self._idle_since + self._settle_s)
            oldest_seen = min((self._running[j] for j in running), default=now)
        if waited_s >= self.max_wait_s:
            return self._overdue(running, now)
        left_s = self.max_wait_s - waited_s
        if running:
            reason = (
                f"job {', '.join(running)} running on {self._where()}: scored when it ends, or beside the next "
                f"job within {left_s:.0f} s"
            )
            silent_in_s = oldest_seen + self._silent_after_s - now
            return Decision(run=False, allow_gpu=False, reason=reason, wait_s=max(0.0, min(left_s, silent_in_s)))
        if now < ready_at:
            what = "the monitor started" if ready_at == self._quiet_until else "a job ended"
            reason = f"{what} on {self._where()} moments ago: waiting {ready_at - now:.0f} s for the next job to show"
            return Decision(run=False, allow_gpu=False, reason=reason, wait_s=min(left_s, ready_at - now))
        return Decision(run=True, allow_gpu=True, reason=f"scored between jobs ({self._where()} idle)")

    def _overdue(self, running: list[str], now: float) -> Decision:
        """Decide for an overdue clip: at once between jobs, else one per job ended (or per max_wait_s)."""
        waited = f"waited {self.max_wait_s:g} s for a gap between jobs on {self._where()}"
        with self._lock:
            ends_then, at = self._overdue_at
            due_at = at + self.max_wait_s
            if running and self._ends == ends_then and now < due_at:
                reason = f"{waited}: scored when job {', '.join(running)} ends (one overdue clip per job)"
                return Decision(run=False, allow_gpu=False, reason=reason, wait_s=due_at - now, overdue=True)
        if running:
            reason = f"{waited}: scored beside job {', '.join(running)}, CLIP on the CPU"
            # On the CPU device the generator's loop is CPU work too: nothing to step aside for.
            return Decision(run=True, allow_gpu=False, reason=reason, overdue=True, beside=self.device != "cpu")
        return Decision(run=True, allow_gpu=True, reason=f"{waited}: scored between jobs", overdue=True)

    def took(self, decision: Decision) -> None:
        """Note that a clip was scored on `decision` (an overdue one uses up the pace's allowance)."""
        if decision.overdue and decision.run:
            with self._lock:
                self._overdue_at = (self._ends, self._clock())

    def _live(self, now: float) -> list[str]:
        return [job for job, seen in self._running.items() if now - seen < self._silent_after_s]

    def _where(self) -> str:
        return "the CPU" if self.device == "cpu" else f"GPU {self.device}"


def _inside_denoising(event: Event) -> bool:
    """Whether a job's event says it is inside its denoising loop: a step ended and more follow."""
    return (
        event.stage == "denoising_step"
        and event.step is not None
        and event.total_steps is not None
        and event.step < event.total_steps
    )
