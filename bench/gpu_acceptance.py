"""GPU acceptance: the whole stack driven through its command lines and HTTP, checked against issue 14's figures.

    python -m bench.gpu_acceptance --out bench/results/gpu_acceptance.json   # one H200: about 7 minutes
    python -m bench.gpu_acceptance --device cpu --quick --out /tmp/acc.json  # the tiny model: proves the script

As an operator would: `python -m generator --model full` and `python -m monitor` (SQLite, sampling every 0.5 s,
a full-size random-weight ViT-L/14 CLIP folder made by bench/clip_folder.py scoring every clip), jobs submitted
and followed over HTTP, nothing imported from either process. In order:

1. mixed sizes (256-1024 px, 16-32 frames, 10-25 steps), starting with a small job in the fresh generator, then
   a big one, then the small one again: its peak must be within 5% of the fresh process's.
2. after those ten measured jobs, the monitor's `/predict` for sizes it has not seen, then those jobs: peak
   within 5%, time within 10%.
3. a foreign process holding most of the card (a torch allocation in `python -m bench.foreign_memory`): a job
   that fits with its margin must run undegraded; one that does not must be degraded or refused, never OOM.
4. overhead, jobs of one size back to back:
   - the monitor stopped in the middle of a job, and a few jobs run without it: the restart mid-run. The jobs
     run while it was down must reach it, and their clips be scored, once it is back; the quality of clips
     scored before must still be served.
   - then at 0.5 s and at 2 s sampling (CLIP scoring every clip, and a dashboard-like poller,
     bench/dashboard_poller.py): the first job after the start kept apart (it runs while the monitor catches up
     on the backlog), then pairs of jobs, one with the monitor running and one with it paused (SIGSTOP: no CPU,
     no GPU work, no requests; the poller paused too), in ABBA order so that a slow drift of the card cancels.
     Pausing instead of restarting costs no CLIP load per switch, so twice the jobs fit in the same minutes, and
     each job is compared with its neighbour: the ratio is the geometric mean of the pairs' ratios. Clips wait
     at most 30 s for a gap between jobs (`--quality-max-wait 30`, not the default 300 s), so during these
     back-to-back jobs they are scored beside the running ones (one per job that ends), and that cost is in the
     figure.
5. every small job's peak against the fresh process's, whatever ran before it; every clip scored with CLIP,
   waiting for the scorer's backlog to drain once the jobs stop.

Every check is judged against its target and the JSON (`--out`) is rewritten after every job, so a run cut short
keeps what it measured. A time budget (`--budget-s`, 560 s: the whole run fits one 10-minute device call) shrinks
or skips what would not fit, and says so. The Markdown table for the README is printed at the end. Exit status:
0 when every check passed (a quick or CPU run: when none it judged failed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import requests

from bench.acceptance_record import Check, Record, at_most, holds, unjudged, within
from bench.dashboard_poller import DashboardPoller
from bench.harness import ROOT, MonitorProcess, free_port, machine
from bench.spread import abba, describe, paired_difference, paired_ratio, ratio_of_medians
from bench.stack import PARTS, GeneratorProcess, Jobs, Shape, run_s

log = logging.getLogger("gpu_acceptance")

HOST = "acceptance-host"
PEAK_TOLERANCE = 0.05  # a job's peak, whatever ran before it, against the same job in a fresh process
PREDICT_MEMORY_TOLERANCE = 0.05
PREDICT_TIME_TOLERANCE = 0.10
OVERHEAD_LIMIT = 1.005  # generation time with the monitor / without
MIN_MEASURED_JOBS = 10
MIN_JOBS_PER_MODE = 10
QUALITY_MAX_WAIT_S = 30  # not the default 300 s: clips are scored beside the overhead jobs, and charged to them
# The closing checks (the scorer's backlog draining) and stopping everything: 20 s on the H200 at eee02d4.
FINAL_RESERVE_S = 60.0
INTERVALS_S = (0.5, 2.0)  # the sampling periods whose overhead is measured
STOPPED = "stopped"
FITS = "admission under a foreign process: the job that fits runs undegraded"
MISSES = "admission under a foreign process: the job that does not fit is degraded or refused"


@dataclass(frozen=True)
class Plan:
    """What one run does: the model, the CLIP, and the jobs of each phase."""

    model: str
    clip: str
    gpu: bool
    small: Shape
    big: Shape
    train: tuple[Shape, ...]  # what the predictor learns from; begins small (fresh process), big, small
    unseen: tuple[Shape, ...]  # sizes absent from `train`, predicted before they run
    overhead: Shape
    pairs: int  # per sampling period: jobs with the monitor running, each beside one with it paused
    down_jobs: int  # jobs run with the monitor stopped outright (its restart mid-run)


SMALL, BIG = Shape(512, 16, 10), Shape(1024, 32, 10)
H200 = Plan(
    model="full",
    clip="vit-l-14",
    gpu=True,
    small=SMALL,
    big=BIG,
    train=(
        SMALL, BIG, SMALL, Shape(256, 16, 25), Shape(768, 16, 15), Shape(512, 32, 20), Shape(256, 32, 10),
        Shape(768, 24, 10), Shape(1024, 16, 10), Shape(512, 24, 15),
    ),
    unseen=(Shape(768, 32, 12), Shape(1024, 24, 10), Shape(512, 20, 18), Shape(256, 28, 22)),
    overhead=SMALL,
    pairs=12,
    down_jobs=4,
)  # fmt: skip
H200_QUICK = replace(
    H200, train=(SMALL, BIG, SMALL, Shape(256, 16, 10), Shape(768, 16, 10)), unseen=(Shape(512, 24, 10),), pairs=3,
    down_jobs=2,
)  # fmt: skip
CPU_SMALL = Shape(256, 8, 10)
CPU = Plan(
    model="tiny",
    clip="tiny",
    gpu=False,
    small=CPU_SMALL,
    big=Shape(256, 16, 10),
    train=(CPU_SMALL, Shape(256, 16, 10)),
    unseen=(Shape(256, 12, 10),),
    overhead=CPU_SMALL,
    pairs=2,
    down_jobs=2,
)


class Budget:
    """The run's time budget: what is left, and whether a phase of a given cost still fits."""

    def __init__(self, total_s: float) -> None:
        """Start the clock."""
        self.total_s = total_s
        self.started = time.monotonic()
        self.deadline = self.started + total_s

    def elapsed_s(self) -> float:
        """Return the seconds since the start."""
        return time.monotonic() - self.started

    def left_s(self) -> float:
        """Return the seconds left."""
        return self.deadline - time.monotonic()

    def allows(self, cost_s: float, reserve_s: float = FINAL_RESERVE_S) -> bool:
        """Tell whether `cost_s` more still leaves `reserve_s` for the closing checks."""
        return self.left_s() - reserve_s >= cost_s


def wait_until(condition: Callable[[], Any], deadline_s: float, pause_s: float = 0.5) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `deadline_s` passes (None)."""
    end = time.monotonic() + max(deadline_s, 0.0)
    while True:
        try:
            value = condition()
        except requests.RequestException:
            value = None
        if value:
            return value
        if time.monotonic() >= end:
            return None
        time.sleep(pause_s)


class Acceptance:
    """One acceptance run: the processes it started, what it measured, and its record."""

    def __init__(self, args: argparse.Namespace, plan: Plan, record: Record, work: Path) -> None:
        """Prepare the run; nothing starts before `run()`."""
        self.args, self.plan, self.record, self.work = args, plan, record, work
        self.budget = Budget(args.budget_s)
        self.env = {"I2V_HOST_NAME": HOST, **({} if plan.gpu else {"CUDA_VISIBLE_DEVICES": ""})}
        self.monitor_port = free_port()
        self.monitor_url = f"http://127.0.0.1:{self.monitor_port}"
        self.generator = GeneratorProcess(
            work / "generator", model=plan.model, monitor_url=self.monitor_url, env=self.env
        )
        self.jobs = Jobs(self.generator.url)
        self.monitor: MonitorProcess | None = None
        self.poller: DashboardPoller | None = None
        self.foreign: subprocess.Popen[str] | None = None
        self.clip_dir = work / "clip"
        self.gpu_tag = "0" if plan.gpu else "cpu"
        self.monitor_start_s: list[float] = []
        self.train_views: list[dict[str, Any]] = []
        self.quality_before: dict[str, dict[str, Any]] = {}
        self.down_jobs: list[str] = []
        self.phases_done: list[str] = []

    # ---- processes ---------------------------------------------------------------------------------------

    def start_monitor(self, interval_s: float) -> None:
        """Start `python -m monitor` on the run's port with its store, the CLIP folder and the generator's outputs."""
        args = [
            "--generator-url", self.generator.url, "--outputs", str(self.generator.outputs),
            "--clip-model", str(self.clip_dir), "--host-name", HOST,
            "--quality-max-wait", str(QUALITY_MAX_WAIT_S),
        ]  # fmt: skip
        monitor = MonitorProcess(
            self.work / "monitor", interval_s=interval_s, port=self.monitor_port, args=args, **self.env
        )
        started = time.monotonic()
        self.monitor = monitor.start(deadline_s=180)
        self.monitor_start_s.append(round(time.monotonic() - started, 2))
        log.info("monitor up at %s s sampling in %.1f s", interval_s, self.monitor_start_s[-1])

    def stop_monitor(self, timeout_s: float = 30.0) -> None:
        """Stop the poller and the monitor (SIGTERM: it flushes its writer)."""
        self.stop_poller()
        if self.monitor is not None:
            self.monitor.stop(timeout_s)
            self.monitor = None
            log.info("monitor stopped")

    def start_poller(self) -> None:
        """Open the dashboard, so to speak."""
        self.poller = DashboardPoller(self.monitor_url, host=HOST).start()

    def stop_poller(self) -> dict[str, Any] | None:
        """Close it; return its request latencies."""
        if self.poller is None:
            return None
        stats = self.poller.stop()
        self.poller = None
        return stats

    def monitor_get(self, path: str, **params: Any) -> requests.Response:
        """GET a monitor route under /monitor/api."""
        return requests.get(f"{self.monitor_url}/monitor/api/{path}", params=params, timeout=30)

    def predict(self, shape: Shape) -> dict[str, Any]:
        """Return the monitor's prediction for a job of `shape` on the generator's GPU."""
        answer = self.monitor_get(
            "predict", resolution=shape.resolution, frames=shape.frames, steps=shape.steps, host=HOST,
            gpu=self.gpu_tag,
        )  # fmt: skip
        answer.raise_for_status()
        return answer.json()

    def close(self) -> None:
        """Stop everything this run started, newest first; past the budget, kill rather than wait."""
        if self.foreign is not None:
            self.release_foreign()
        grace_s = min(max(self.budget.left_s() + 20, 3.0), 30.0)
        self.stop_monitor(grace_s)
        self.generator.stop(grace_s)

    # ---- budget --------------------------------------------------------------------------------------------

    def job_time_s(self, shape: Shape) -> float:
        """Return the expected seconds of one job of `shape`: the median measured so far, else a guess."""
        measured = [
            j["run_s"]
            for j in self.record.data["jobs"]
            if j["run_s"] is not None and j["effective"] == {**j["effective"], **_params(shape)}
        ]
        if measured:
            # A job's wall time around its run: on the H200 the overhead phase's took 2.9 s for a run_s of 2.75 s.
            return statistics.median(measured) + 0.2
        return 30.0 if self.plan.gpu else 60.0

    def overhead_cost_s(self) -> float:
        """Return the expected seconds of the overhead phase: what the phases before it must leave."""
        job_s = self.job_time_s(self.plan.overhead)
        start_s = max(self.monitor_start_s or [10.0]) + 3.0  # a start, and the stop before it
        per_interval = start_s + (1 + 2 * self.plan.pairs) * job_s
        return self.plan.down_jobs * job_s + len(INTERVALS_S) * per_interval

    def skip(self, name: str, target: str, reason: str) -> None:
        """Record a check that the budget left out."""
        self.record.check(holds(name, None, "skipped", reason, target))

    # ---- phases --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run the phases in order; one that fails is recorded and the next still runs while the generator lives."""
        for name, phase in (
            ("setup", self.setup),
            ("mixed", self.mixed),
            ("predict", self.predict_unseen),
            ("foreign", self.foreign_process),
            ("overhead", self.overhead),
            ("final", self.final),
        ):
            entry = self.record.phase(name)
            started = time.monotonic()
            log.info("phase %s (%.0f s into the run, %.0f s left)", name, self.budget.elapsed_s(), self.budget.left_s())
            try:
                phase(entry)
            except Exception as error:  # the run goes on: a phase's failure is a finding, recorded with its trace
                log.exception("phase %s failed", name)
                entry["error"] = f"{error.__class__.__name__}: {error}"
                entry["traceback"] = traceback.format_exc()[-4000:]
                self.record.check(holds(f"phase {name} ran to its end", False, "no", entry["error"]))
                if name == "setup" or self.generator.process is None or self.generator.process.poll() is not None:
                    break
            else:
                self.phases_done.append(name)
            finally:
                entry["elapsed_s"] = round(time.monotonic() - started, 1)
                self.record.save()

    def setup(self, entry: dict[str, Any]) -> None:
        """Make the CLIP folder while the generator loads; then start the monitor at 0.5 s."""
        clip_log = (self.work / "clip_folder.log").open("ab")
        clip = subprocess.Popen(
            [sys.executable, "-m", "bench.clip_folder", "--model", self.plan.clip, "--out", str(self.clip_dir)],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=clip_log, stderr=clip_log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        started = time.monotonic()
        try:
            self.generator.start(deadline_s=min(300.0, self.budget.left_s()))
            entry["generator_ready_s"] = round(time.monotonic() - started, 2)
            if clip.wait(timeout=max(self.budget.left_s() - 60, 10)) != 0:
                raise RuntimeError(f"bench.clip_folder failed (see {self.work / 'clip_folder.log'})")
        finally:
            if clip.poll() is None:
                clip.kill()
                clip.wait()
            clip_log.close()
        entry["clip_folder_s"] = round(time.monotonic() - started, 2)
        self.start_monitor(0.5)
        entry["monitor_start_s"] = self.monitor_start_s[-1]
        entry["generator_health"] = self.generator.health()

    def mixed(self, entry: dict[str, Any]) -> None:
        """Run the mixed sizes: small in the fresh process, big, small again, and the rest."""
        plan = self.plan
        labels = ["small, fresh process", "big", "small after big"] + ["mixed"] * (len(plan.train) - 3)
        views = self.jobs.run(
            plan.train,
            deadline=self.budget.deadline,
            on_end=lambda i, view: self.record.job("mixed", view, label=labels[i] if i < len(labels) else "mixed"),
        )
        self.train_views = views
        entry["jobs"] = [v["job_id"] for v in views]
        # each step's time, to tell a first step's warm-up at a new size from a slower size
        entry["step_s"] = self.step_times(entry["jobs"])
        succeeded = [v for v in views if v["state"] == "succeeded"]
        self.record.check(
            holds(
                "mixed sizes: every job succeeded",
                len(succeeded) == len(views),
                f"{len(succeeded)} of {len(views)}",
                ", ".join(s.label for s in plan.train),
            )
        )
        if len(views) < 3:
            self.record.check(holds("peak memory of a small job after a big one", None, "n/a", "no such jobs planned"))
            return
        fresh, big, after = views[0], views[1], views[2]
        entry["monitor_views"] = {
            label: self.monitor_job(view["job_id"])
            for label, view in (("small_fresh", fresh), ("big", big), ("small_after_big", after))
        }
        check = within(
            f"peak memory of {plan.small.label} after {plan.big.label} vs in a fresh process",
            after.get("peak_memory_bytes"),
            fresh.get("peak_memory_bytes"),
            PEAK_TOLERANCE,
            f"reserved {_gb(after.get('peak_memory_bytes'))} vs {_gb(fresh.get('peak_memory_bytes'))} "
            f"(big job {_gb(big.get('peak_memory_bytes'))}); allocated {_gb(after.get('peak_memory_allocated_bytes'))}"
            f" vs {_gb(fresh.get('peak_memory_allocated_bytes'))}",
        )
        self.record.check(check if plan.gpu else unjudged(check, "no GPU: no peak memory"))

    def step_times(self, job_ids: list[str]) -> dict[str, list[float]]:
        """Return each job's denoising step durations (s) from its events on the monitor (where they arrived)."""
        out: dict[str, list[float]] = {}
        for job_id in job_ids:
            answer = self.monitor_get(f"jobs/{job_id}") if self.monitor is not None else None
            if answer is None or answer.status_code != 200:
                continue
            steps = [e for e in answer.json().get("events", []) if e.get("stage") == "denoising_step"]
            out[job_id] = [round(e["duration_s"], 4) for e in sorted(steps, key=lambda e: e.get("step") or 0)]
        return out

    def monitor_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the monitor's summary of a job (its events left out), or None when it has none."""
        answer = self.monitor_get(f"jobs/{job_id}")
        if answer.status_code != 200:
            return None
        body = answer.json()
        body.pop("events", None)
        return body

    def predict_unseen(self, entry: dict[str, Any]) -> None:
        """Predict sizes the monitor has not seen after the mixed jobs, run them, compare."""
        plan = self.plan
        learned = sum(1 for v in self.train_views if v["state"] == "succeeded")

        def fitted() -> dict[str, Any] | None:
            answer = self.predict(plan.unseen[0])
            return answer if answer["time"]["jobs"] >= learned else None

        started = time.monotonic()
        answer = wait_until(fitted, min(60.0, self.budget.left_s() - FINAL_RESERVE_S), pause_s=1.0)
        entry["predictor_caught_up_s"] = round(time.monotonic() - started, 1) if answer else None
        answer = answer or self.predict(plan.unseen[0])
        memory_jobs = answer["memory"]["jobs"]
        check = at_least_jobs(memory_jobs, learned)
        self.record.check(
            check if plan.gpu and len(plan.train) >= MIN_MEASURED_JOBS else unjudged(check, "a short run")
        )
        predictions = {shape: self.predict(shape) for shape in plan.unseen}
        entry["laws"] = self.monitor_get("predict/laws").json()
        shapes = list(plan.unseen)
        later_s = self.overhead_cost_s()
        while shapes and not self.budget.allows(
            sum(fresh_size_s(predictions[shape]) + 2 for shape in shapes) + later_s
        ):
            dropped = shapes.pop()
            for what, tolerance in (("peak", PREDICT_MEMORY_TOLERANCE), ("time", PREDICT_TIME_TOLERANCE)):
                name = f"predicted {what} of {dropped.label} (unseen)"
                self.skip(name, f"<= {100 * tolerance:g}% off", "left out by the time budget")
        views = self.jobs.run(
            shapes, deadline=self.budget.deadline, on_end=lambda i, view: self.record.job("predict", view)
        )
        entry["predictions"] = []
        entry["step_s"] = self.step_times([v["job_id"] for v in views])
        for shape, view in zip(shapes, views, strict=True):
            predicted = predictions[shape]
            actual_s = run_s(view)
            peak, predicted_peak = view.get("peak_memory_bytes"), predicted["memory"]["peak_bytes"]
            entry["predictions"].append(
                {"shape": asdict(shape), "state": view["state"], "effective": view["effective"], "predicted": predicted,
                 "peak_memory_bytes": peak, "run_s": actual_s}
            )  # fmt: skip
            degraded = view["effective"] != view["requested"]
            note = " (degraded: compared with what ran)" if degraded else ""
            memory = within(
                f"predicted peak of {shape.label} (unseen)",
                predicted_peak,
                peak,
                PREDICT_MEMORY_TOLERANCE,
                f"{_gb(predicted_peak)} predicted, {_gb(peak)} measured{note}",
            )
            # An unseen size is new to the generator's process too: its first step pays the one-off warm-up.
            time_s = predicted["time"]
            seconds = within(
                f"predicted time of {shape.label} (unseen)",
                fresh_size_s(predicted),
                actual_s,
                PREDICT_TIME_TOLERANCE,
                f"{fresh_size_s(predicted):.2f} s predicted for a fresh size ({time_s['seconds']:.2f} s warm + "
                f"{time_s.get('warmup_s', 0.0):.2f} s warm-up), {_s(actual_s)} measured (running to end){note}",
            )
            self.record.check(memory if plan.gpu else unjudged(memory, "no GPU: no peak memory"))
            self.record.check(seconds if plan.gpu else unjudged(seconds, "a CPU smoke run: recorded only"))

    def foreign_process(self, entry: dict[str, Any]) -> None:
        """Fill most of the card from another process; admission must degrade or refuse, never OOM."""
        plan = self.plan
        if not plan.gpu:
            entry["skipped"] = "no GPU"
            for name in (FITS, MISSES):
                self.record.check(holds(name, None, "skipped", "no GPU to share"))
            return
        cost = self.job_time_s(plan.small) + self.job_time_s(plan.big) + 30
        if not self.budget.allows(cost + self.overhead_cost_s()):
            for name in (FITS, MISSES):
                self.skip(name, "yes", "left out by the time budget")
            return
        small, big = self.predict(plan.small), self.predict(plan.big)
        need_small, need_big = small["memory"]["estimate_bytes"], big["memory"]["estimate_bytes"]
        gpu = small["gpu"] or {}
        own = gpu.get("generator_memory_bytes") or 0
        # What the generator may use once the foreign process holds the rest: between the two jobs' needs
        # (geometric mean), so one fits with room to spare and the other misses by as much.
        room = int((need_small * need_big) ** 0.5)
        leave = int(max(room - own, 0))
        entry.update(need_small_bytes=need_small, need_big_bytes=need_big, generator_bytes=own, leave_bytes=leave)
        used_before = gpu.get("memory_used_bytes") or 0
        with (self.work / "foreign.log").open("ab") as foreign_log:
            self.foreign = subprocess.Popen(
                [sys.executable, "-m", "bench.foreign_memory", "--leave-bytes", str(leave)],
                cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=foreign_log, text=True,
            )  # fmt: skip
        try:
            held = self.foreign_holding(deadline_s=120)
            entry["foreign"] = held

            # What admission can give a job now: the card's free memory plus what the generator holds (its
            # weights are part of every job's peak), within the usable share, as generator/admission.py reckons.
            total = held["total_bytes"]
            usable = min(held["free_after_bytes"] + own, int(0.8 * total))

            def sampled_since() -> dict[str, Any] | None:
                gpu_now = self.predict(plan.small)["gpu"]
                taken = gpu_now and gpu_now["memory_used_bytes"] >= used_before + 0.9 * held["held_bytes"]
                return gpu_now if taken else None

            entry["gpu_seen_by_monitor"] = wait_until(sampled_since, 10)  # for the record: what /predict saw
            entry["usable_bytes"] = usable
            views = self.jobs.run(
                [plan.small, plan.big], ahead=0, deadline=self.budget.deadline,
                on_end=lambda i, view: self.record.job("foreign", view, label=("fits", "does not fit")[i]),
            )  # fmt: skip
        finally:
            self.release_foreign()
        fits, misses = views
        detail = (
            f"{_gb(need_small)} needed (peak + margin), {_gb(usable)} usable beside "
            f"{_gb(held['held_bytes'])} held by the foreign process"
        )
        ran = "ran undegraded" if fits["effective"] == fits["requested"] else f"degraded to {fits['effective']}"
        check = holds(
            FITS,
            fits["state"] == "succeeded" and fits["effective"] == fits["requested"],
            f"{plan.small.label}: {fits['state']}, {ran}",
            f"{detail}; notes: {fits.get('notes')}",
        )
        self.record.check(check if need_small <= usable else unjudged(check, "the foreign process left too little"))
        oom = "out of memory" in (misses.get("error") or "").lower()
        degraded = misses["state"] == "succeeded" and misses["effective"] != misses["requested"]
        refused = misses["state"] == "failed" and not oom and (misses.get("error") or "").startswith("refused")
        outcome = "degraded" if degraded else "refused" if refused else f"{misses['state']}: {misses.get('error')}"
        check = holds(
            MISSES,
            (degraded or refused) and not oom,
            f"{plan.big.label}: {outcome}",
            f"{_gb(need_big)} needed, {_gb(usable)} usable; ran as {misses['effective']}; notes: {misses.get('notes')}",
        )
        self.record.check(check if need_big > usable else unjudged(check, "the foreign process left enough for it"))

    def foreign_holding(self, deadline_s: float) -> dict[str, Any]:
        """Return the foreign process's report once it holds its memory."""
        assert self.foreign is not None
        assert self.foreign.stdout is not None
        ready, _, _ = select.select([self.foreign.stdout], [], [], deadline_s)
        line = self.foreign.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the foreign process did not take the memory (see {self.work / 'foreign.log'})")
        return json.loads(line)

    def release_foreign(self) -> None:
        """End the foreign process (it exits when its stdin closes)."""
        if self.foreign is None:
            return
        if self.foreign.stdin is not None:
            self.foreign.stdin.close()
        try:
            self.foreign.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.foreign.kill()
            self.foreign.wait(timeout=10)
        self.foreign = None

    def overhead(self, entry: dict[str, Any]) -> None:
        """The monitor stopped mid-job for a few jobs; then, per sampling period, pairs of jobs running / paused."""
        entry["down"] = self.run_down_jobs()
        self.record.save()
        sessions: list[dict[str, Any]] = entry.setdefault("sessions", [])
        for index, interval_s in enumerate(INTERVALS_S):
            job_s = self.job_time_s(self.plan.overhead)
            start_s = max(self.monitor_start_s or [10.0]) + 3.0
            later = len(INTERVALS_S) - index - 1
            room = self.budget.left_s() - FINAL_RESERVE_S - later * (start_s + (1 + 2 * self.plan.pairs) * job_s)
            pairs = min(self.plan.pairs, int((room - start_s - job_s) / (2 * job_s)))
            if pairs < 1:
                entry["cut_short"] = f"the time budget left no pair at {interval_s:g} s"
                log.warning(entry["cut_short"])
                break
            if pairs < self.plan.pairs:
                entry.setdefault("shrunk", {})[_mode(interval_s)] = f"{pairs} pairs of {self.plan.pairs}"
            sessions.append(self.run_session(interval_s, pairs))
            self.record.save()
        self.judge_overhead(entry)

    def run_down_jobs(self) -> dict[str, Any]:
        """Stop the monitor in the middle of a job (SIGTERM, as an operator's restart) and run jobs without it."""
        if self.monitor is not None and not self.quality_before:
            self.quality_before = self.scored_quality([v["job_id"] for v in self.train_views])
        stopped_at_step: list[int] = []

        def stop_mid_job(index: int, view: dict[str, Any]) -> None:
            if self.monitor is not None and index == 0 and view["progress"]["step"] >= 2:
                stopped_at_step.append(view["progress"]["step"])
                self.stop_monitor()

        def ended(index: int, view: dict[str, Any]) -> None:
            if self.monitor is not None:  # too quick to catch mid-job: stop between jobs
                stopped_at_step.append(view["progress"]["step"])
                self.stop_monitor()
            self.record.job("overhead", view, mode=STOPPED, after_switch=index == 0)

        views = self.jobs.run(
            [self.plan.overhead] * self.plan.down_jobs,
            deadline=self.budget.deadline,
            on_poll=stop_mid_job,
            on_end=ended,
        )
        self.down_jobs += [v["job_id"] for v in views]
        return {"jobs": [v["job_id"] for v in views], "monitor_stopped_at_step": (stopped_at_step or [None])[0]}

    def run_session(self, interval_s: float, pairs: int) -> dict[str, Any]:
        """(Re)start the monitor at `interval_s` with the dashboard open; one job; then `pairs` running/paused pairs."""
        mode = _mode(interval_s)
        self.stop_monitor()
        self.start_monitor(interval_s)
        session: dict[str, Any] = {"mode": mode, "monitor_start_s": self.monitor_start_s[-1], "pairs": pairs}
        self.start_poller()
        first = self.jobs.run([self.plan.overhead], deadline=self.budget.deadline)
        for view in first:
            self.record.job("overhead", view, mode=mode, after_switch=True)
        for index, paused in enumerate(abba(pairs)):
            if paused:
                self.pause_monitor()
                scored_before = None
            else:
                scored_before = self.clips_scored()
            try:
                views = self.jobs.run([self.plan.overhead], deadline=self.budget.deadline)
            finally:
                if paused:
                    self.resume_monitor()
            scored_after = None if paused else self.clips_scored()
            # Clips the monitor scored while this job ran (a frozen monitor scores none): the pairs whose running
            # job had none tell the scoring's share of the cost from the rest of it.
            scored_during = None if scored_before is None or scored_after is None else scored_after - scored_before
            for view in views:
                self.record.job(
                    "overhead",
                    view,
                    mode=f"{mode} paused" if paused else mode,
                    pair=index // 2,
                    after_switch=False,
                    clips_scored_during=0 if paused else scored_during,
                )
        session["poller"] = self.stop_poller()
        return session

    def clips_scored(self) -> int | None:
        """Return how many clips the monitor has scored since it started (its /metrics), None if it does not say."""
        return None if self.monitor is None else self.monitor.clips_scored()

    def pause_monitor(self) -> None:
        """Close the dashboard and freeze the monitor (SIGSTOP): no CPU, no GPU work, no answers."""
        if self.poller is not None:
            self.poller.pause()
        if self.monitor is not None:
            self.monitor.pause()

    def resume_monitor(self) -> None:
        """Thaw the monitor (SIGCONT) and reopen the dashboard."""
        if self.monitor is not None:
            self.monitor.resume()
        if self.poller is not None:
            self.poller.resume()

    def scored_quality(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Return the quality results the monitor serves now for `job_ids`, those scored only."""
        out = {}
        for job_id in job_ids:
            answer = self.monitor_get(f"jobs/{job_id}/quality")
            if answer.status_code == 200 and answer.json().get("status") == "scored":
                out[job_id] = answer.json()
        return out

    def quality_answer(self, job_id: str) -> dict[str, Any]:
        """Return what the monitor answers for a job's quality: its HTTP status, and why it is not scored."""
        answer = self.monitor_get(f"jobs/{job_id}/quality")
        try:
            body = answer.json()
        except ValueError:
            body = {"error": answer.text[:300]}
        keys = ("status", "pending", "schedule", "unscorable_reason", "clip_score", "clip_reason", "scored_on", "error")
        return {"http_status": answer.status_code, **{key: body.get(key) for key in keys if key in body}}

    def quality_outcomes(self) -> dict[str, float] | None:
        """Return the monitor's clips by scoring outcome since it started (/metrics), None if it does not say."""
        try:
            text = requests.get(f"{self.monitor_url}/metrics", timeout=10).text
        except requests.RequestException:
            return None
        prefix = 'i2v_quality_jobs_total{outcome="'
        return {
            line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }

    def judge_overhead(self, entry: dict[str, Any]) -> None:
        """Per sampling period: the running jobs against their paused neighbours (pairs, and medians), their spread."""
        jobs = [j for j in self.record.data["jobs"] if j["phase"] == "overhead" and j["state"] == "succeeded"]

        def of(mode: str, after_switch: bool = False) -> list[dict[str, Any]]:
            return [j for j in jobs if j["mode"] == mode and j["after_switch"] == after_switch]

        def values(chosen: list[dict[str, Any]], key: str = "run_s") -> list[float]:
            return [j[key] for j in chosen if j.get(key)]

        def pairs(mode: str, key: str, unscored_only: bool = False) -> list[tuple[float, float]]:
            def seconds(job: dict[str, Any]) -> float | None:
                return job.get(key) if key in job else (job.get("parts_s") or {}).get(key)

            running = {
                j["pair"]: seconds(j) for j in of(mode) if not unscored_only or j.get("clips_scored_during") == 0
            }
            paused = {j["pair"]: seconds(j) for j in of(f"{mode} paused")}
            both = [(running[p], paused.get(p)) for p in sorted(running)]
            return [(a, b) for a, b in both if a is not None and b is not None]

        stats: dict[str, Any] = {STOPPED: {"steady": describe(values(of(STOPPED)))}}
        for interval_s in INTERVALS_S:
            mode = _mode(interval_s)
            running, paused = of(mode), of(f"{mode} paused")
            stats[mode] = {
                "running": describe(values(running)),
                "paused": describe(values(paused)),
                "after_start": describe(values(of(mode, after_switch=True))),
                "paired_ratio": paired_ratio(pairs(mode, "run_s")),
                "paired_denoising_ratio": paired_ratio(pairs(mode, "denoising_s")),
                # Only the pairs whose running job had no clip scored beside it: the cost without scoring.
                "paired_ratio_no_scoring": paired_ratio(pairs(mode, "run_s", unscored_only=True)),
                "paired_denoising_ratio_no_scoring": paired_ratio(pairs(mode, "denoising_s", unscored_only=True)),
                # Where a difference lies: each part of the job (bench/stack.py's STAGES), running against paused,
                # in seconds, since the short parts' ratios swing with a few milliseconds.
                "paired_part_differences_s": {part: paired_difference(pairs(mode, part)) for part in PARTS},
                "ratio_of_medians": ratio_of_medians(values(running), values(paused)),
                "ratio_after_start": ratio_of_medians(values(of(mode, after_switch=True)), values(paused)),
                "ratio_to_stopped": ratio_of_medians(values(running), values(of(STOPPED))),
            }
        entry["stats"] = stats
        gpu = self.plan.gpu
        for interval_s in INTERVALS_S:
            mode = _mode(interval_s)
            mode_stats = stats[mode]
            ratio = mode_stats["paired_ratio"]
            n = ratio["pairs"]
            shown = "n/a" if ratio["ratio"] is None else f"{ratio['ratio']:.4f} (95% CI {_ci(ratio)})"
            denoising = mode_stats["paired_denoising_ratio"]
            unscored = mode_stats["paired_ratio_no_scoring"]
            detail = (
                f"{self.plan.overhead.label}: {n} jobs beside {n} with the monitor paused, ABBA order, geometric mean"
                f" of the pairs' ratios; denoising alone {_ratio(denoising)}; job IQR "
                f"{_pct(mode_stats['running']['iqr_ratio'])} running / {_pct(mode_stats['paused']['iqr_ratio'])} "
                f"paused; CLIP scoring every clip, a dashboard open; the {unscored['pairs']} pairs without a clip "
                f"scored beside the running job: {_ratio(unscored)}; running minus paused, per part: "
                + ", ".join(
                    f"{part} {_signed_s(d['difference'])}"
                    for part, d in mode_stats["paired_part_differences_s"].items()
                    if part != "whole"
                )
            )
            check = at_most(
                f"generation time, monitor at {interval_s:g} s / paused", ratio["ratio"], OVERHEAD_LIMIT, shown, detail
            )
            self.record.check(check if gpu else unjudged(check, "a CPU smoke run: recorded only"))
            after = mode_stats["ratio_after_start"]
            check = at_most(
                f"generation time just after the monitor started at {interval_s:g} s (backlog) / paused",
                after["ratio"],
                OVERHEAD_LIMIT,
                _ratio(after),
                "the first job after the start, while the monitor catches up on what it missed, against the "
                "paused jobs' median",
            )
            self.record.check(check if gpu else unjudged(check, "a CPU smoke run: recorded only"))
            count = holds(
                f"overhead: at least {MIN_JOBS_PER_MODE} jobs with the monitor at {interval_s:g} s, each beside a "
                "paused one",
                n >= MIN_JOBS_PER_MODE,
                f"{n} pairs",
                "the first job after the start kept apart",
            )
            self.record.check(count if self.plan.pairs >= MIN_JOBS_PER_MODE else unjudged(count, "a short run"))

    def quality_drained(self) -> float | None:
        """Return when the scorer had no clip waiting and none in scoring (monotonic seconds), else None."""
        quality = self.monitor_get("status").json().get("quality") or {}
        return time.monotonic() if quality.get("pending") == 0 and not quality.get("scoring") else None

    def final(self, entry: dict[str, Any]) -> None:
        """The monitor back up: caught-up events, quality kept and scored, every small job's peak, the budget."""
        plan = self.plan
        if self.monitor is None:
            self.start_monitor(0.5)
        self.stop_poller()

        def left() -> float:
            return max(self.budget.left_s() - 15, 5)  # stopping everything takes the rest

        expected = {
            j["job_id"]: j["effective"]["steps"] for j in self.record.data["jobs"] if j["job_id"] in self.down_jobs
        }

        def caught_up() -> dict[str, Any] | None:
            views = {job_id: self.monitor_job(job_id) for job_id in expected}
            done = all(
                v is not None and v.get("status") == "succeeded"
                and (v.get("stages") or {}).get("denoising", {}).get("steps") == expected[job_id]
                for job_id, v in views.items()
            )  # fmt: skip
            return views if done else None

        views = wait_until(caught_up, min(60.0, left()))
        entry["down_jobs"] = {"count": len(expected), "caught_up": views is not None}
        if views is None:
            last = {job_id: self.monitor_job(job_id) for job_id in expected}
            entry["down_jobs"]["monitor_views"] = last
        self.record.check(
            holds(
                "monitor restart: events of the jobs run while it was down reach it",
                None if not expected else views is not None,
                f"{len(expected)} jobs" if views is not None else "not all",
                "each job's end state and every denoising step, from the generator's spool, after a stop mid-job",
            )
        )
        scored_down = wait_until(
            lambda: (q := self.scored_quality(list(expected))) and len(q) == len(expected) and q, min(60.0, left())
        )
        self.record.check(
            holds(
                "monitor restart: clips made while it was down are scored after it",
                None if not expected else scored_down is not None,
                f"{len(scored_down or {})} of {len(expected)}",
                "quality status `scored`",
            )
        )
        kept = self.scored_quality(list(self.quality_before))
        same = [
            job_id for job_id, before in self.quality_before.items()
            if job_id in kept and _same(kept[job_id].get("clip_score"), before.get("clip_score"))
        ]  # fmt: skip
        self.record.check(
            holds(
                "monitor restart: quality scored before it is still served",
                None if not self.quality_before else len(same) == len(self.quality_before),
                f"{len(same)} of {len(self.quality_before)}",
                "GET /monitor/api/jobs/<id>/quality after the restarts: 200, `scored`, the same CLIP score",
            )
        )
        succeeded = [j["job_id"] for j in self.record.data["jobs"] if j["state"] == "succeeded"]
        # every clip must have reached the scorer (its job's end event ingested) before "none pending" means done
        wait_until(
            lambda: all((self.monitor_job(job_id) or {}).get("state") == "succeeded" for job_id in succeeded[-3:]),
            min(30.0, left()),
        )
        drained_at = wait_until(self.quality_drained, left(), pause_s=1.0)
        entry["quality_drained_s"] = None if drained_at is None else round(time.monotonic() - drained_at, 1)
        scored = self.scored_quality(succeeded)
        with_clip = [job_id for job_id, q in scored.items() if q.get("clip_score") is not None]
        missing = [job_id for job_id in succeeded if job_id not in with_clip]
        entry["not_scored_with_clip"] = missing
        # Why each was not: the monitor's answer (a 404 is a clip it never took), and its counts by outcome.
        entry["not_scored_with_clip_why"] = {job_id: self.quality_answer(job_id) for job_id in missing[:20]}
        entry["quality_outcomes"] = self.quality_outcomes()
        self.record.check(
            holds(
                f"every clip scored with CLIP ({plan.clip}, random weights)",
                not missing,
                f"{len(with_clip)} of {len(succeeded)}",
                "quality `scored` with a CLIP score, also for clips that waited while the monitor was stopped"
                + (f"; not: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}" if missing else "")
                + "".join(
                    f"; {job_id[:8]}: {_why(why)}"
                    for job_id, why in list(entry["not_scored_with_clip_why"].items())[:3]
                ),
            )
        )
        small_peaks = [
            (j["peak_memory_bytes"], j["phase"], j.get("label") or j.get("mode"))
            for j in self.record.data["jobs"]
            if j["state"] == "succeeded" and j["effective"] == {**j["effective"], **_params(plan.small)}
        ]
        fresh = self.train_views[0].get("peak_memory_bytes") if self.train_views else None
        worst = max((abs(p - fresh) / fresh for p, _, _ in small_peaks if p and fresh), default=None)
        entry["small_peaks"] = small_peaks
        check = Check(
            f"peak memory of every {plan.small.label} job vs the fresh process's",
            worst,
            "n/a" if worst is None else f"at most {100 * worst:.1f}% off",
            f"<= {100 * PEAK_TOLERANCE:g}% off",
            None if worst is None else worst <= PEAK_TOLERANCE,
            f"{len(small_peaks)} jobs after big, mixed, foreign-process and overhead jobs; fresh {_gb(fresh)}",
        )
        self.record.check(check if plan.gpu else unjudged(check, "no GPU: no peak memory"))
        entry["generator_health"] = self.generator.health()
        entry["monitor_status"] = self.monitor_get("status").json() if self.monitor else None
        entry["monitor_start_s"] = self.monitor_start_s
        degraded = [j for j in self.record.data["jobs"] if j["phase"] != "foreign" and j["effective"] != j["requested"]]
        self.record.check(
            holds(
                "admission degraded no job with the card to itself",
                not degraded,
                f"{len(degraded)} degraded",
                "every job outside the foreign-process phase ran as requested"
                + "".join(f"; {j['requested']} ran as {j['effective']}: {j['notes']}" for j in degraded[:3]),
            )
        )
        failed = [j for j in self.record.data["jobs"] if j["state"] != "succeeded" and j["phase"] != "foreign"]
        oom = [j for j in self.record.data["jobs"] if "out of memory" in (j.get("error") or "").lower()]
        self.record.check(
            holds(
                "no job failed, none ran out of memory",
                not failed and not oom,
                f"{len(failed)} failed, {len(oom)} OOM",
                f"{len(self.record.data['jobs'])} jobs (a refusal under the foreign process is not a failure)",
            )
        )


def at_least_jobs(jobs: int, learned: int) -> Check:
    """Check that the predictor learned from at least MIN_MEASURED_JOBS jobs before predicting unseen sizes."""
    return holds(
        f"the predictor learned from at least {MIN_MEASURED_JOBS} measured jobs",
        jobs >= MIN_MEASURED_JOBS,
        f"{jobs} jobs",
        f"/predict's memory.jobs after {learned} mixed jobs succeeded",
        f">= {MIN_MEASURED_JOBS}",
    )


def fresh_size_s(prediction: dict[str, Any]) -> float:
    """Return a prediction's seconds for the first job of its size in a generator process: warm time + warm-up.

    A monitor from before the warm-up was learned apart answers only the one time, which is then used.
    """
    time_s = prediction["time"]
    return float(time_s.get("fresh_size_seconds", time_s["seconds"]))


def _why(answer: dict[str, Any]) -> str:
    """Say in a few words why the monitor's quality answer is not a clip scored with CLIP."""
    if answer.get("http_status") != 200:
        return f"HTTP {answer.get('http_status')} {answer.get('error') or ''}".strip()
    reason = answer.get("unscorable_reason") or answer.get("schedule") or answer.get("clip_reason") or ""
    return f"{answer.get('status')}{' (pending)' if answer.get('pending') else ''}: {reason}"[:200]


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)


def _params(shape: Shape) -> dict[str, int]:
    return {"resolution": shape.resolution, "num_frames": shape.frames, "steps": shape.steps}


def _gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f} GB"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _signed_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f} s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _mode(interval_s: float) -> str:
    return f"{interval_s:g}s"


def _ci(ratio: dict[str, Any]) -> str:
    low, high = ratio["ci95"]
    return f"{low:.4f}-{high:.4f}"


def _ratio(ratio: dict[str, Any]) -> str:
    return "n/a" if ratio["ratio"] is None else f"{ratio['ratio']:.4f} (95% CI {_ci(ratio)})"


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the processes this run started are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    """Run the acceptance, write the JSON, print the table; 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the JSON to write (rewritten as the run goes)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer jobs: proves the run, its figures mean little")
    parser.add_argument("--budget-s", type=float, default=560.0, help="the whole run's time budget (default 560)")
    parser.add_argument("--pairs", type=int, help="overhead pairs per sampling period (a running and a paused job)")
    parser.add_argument("--down-jobs", type=int, help="jobs run with the monitor stopped (its restart mid-run)")
    parser.add_argument("--work", type=Path, help="folder for the processes' state and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plan = CPU if args.device == "cpu" else H200_QUICK if args.quick else H200
    if args.device == "cpu" and not args.quick:
        plan = replace(plan, pairs=4, down_jobs=3)
    plan = replace(plan, pairs=args.pairs or plan.pairs, down_jobs=args.down_jobs or plan.down_jobs)
    if plan.pairs < 1 or plan.down_jobs < 1:
        parser.error("--pairs and --down-jobs must be at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    record = Record(
        args.out,
        benchmark="gpu_acceptance",
        command=" ".join(["python -m bench.gpu_acceptance", *(argv if argv is not None else sys.argv[1:])]),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine(),
        device=args.device,
        quick=args.quick,
        budget_s=args.budget_s,
        work=str(work),
        plan={k: ([asdict(s) for s in v] if isinstance(v, tuple) else asdict(v) if isinstance(v, Shape) else v)
              for k, v in plan.__dict__.items()},
        targets={"peak_after_big": PEAK_TOLERANCE, "predict_memory": PREDICT_MEMORY_TOLERANCE,
                 "predict_time": PREDICT_TIME_TOLERANCE, "overhead_ratio": OVERHEAD_LIMIT,
                 "measured_jobs": MIN_MEASURED_JOBS, "jobs_per_mode": MIN_JOBS_PER_MODE},
    )  # fmt: skip
    record.save()
    signal.signal(signal.SIGTERM, _terminate)
    acceptance = Acceptance(args, plan, record, work)
    try:
        acceptance.run()
    finally:
        acceptance.close()
        elapsed = acceptance.budget.elapsed_s()
        done = acceptance.phases_done
        record.check(
            holds("every phase ran to its end", len(done) == 6, f"{len(done)} of 6", f"done: {', '.join(done)}")
        )
        record.check(
            at_most(
                "the whole run fits its time budget",
                round(elapsed, 1),
                args.budget_s,
                f"{elapsed:.0f} s",
                "one device call of 10 minutes",
            )
        )
        # Only the full GPU run is an acceptance; a quick or CPU run passes when nothing it judged failed.
        passed = record.finish(every_check_judged=plan.gpu and not args.quick)
    print(record.data["table"])
    print(f"\n{'PASSED' if passed else 'NOT PASSED'} in {elapsed:.0f} s; JSON: {args.out or '(not written)'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
