"""The scorer's thread, and the threads it starts, run in Linux's idle class; the rest of the monitor does not."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from common.cpu_priority import lower_this_thread, thread_policy
from monitor.config import ConfigError, MonitorConfig
from monitor.quality.scorer import QualityScorer
from tests.servers import wait_for


def in_new_thread(work: Any) -> Any:
    """Run `work` on a fresh thread (a thread's class cannot be raised back once lowered) and return its result."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result(timeout=30)


def test_idle_applies_to_the_thread_and_the_threads_it_starts_not_to_others() -> None:
    def lowered() -> tuple[str, str | None, str | None]:
        said = lower_this_thread("idle")
        child: list[str | None] = []
        started = threading.Thread(target=lambda: child.append(thread_policy(threading.get_native_id())))
        started.start()
        started.join()
        return said, thread_policy(threading.get_native_id()), child[0]

    said, own, child = in_new_thread(lowered)
    assert said == "idle (SCHED_IDLE: spare cores only)"
    assert (own, child) == ("idle", "idle")
    assert thread_policy(threading.get_native_id()) == "normal"  # the caller's thread is untouched


def test_low_is_nice_19_and_normal_changes_nothing() -> None:
    def niced() -> tuple[str, int]:
        return lower_this_thread("low"), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def unchanged() -> tuple[str, str | None, int]:
        native = threading.get_native_id()
        return lower_this_thread("normal"), thread_policy(native), os.getpriority(os.PRIO_PROCESS, native)

    assert in_new_thread(niced) == ("low (nice 19)", 19)
    assert in_new_thread(unchanged) == ("normal", "normal", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    with pytest.raises(ValueError, match="idle, low, normal"):
        lower_this_thread("realtime")


def test_the_scorer_thread_runs_idle_and_says_so() -> None:
    scorer = QualityScorer(clip=None, write=lambda points: None, host_name="node-a", cpu_priority="idle")
    assert scorer.status()["cpu_priority"] == "not started"
    scorer.start()
    try:
        wait_for(lambda: scorer.status()["cpu_priority"] != "not started", 10, "the scorer thread to start")
        assert scorer.status()["cpu_priority"] == "idle (SCHED_IDLE: spare cores only)"
        (worker,) = [t for t in threading.enumerate() if t.name == "quality-scorer"]
        assert worker.native_id is not None
        assert thread_policy(worker.native_id) == "idle"
    finally:
        scorer.stop()


def test_the_monitor_scores_idle_by_default_and_refuses_an_unknown_priority() -> None:
    assert MonitorConfig.from_sources([], environ={}).quality_cpu_priority == "idle"
    chosen = MonitorConfig.from_sources([], environ={"MONITOR_QUALITY_CPU_PRIORITY": "low"})
    assert chosen.quality_cpu_priority == "low"
    with pytest.raises(ConfigError, match="MONITOR_QUALITY_CPU_PRIORITY must be one of idle, low, normal"):
        MonitorConfig.from_sources([], environ={"MONITOR_QUALITY_CPU_PRIORITY": "high"}).validate()
