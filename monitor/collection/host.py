"""Read the host through psutil: CPU, memory, the generator process's RSS, free and total disk of the outputs folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSnapshot:
    """The host at one tick; a reading is None when it could not be taken."""

    cpu_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    generator_pid: int | None
    generator_rss_bytes: int | None
    outputs_disk_free_bytes: int | None
    outputs_disk_total_bytes: int | None = None


class HostReader:
    """Take one `HostSnapshot` per `read(generator_pid)`.

    CPU is psutil's non-blocking `cpu_percent(interval=None)`, primed here so the first read already covers
    the time since construction rather than returning a meaningless 0. Memory "used" is total minus available
    (what a new allocation cannot have), the same on every platform. The generator's RSS needs its PID in this
    process's PID namespace: `None` when no PID is known, the process is gone, or it cannot be read.

    Args:
        outputs_dir: the folder whose disk's free space is reported (None: not reported).
        psutil_module: the psutil module (default: the real one), for tests.
    """

    def __init__(self, outputs_dir: str | os.PathLike[str] | None = None, *, psutil_module: ModuleType | Any = None):
        if psutil_module is None:
            import psutil  # here, so the GPU probe can run where psutil is missing

            psutil_module = psutil
        self._psutil = psutil_module
        self.outputs_dir = None if outputs_dir is None else Path(outputs_dir)
        self._process: Any = None
        self._said: set[str] = set()
        self._psutil.cpu_percent(interval=None)

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def read(self, generator_pid: int | None = None) -> HostSnapshot:
        """Take one snapshot; `generator_pid` is the generator's PID, or None when unknown."""
        psutil = self._psutil
        memory = psutil.virtual_memory()
        disk_free, disk_total = self._disk()
        return HostSnapshot(
            cpu_ratio=psutil.cpu_percent(interval=None) / 100.0,
            memory_used_bytes=int(memory.total - memory.available),
            memory_total_bytes=int(memory.total),
            generator_pid=generator_pid,
            generator_rss_bytes=self._rss(generator_pid),
            outputs_disk_free_bytes=disk_free,
            outputs_disk_total_bytes=disk_total,
        )

    def _rss(self, pid: int | None) -> int | None:
        psutil = self._psutil
        if pid is None:
            return None
        try:
            # Keep the Process object: psutil checks its creation time, so a reused PID is not taken for it.
            if self._process is None or self._process.pid != pid or not self._process.is_running():
                self._process = psutil.Process(pid)
            return int(self._process.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._process = None
            return None
        except psutil.AccessDenied:
            self._say_once("rss-denied", "cannot read the generator's memory (pid %d): access denied", pid)
            return None

    def _disk(self) -> tuple[int | None, int | None]:
        """Return the free and total bytes of the outputs folder's disk (None, None when unknown)."""
        if self.outputs_dir is None:
            return None, None
        # The folder may not exist before the first clip: its nearest existing parent is on the same disk.
        folder = next((p for p in (self.outputs_dir, *self.outputs_dir.parents) if p.exists()), self.outputs_dir)
        try:
            usage = self._psutil.disk_usage(str(folder))
        except OSError as err:
            self._say_once("disk", "cannot read free disk of %s: %s", self.outputs_dir, err)
            return None, None
        return int(usage.free), int(usage.total)
