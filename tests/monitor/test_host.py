"""The host reader, with a real child process standing in for the generator."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from monitor.collection.host import HostReader

CHILD_MEMORY_BYTES = 64 * 2**20


@pytest.fixture
def generator() -> Iterator[subprocess.Popen[str]]:
    """Start a child that holds 64 MiB and says so, then waits for its stdin to close."""
    with subprocess.Popen(
        [sys.executable, "-c", f"b = bytearray({CHILD_MEMORY_BYTES}); print('ready', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        yield child
        child.kill()


def test_the_generators_rss_is_reported_until_it_dies(generator: subprocess.Popen[str]) -> None:
    reader = HostReader()

    alive = reader.read(generator.pid)
    generator.kill()
    generator.wait()
    dead = reader.read(generator.pid)

    assert alive.generator_pid == generator.pid
    assert alive.generator_rss_bytes is not None
    assert alive.generator_rss_bytes >= CHILD_MEMORY_BYTES
    assert dead.generator_rss_bytes is None


def test_no_pid_means_no_rss() -> None:
    snapshot = HostReader().read(None)

    assert snapshot.generator_rss_bytes is None
    assert snapshot.generator_pid is None


def test_cpu_and_memory_are_read_without_blocking() -> None:
    reader = HostReader()
    started = time.monotonic()
    snapshot = reader.read()

    assert time.monotonic() - started < 0.5  # cpu_percent(interval=None) never sleeps
    assert snapshot.cpu_ratio is not None
    assert 0.0 <= snapshot.cpu_ratio <= 1.0
    assert snapshot.memory_total_bytes == psutil.virtual_memory().total
    assert snapshot.memory_used_bytes is not None
    assert 0 < snapshot.memory_used_bytes <= psutil.virtual_memory().total


def test_free_disk_is_read_for_the_outputs_folder_even_before_it_exists(tmp_path: Path) -> None:
    existing = HostReader(outputs_dir=tmp_path).read()
    not_yet = HostReader(outputs_dir=tmp_path / "outputs" / "clips").read()
    unset = HostReader().read()

    free = psutil.disk_usage(str(tmp_path)).free
    assert existing.outputs_disk_free_bytes == pytest.approx(free, rel=0.01)
    assert not_yet.outputs_disk_free_bytes == pytest.approx(free, rel=0.01)
    assert unset.outputs_disk_free_bytes is None
