"""What each part of the monitor costs the generator's jobs: a ladder of monitor configurations, each against it paused.

    python -m bench.monitor_cost --out bench/results/monitor_cost.json          # one H200: about 9 minutes
    python -m bench.monitor_cost --model tiny --device cpu --quick --out /tmp/cost.json   # proves the script

The GPU acceptance run (bench/gpu_acceptance.py) measures the whole monitor beside back-to-back jobs: 2-2.6%
slower than with it paused, where the target is 0.5%. This run says where that comes from. As an operator runs
them: `python -m generator` (the full random-weight model on the GPU), `python -m monitor` on its own store
(influxd when it is installed, else SQLite; `--store`), jobs of one size submitted and followed over HTTP. The
monitor is started once per rung of a ladder that switches its parts on one at a time (`--rungs` picks and
orders them):

- `ingest`: events received and stored, job summaries and the predictor's refits; sampling every hour (one tick
  at start), no generator URL (so no scraping of the generator), `--quality 0`;
- `sampling`: + NVML and host samples every `--interval` (0.5 s), the alert rules evaluated on each;
- `scrape`: + `--generator-url`: every interval the alerts read the generator's /health and /metrics, and the
  sampler learns its PID (per-process attribution);
- `quality`: + clip scoring with a full-size random-weight ViT-L/14 CLIP (bench/clip_folder.py), clips waiting
  at most 30 s for a gap between jobs (as the acceptance run), so they are scored beside the running jobs, CLIP
  on the CPU there, the scoring thread at the monitor's default CPU priority (idle);
- `dashboard`: + an open dashboard (bench/dashboard_poller.py), as the acceptance run has.
Not in the default ladder: `motion` (quality without CLIP: decoding and optical flow only, on the CPU),
`quality_normal` (the `quality` rung with `MONITOR_QUALITY_CPU_PRIORITY=normal`: what the idle class saves) and
`clip_cpu` (the quality rung with CUDA hidden from the monitor, so CLIP runs on the CPU even between jobs).

Each rung: a fresh monitor on a fresh store (so no rung inherits another's history or backlog), ready, one job
discarded (`--warmup-jobs`), then pairs of jobs, one with the monitor running and one with it paused (SIGSTOP,
the dashboard paused too), in ABBA order. Before each job the previous one's events must have reached the
monitor (the generator's spool empty, the monitor's view of the job ended): a paused job's events, delivered
once the monitor resumes, are ingested between jobs, not charged to the next running one. Per rung: the geometric
mean of the pairs' ratios with its bootstrap 95% interval, for the whole job and each stage (encoding: text,
image and image latents; denoising; decode; export; other: the rest of the job's span), the paired differences in
seconds (they add up, where ratios do not), the ratio over the rung before it (what the part switched on
added), the monitor's (and the store's, and the generator's) CPU seconds per job from psutil, the clips scored
beside each running job, and whether the monitor's process holds a CUDA context (NVML's per-process list):
a CUDA context in the monitor time-slices the GPU with the generator.

Pairs per rung: as many as the time budget (`--budget-s`, 540 s: one device call) leaves, shared evenly among the
rungs still to run, at most `--pairs`. The JSON (`--out`) is rewritten after every job, so a run cut short keeps
what it measured; a rung the budget leaves no pair for is skipped and said so. The Markdown table is printed at
the end. Exit status: 0 when every job succeeded, every rung was measured and the run kept to its budget (the
0.5% target is recorded per rung, not judged: bench/gpu_acceptance.py judges it).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.acceptance_record import Record, at_most, holds, unjudged
from bench.clip_folder import MODELS as CLIP_MODELS
from bench.dashboard_poller import DashboardPoller
from bench.gpu_acceptance import Budget, wait_until
from bench.harness import ROOT, Context, MonitorProcess, free_port, machine
from bench.spread import abba, describe, paired_difference, paired_ratio, ratio_between
from bench.stack import PARTS, STAGES, GeneratorProcess, Jobs, Shape
from monitor.collection.nvml import NvmlReader
from monitor.collection.sampler import GpuReader

log = logging.getLogger("monitor_cost")

HOST = "cost-host"
OVERHEAD_LIMIT = 1.005  # issue 14: a job with the monitor running takes at most 0.5% longer than with it paused
QUALITY_MAX_WAIT_S = 30  # as the acceptance run: clips are scored beside the running jobs, one per job ending
ONE_TICK_S = 3600  # the `ingest` rung's sampling period: one tick at start, none during the rung
CATCH_UP_S = 30.0  # the longest a job's events may take to reach the monitor once it runs
RESERVE_S = 20.0  # stopping the last monitor, the generator and the store


@dataclass(frozen=True)
class Rung:
    """One monitor configuration: which of its parts run."""

    name: str
    what: str
    sampling: bool  # NVML and host samples every --interval (else one tick at start)
    scrape: bool  # --generator-url given: the alerts read the generator's /health and /metrics every interval
    quality: bool  # clips scored
    clip: bool  # with the CLIP folder
    clip_on_gpu: bool = True  # False: CUDA hidden from the monitor, CLIP on the CPU
    dashboard: bool = False
    cpu_priority: str = "idle"  # MONITOR_QUALITY_CPU_PRIORITY: the scoring thread's CPU class

    def monitor_env(self, env: dict[str, str]) -> dict[str, str]:
        """Return the monitor's environment for this rung, from the run's."""
        env = {**env, "MONITOR_QUALITY_CPU_PRIORITY": self.cpu_priority}
        return env if self.clip_on_gpu else {**env, "CUDA_VISIBLE_DEVICES": ""}

    def monitor_args(self, *, interval_s: float, generator_url: str, clip_dir: Path) -> list[str]:
        """Return the monitor's flags for this rung."""
        args = [
            "--sample-interval", str(interval_s if self.sampling else ONE_TICK_S),
            "--generator-url", generator_url if self.scrape else "",
            "--quality", "1" if self.quality else "0",
            "--quality-max-wait", str(QUALITY_MAX_WAIT_S),
        ]  # fmt: skip
        return [*args, "--clip-model", str(clip_dir)] if self.clip else args


ALL_BUT_UI = (True, True, True, True)  # sampling, scraping, scoring, CLIP
RUNGS = {
    rung.name: rung
    for rung in (
        Rung("ingest", "events ingested and stored; no sampling, no scraping, no scoring", False, False, False, False),
        Rung("sampling", "+ NVML and host sampling", True, False, False, False),
        Rung("scrape", "+ the generator's /health and /metrics read every interval", True, True, False, False),
        Rung("motion", "+ clips scored without CLIP (decode, optical flow)", True, True, True, False),
        Rung("quality", "+ clips scored with CLIP (ViT-L/14, GPU between jobs), at idle CPU priority", *ALL_BUT_UI),
        Rung("quality_normal", "the `quality` rung, scoring at normal priority", *ALL_BUT_UI, cpu_priority="normal"),
        Rung("clip_cpu", "+ clips scored with CLIP kept on the CPU", *ALL_BUT_UI, clip_on_gpu=False),
        Rung("dashboard", "+ a dashboard open", True, True, True, True, dashboard=True),
    )
}
LADDER = ("ingest", "sampling", "scrape", "quality", "dashboard")


@dataclass(frozen=True)
class Plan:
    """What one run does: the model, the CLIP, the job, the rungs, and at most how many pairs each."""

    model: str
    clip: str
    gpu: bool
    shape: Shape
    rungs: tuple[str, ...]
    pairs: int
    warmup_jobs: int
    job_guess_s: float  # a job's wall time until one is measured
    start_guess_s: tuple[float, float]  # a monitor's start (and stop) until one is measured: without CLIP, with


H200 = Plan("full", "vit-l-14", True, Shape(512, 16, 10), LADDER, 40, 1, 3.5, (8.0, 25.0))
H200_QUICK = replace(H200, pairs=3)
CPU = Plan("tiny", "tiny", False, Shape(256, 8, 10), ("ingest", "quality"), 2, 1, 20.0, (6.0, 12.0))


def cpu_s(pid: int | None) -> float | None:
    """Return a process's CPU seconds so far (user + system, children included), None when it is gone."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system + times.children_user + times.children_system


class CudaContexts:
    """Tell from NVML's per-process list whether a process holds a CUDA context on a GPU (None: cannot tell)."""

    def __init__(self, reader: GpuReader | None = None) -> None:
        """Read through `reader` (default: the monitor's own NVML reader, listing the processes at every read)."""
        self.reader = reader if reader is not None else NvmlReader(processes_interval_s=0.0, xid_events=False)

    def holders(self) -> dict[int, int | None] | None:
        """Return {pid: GPU memory bytes} of every process on any GPU, or None without NVML."""
        gpus = self.reader.read()
        if not self.reader.available or not gpus or any(g.processes is None for g in gpus):
            return None
        return {p.pid: p.used_memory_bytes for g in gpus for p in g.processes or ()}

    def holds(self, pid: int | None, generator_pid: int | None) -> dict[str, Any]:
        """Return whether `pid` holds a context, and its memory; unknown (None) when NVML cannot list processes
        or does not list the generator, which surely holds one (another PID namespace)."""
        holders = self.holders()
        if holders is None or pid is None or generator_pid not in holders:
            return {"holds": None, "memory_bytes": None}
        return {"holds": pid in holders, "memory_bytes": holders.get(pid)}

    def close(self) -> None:
        """Release NVML."""
        self.reader.shutdown()


class MonitorCost:
    """One run: the processes it started, the ladder it climbs, and its record."""

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
        self.context = Context(quick=args.quick, work=work, out=work)  # owns influxd, when used
        self.influxd: Any = None
        self.monitor: MonitorProcess | None = None
        self.poller: DashboardPoller | None = None
        self.clip_dir = work / "clip"
        self.cuda = CudaContexts() if plan.gpu else None
        self.starts_s: dict[bool, list[float]] = {False: [], True: []}  # a monitor's start + stop, by CLIP or not
        self.job_cycles_s: list[float] = []  # each job's whole turn: submitted, followed, its events caught up
        self.rungs_done: list[str] = []

    # ---- processes ---------------------------------------------------------------------------------------

    def setup(self, entry: dict[str, Any]) -> None:
        """Start the store, make the CLIP folder while the generator loads, wait for both."""
        entry["store"] = self.start_store()
        clip = None
        if any(RUNGS[name].clip for name in self.plan.rungs):
            clip_log = (self.work / "clip_folder.log").open("ab")
            clip = subprocess.Popen(
                [sys.executable, "-m", "bench.clip_folder", "--model", self.plan.clip, "--out", str(self.clip_dir)],
                cwd=ROOT, env={**os.environ, **self.env}, stdout=clip_log, stderr=clip_log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            clip_log.close()
        started = time.monotonic()
        try:
            self.generator.start(deadline_s=min(300.0, self.budget.left_s()))
            entry["generator_ready_s"] = round(time.monotonic() - started, 2)
            if clip is not None and clip.wait(timeout=max(self.budget.left_s() - 60, 10)) != 0:
                raise RuntimeError(f"bench.clip_folder failed (see {self.work / 'clip_folder.log'})")
        finally:
            if clip is not None and clip.poll() is None:
                clip.kill()
                clip.wait()
        entry["clip_folder_s"] = round(time.monotonic() - started, 2) if clip is not None else None
        entry["generator_health"] = self.generator.health()

    def start_store(self) -> dict[str, Any]:
        """Start influxd when asked for (or, with `auto`, when it is installed); otherwise each monitor has SQLite."""
        choice = self.args.store
        if choice == "auto":
            choice = "influxd" if _influxd_installed() else "sqlite"
        if choice == "influxd":
            self.influxd = self.context.influxd()
            return {"kind": "influxd", "url": self.influxd.url}
        return {"kind": "sqlite", "why": "asked for" if self.args.store == "sqlite" else "influxd is not installed"}

    def start_monitor(self, rung: Rung) -> float:
        """Start a fresh monitor for `rung` on its own store; return the seconds it took to answer."""
        data_dir = self.work / f"monitor-{rung.name}"
        store_url = None if self.influxd is None else self.influxd.store_url(f"cost_{rung.name}")
        args = [
            *rung.monitor_args(interval_s=self.args.interval, generator_url=self.generator.url, clip_dir=self.clip_dir),
            *("--outputs", str(self.generator.outputs), "--host-name", HOST),
        ]
        monitor = MonitorProcess(
            data_dir,
            store_url=store_url,
            interval_s=self.args.interval,
            port=self.monitor_port,
            args=args,
            **rung.monitor_env(self.env),
        )
        started = time.monotonic()
        self.monitor = monitor.start(deadline_s=180)
        if rung.dashboard:
            self.poller = DashboardPoller(self.monitor_url, host=HOST).start()
        return round(time.monotonic() - started, 2)

    def stop_monitor(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Close the dashboard, stop the monitor (SIGTERM: it flushes its writer); return the dashboard's latencies."""
        stats = None
        if self.poller is not None:
            stats = self.poller.stop()
            self.poller = None
        if self.monitor is not None:
            self.monitor.stop(timeout_s)
            self.monitor = None
        return stats

    def close(self) -> None:
        """Stop everything this run started, newest first; past the budget, kill rather than wait."""
        grace_s = min(max(self.budget.left_s(), 3.0), 30.0)
        self.stop_monitor(grace_s)
        self.generator.stop(grace_s)
        self.context.close()
        if self.cuda is not None:
            self.cuda.close()

    def pids(self) -> dict[str, int | None]:
        """Return the PIDs of the monitor, the generator and the store's server (None where there is none)."""

        def pid(process: subprocess.Popen[bytes] | None) -> int | None:
            return None if process is None else process.pid

        return {
            "monitor": pid(self.monitor.process) if self.monitor is not None else None,
            "generator": pid(self.generator.process),
            "store": pid(self.influxd.process) if self.influxd is not None else None,
        }

    def cuda_context(self) -> dict[str, Any]:
        """Return whether the monitor's process holds a CUDA context now (None: no NVML, or cannot tell)."""
        if self.cuda is None:
            return {"holds": None, "memory_bytes": None}
        pids = self.pids()
        return self.cuda.holds(pids["monitor"], pids["generator"])

    # ---- jobs ----------------------------------------------------------------------------------------------

    def caught_up(self, job_id: str) -> float | None:
        """Wait until the generator has delivered every event and the monitor's view of `job_id` has ended."""
        started = time.monotonic()

        def done() -> bool:
            if self.generator.health().get("events_spooled") != 0:
                return False
            answer = requests.get(f"{self.monitor_url}/monitor/api/jobs/{job_id}", timeout=10)
            return answer.status_code == 200 and answer.json().get("state") in ("succeeded", "failed", "cancelled")

        if wait_until(done, min(CATCH_UP_S, max(self.budget.left_s() - RESERVE_S, 1.0)), pause_s=0.1) is None:
            log.warning("job %s: its events did not reach the monitor within %.0f s", job_id, CATCH_UP_S)
            return None
        return round(time.monotonic() - started, 3)

    def run_job(self, rung: Rung, mode: str, **extra: Any) -> dict[str, Any]:
        """Run one job (the monitor paused around it when `mode` is "paused"), and keep it with what it cost."""
        paused = mode == "paused"
        quality = rung.quality and not paused and self.monitor is not None
        cycle_started = time.monotonic()
        if paused:
            if self.poller is not None:
                self.poller.pause()
            if self.monitor is not None:
                self.monitor.pause()
        # Read before the CPU clock starts and after it stops: rendering /metrics is the bench's cost, not the job's.
        scored_before = self.monitor.clips_scored() if quality and self.monitor is not None else None
        pids = self.pids()
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        started = time.monotonic()
        try:
            views = self.jobs.run([self.plan.shape], deadline=self.budget.deadline)
        finally:
            wall_s = time.monotonic() - started
            cpu_after = {name: cpu_s(pid) for name, pid in pids.items()}
            if paused:
                if self.monitor is not None:
                    self.monitor.resume()
                if self.poller is not None:
                    self.poller.resume()
        view = views[0]
        scored_after = self.monitor.clips_scored() if quality and self.monitor is not None else None
        cuda = self.cuda_context() if not paused else None
        catch_up_s = self.caught_up(view["job_id"]) if self.monitor is not None else None
        self.job_cycles_s.append(time.monotonic() - cycle_started)
        spent = {f"{name}_cpu_s": _spent(cpu_before[name], cpu_after[name]) for name in pids}
        return self.record.job(
            rung.name,
            view,
            mode=mode,
            wall_s=round(wall_s, 3),
            clips_scored_during=None if scored_before is None or scored_after is None else scored_after - scored_before,
            monitor_cuda=cuda,
            catch_up_s=catch_up_s,
            **spent,
            **extra,
        )

    # ---- the ladder ----------------------------------------------------------------------------------------

    def job_s(self) -> float:
        """Return a job's expected turn in seconds: the median so far (and a margin), else the plan's guess."""
        if not self.job_cycles_s:
            return self.plan.job_guess_s
        ordered = sorted(self.job_cycles_s)
        return ordered[len(ordered) // 2] * 1.05

    def start_s(self, rung: Rung) -> float:
        """Return a monitor's expected start and stop for `rung`: the longest measured of its kind, else a guess."""
        measured = self.starts_s[rung.clip]
        return max(measured) if measured else self.plan.start_guess_s[rung.clip]

    def pairs_for(self, rungs_left: list[Rung]) -> int:
        """Return the pairs the budget gives this rung: an even share of what the rungs left will have for pairs."""
        job_s = self.job_s()
        fixed_s = sum(self.start_s(r) + self.plan.warmup_jobs * job_s for r in rungs_left[1:])
        room_s = self.budget.left_s() - RESERVE_S - fixed_s
        return max(0, min(self.plan.pairs, int(room_s / len(rungs_left) / (2 * job_s))))

    def run(self) -> None:
        """Set up, then climb the ladder; a rung that fails is recorded and the next one still runs."""
        setup = self.record.phase("setup")
        started = time.monotonic()
        try:
            self.setup(setup)
        except Exception as error:  # without a generator there is nothing to measure: recorded, and the run ends
            log.exception("setup failed")
            self.failed(setup, error)
            return
        finally:
            setup["elapsed_s"] = round(time.monotonic() - started, 1)
            self.record.save()
        rungs = [RUNGS[name] for name in self.plan.rungs]
        for index, rung in enumerate(rungs):
            entry = self.record.phase(rung.name)
            entry["what"] = rung.what
            started = time.monotonic()
            log.info("rung %s (%.0f s in, %.0f s left)", rung.name, self.budget.elapsed_s(), self.budget.left_s())
            try:
                self.climb(rung, rungs[index:], entry)
            except Exception as error:  # the ladder goes on: a rung's failure is a finding, recorded with its trace
                log.exception("rung %s failed", rung.name)
                self.failed(entry, error)
                if self.generator.process is None or self.generator.process.poll() is not None:
                    break
            else:
                if entry.get("pairs_done"):
                    self.rungs_done.append(rung.name)
            finally:
                entry["poller"] = self.stop_monitor(min(30.0, max(self.budget.left_s() - RESERVE_S, 3.0)))
                entry["elapsed_s"] = round(time.monotonic() - started, 1)
                self.record.save()

    def failed(self, entry: dict[str, Any], error: Exception) -> None:
        """Record a phase's failure with its trace."""
        entry["error"] = f"{error.__class__.__name__}: {error}"
        entry["traceback"] = traceback.format_exc()[-4000:]

    def climb(self, rung: Rung, rungs_left: list[Rung], entry: dict[str, Any]) -> None:
        """One rung: a fresh monitor, the discarded job(s), then as many running/paused pairs as the budget gives."""
        cost_s = self.start_s(rung) + (self.plan.warmup_jobs + 2) * self.job_s()
        if self.budget.left_s() - RESERVE_S < cost_s:
            entry["skipped"] = "the time budget left no pair"
            log.warning("rung %s skipped: %s", rung.name, entry["skipped"])
            return
        entry["monitor_start_s"] = self.start_monitor(rung)
        started = time.monotonic()
        entry["cuda_at_start"] = self.cuda_context()
        for _ in range(self.plan.warmup_jobs):
            self.run_job(rung, "warm-up")
        pairs = self.pairs_for(rungs_left)
        entry["pairs_planned"] = pairs
        entry["pairs_done"] = 0
        for index, paused in enumerate(abba(pairs)):
            self.run_job(rung, "paused" if paused else "running", pair=index // 2)
            if index % 2 == 1:
                entry["pairs_done"] = index // 2 + 1
        entry["cuda_at_end"] = self.cuda_context()
        entry["monitor_status"] = self.monitor.status() if self.monitor is not None else None
        entry["seconds_up"] = round(time.monotonic() - started, 1)
        # A start and its stop (a few seconds to flush and exit): what the later rungs' shares are planned with.
        self.starts_s[rung.clip].append(entry["monitor_start_s"] + 3.0)

    # ---- the figures ---------------------------------------------------------------------------------------

    def judge(self) -> None:
        """Per rung: paired ratios and differences per part, CPU per job, CUDA, the step over the rung before."""
        jobs = [j for j in self.record.data["jobs"] if j["state"] == "succeeded"]
        summary: dict[str, Any] = {}
        previous: tuple[str, list[tuple[float, float]]] | None = None
        for name in self.plan.rungs:
            running = {j["pair"]: j for j in jobs if j["phase"] == name and j["mode"] == "running"}
            paused = {j["pair"]: j for j in jobs if j["phase"] == name and j["mode"] == "paused"}
            both = [(running[p], paused[p]) for p in sorted(running) if p in paused]
            if not both:
                continue
            figures = {"what": RUNGS[name].what, **rung_figures(both)}
            whole = part_pairs("whole", both)
            if previous is not None:
                figures["over_previous"] = {"rung": previous[0], **ratio_between(whole, previous[1])}
            summary[name] = figures
            previous = (name, whole)
            ratio = figures["ratio"]["whole"]
            check = at_most(
                f"whole job, monitor `{name}` / paused",
                ratio["ratio"],
                OVERHEAD_LIMIT,
                _ratio(ratio),
                f"{figures['pairs']} ABBA pairs; {figures['what']}; denoising {_ratio(figures['ratio']['denoising'])}",
            )
            # Recorded, not judged: this run apportions the cost; the acceptance run judges the target.
            self.record.check(unjudged(check, "apportioned here, judged by bench/gpu_acceptance.py"))
        self.record.data["summary"] = summary
        self.record.data["summary_table"] = summary_table(summary)


Pair = tuple[dict[str, Any], dict[str, Any]]  # a running job and its paused neighbour, as recorded


def part_pairs(part: str, pairs: list[Pair]) -> list[tuple[float, float]]:
    """Return (running, paused) seconds of one part of each pair's jobs, where both have it."""
    return [
        (a["parts_s"][part], b["parts_s"][part])
        for a, b in pairs
        if a["parts_s"].get(part) is not None and b["parts_s"].get(part) is not None
    ]


def part_seconds(part: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the spread of one part's seconds over `jobs`."""
    return describe([j["parts_s"][part] for j in jobs if j["parts_s"].get(part) is not None])


def rung_figures(pairs: list[Pair]) -> dict[str, Any]:
    """Return one rung's figures from its pairs: per part, the paired ratio and difference and each side's
    seconds; the pairs without a clip scored beside the running job; CPU seconds per job of each process; how
    many running jobs the monitor held a CUDA context through; how long the events took to reach the monitor."""
    sides = {"running": [a for a, _ in pairs], "paused": [b for _, b in pairs]}
    unscored = [(a, b) for a, b in pairs if a.get("clips_scored_during") == 0]
    cuda = [a["monitor_cuda"] for a in sides["running"] if a.get("monitor_cuda")]
    known = [c for c in cuda if c["holds"] is not None]

    def seconds(chosen: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return describe([j[key] for j in chosen if j.get(key) is not None])

    return {
        "pairs": len(pairs),
        "ratio": {part: paired_ratio(part_pairs(part, pairs)) for part in PARTS},
        "difference_s": {part: paired_difference(part_pairs(part, pairs)) for part in PARTS},
        "seconds": {mode: {part: part_seconds(part, chosen) for part in PARTS} for mode, chosen in sides.items()},
        "whole_without_a_clip_scored_beside": paired_ratio(part_pairs("whole", unscored)),
        "clips_scored_beside_running_jobs": sum(a.get("clips_scored_during") or 0 for a in sides["running"]),
        "cpu_s_per_job": {
            process: {mode: seconds(chosen, f"{process}_cpu_s") for mode, chosen in sides.items()}
            for process in ("monitor", "generator", "store")
        },
        "monitor_cuda_context": {
            "running_jobs_with_one": sum(1 for c in known if c["holds"]),
            "running_jobs_known": len(known),
            "memory_bytes_max": max((c["memory_bytes"] or 0 for c in known), default=None),
        },
        "catch_up_s": seconds([j for pair in pairs for j in pair], "catch_up_s"),
    }


def summary_table(summary: dict[str, Any]) -> str:
    """Return the rungs as a Markdown table: ratios per part, what the rung added, CPU and CUDA in the monitor."""
    lines = [
        "| rung | pairs | whole job | over the rung before | encoding | denoising | decode | export | other (ms) "
        "| monitor CPU s/job | CUDA context in the monitor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rung in summary.items():
        ratio = rung["ratio"]
        step = rung.get("over_previous")
        other_s = rung["difference_s"]["other"]["difference"]
        cpu_s_median = rung["cpu_s_per_job"]["monitor"]["running"]["median"]
        cuda = rung["monitor_cuda_context"]
        cells = [
            name,
            str(rung["pairs"]),
            _ratio(ratio["whole"]),
            _ratio(step) if step else "-",
            *(_short(ratio[part]) for part in STAGES),
            "n/a" if other_s is None else f"{1000 * other_s:+.0f}",
            "n/a" if cpu_s_median is None else f"{cpu_s_median:.2f}",
            f"{cuda['running_jobs_with_one']} of {cuda['running_jobs_known']}" if cuda["running_jobs_known"] else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(ratio: dict[str, Any] | None) -> str:
    if not ratio or ratio.get("ratio") is None:
        return "n/a"
    low, high = ratio["ci95"]
    return f"{ratio['ratio']:.4f} ({low:.4f}-{high:.4f})"


def _short(ratio: dict[str, Any]) -> str:
    return "n/a" if ratio.get("ratio") is None else f"{ratio['ratio']:.3f}"


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 3)


def _influxd_installed() -> bool:
    return shutil.which("influxd") is not None


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the processes this run started are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    """Climb the ladder, write the JSON, print the table; 0 when every job succeeded within the budget."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the JSON to write (rewritten as the run goes)")
    parser.add_argument("--model", choices=("full", "tiny"), help="the generator's model (default: full, tiny on CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--clip", choices=sorted(CLIP_MODELS), help="the CLIP's size (default: vit-l-14, tiny on CPU)")
    parser.add_argument("--quick", action="store_true", help="few pairs: proves the run, its figures mean little")
    parser.add_argument("--budget-s", type=float, default=540.0, help="the whole run's time budget (default 540)")
    parser.add_argument("--rungs", help=f"comma-separated, in order, from {', '.join(RUNGS)} (default: the plan's)")
    parser.add_argument("--pairs", type=int, help="at most this many running/paused pairs per rung")
    parser.add_argument("--warmup-jobs", type=int, help="jobs discarded after each monitor start (default 1)")
    parser.add_argument("--interval", type=float, default=0.5, help="the sampling period of the sampling rungs")
    parser.add_argument("--store", choices=("auto", "influxd", "sqlite"), default="auto")
    parser.add_argument("--work", type=Path, help="folder for the processes' state and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plan = CPU if args.device == "cpu" else H200_QUICK if args.quick else H200
    rungs = tuple(name.strip() for name in args.rungs.split(",") if name.strip()) if args.rungs else plan.rungs
    unknown = [name for name in rungs if name not in RUNGS]
    if unknown or not rungs:
        parser.error(f"--rungs takes names from {', '.join(RUNGS)}; got {args.rungs!r}")
    plan = replace(
        plan,
        model=args.model or plan.model,
        clip=args.clip or plan.clip,
        rungs=rungs,
        pairs=plan.pairs if args.pairs is None else args.pairs,
        warmup_jobs=plan.warmup_jobs if args.warmup_jobs is None else args.warmup_jobs,
    )
    if plan.pairs < 1 or plan.warmup_jobs < 0:
        parser.error("--pairs must be at least 1 and --warmup-jobs at least 0")
    work = args.work or Path(tempfile.mkdtemp(prefix="monitor-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    record = Record(
        args.out,
        benchmark="monitor_cost",
        command=" ".join(["python -m bench.monitor_cost", *(argv if argv is not None else sys.argv[1:])]),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine(),
        device=args.device,
        quick=args.quick,
        budget_s=args.budget_s,
        interval_s=args.interval,
        work=str(work),
        plan={**asdict(plan), "shape": asdict(plan.shape)},
        rungs={name: asdict(RUNGS[name]) for name in plan.rungs},
        target=OVERHEAD_LIMIT,
    )
    record.save()
    signal.signal(signal.SIGTERM, _terminate)
    run = MonitorCost(args, plan, record, work)
    try:
        run.run()
    finally:
        run.close()
        elapsed = run.budget.elapsed_s()
        run.judge()
        jobs = record.data["jobs"]
        failed = [j["job_id"] for j in jobs if j["state"] != "succeeded"]
        record.check(
            holds(
                "every job succeeded",
                bool(jobs) and not failed,
                f"{len(jobs) - len(failed)} of {len(jobs)}",
                f"failed: {', '.join(failed[:5])}" if failed else f"{len(jobs)} jobs",
            )
        )
        done = run.rungs_done
        record.check(
            holds(
                "every rung measured",
                len(done) == len(plan.rungs),
                f"{len(done)} of {len(plan.rungs)}",
                f"measured: {', '.join(done) or 'none'}",
            )
        )
        record.check(at_most("the run fits its time budget", round(elapsed, 1), args.budget_s, f"{elapsed:.0f} s",
                             "one device call"))  # fmt: skip
        passed = record.finish(every_check_judged=False)
    print(record.data.get("summary_table", ""))
    print()
    print(record.data["table"])
    print(f"\n{'PASSED' if passed else 'NOT PASSED'} in {elapsed:.0f} s; JSON: {args.out or '(not written)'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
