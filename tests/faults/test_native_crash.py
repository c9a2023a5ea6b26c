"""Fault: a crash in native code (SIGSEGV) ends `python -m generator` or `python -m monitor` without an exception.

Each leaves every thread's Python stack in its log (faulthandler), so the log of a segfault says where it happened:
the generator's worker thread loading its model, the monitor's sampler, the request threads. The signal is sent
from outside (`kill -SEGV`), which faulthandler handles as it does a fault from within.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.procs import GeneratorProcess, MonitorProcess, ServiceProcess


def generator(root: Path) -> ServiceProcess:
    process = GeneratorProcess(root)
    process.ready_path = "/health"  # it serves at once and loads its model in a thread: both threads are in the dump
    return process


@pytest.mark.parametrize("make", [generator, MonitorProcess], ids=["generator", "monitor"])
def test_a_segfault_leaves_every_threads_python_stack_in_the_log(
    tmp_path: Path, make: Callable[[Path], ServiceProcess]
) -> None:
    process = make(tmp_path)
    process.start()
    try:
        assert process.process is not None
        process.process.send_signal(signal.SIGSEGV)
        assert process.process.wait(timeout=30) == -signal.SIGSEGV
    finally:
        process.kill()
    log = process.log_text()
    assert "Fatal Python error: Segmentation fault" in log, process.log_tail()
    dump = log.split("Fatal Python error: Segmentation fault", 1)[1]
    # A Python stack, frame by frame. Not that every thread is listed: a SIGSEGV sent from outside lands in whichever
    # thread the kernel picks, and once, in a full-suite run, the monitor's dump listed one thread only.
    assert "(most recent call first)" in dump, dump[:2000]
    assert 'File "' in dump, dump[:2000]
