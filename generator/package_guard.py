"""Crash quarantine for UNet packages: a marker beside a package while a process loads it and makes its first call.

A package can kill the process that loads or runs it (a segfault in its generated code or in the runtime that
loads it: no exception, nothing to catch), and it stays in the cache, so every restart would load it and die
again: a crash loop. So a process about to load a package first leaves `<package>.loading` beside it, saying who
it is and when it started, and removes it once the first call has returned. A marker found whose process is gone
means that package killed it: the package is renamed `<package>.crashed` (kept for diagnosis; under that name it is
neither loaded nor built again for the same key) and its size runs the eager UNet.

Who a marker belongs to: the host's name, the pid, the process's start time as the kernel keeps it and a random
id of the process run. The pid alone would not do: pids are reused, and a container's main process is pid 1 on every
start, so a marker of pid 1 may be a crashed earlier run of this very pid (another run id) or of another process
since (another start time). A marker of another host (a cache folder shared over the network) cannot be checked;
it counts as live until it is older than any load and first call takes (`FOREIGN_MARKER_STALE_S`).

Several processes may share one folder (the GPU workers of a host, or two workers in one process): a marker whose
process still runs is not a crash. The caller waits for it to go, and serves eager for now if it does not.

A process that ends cleanly removes the markers it holds (at exit): only a crash, or a kill, leaves one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import psutil
import torch

MARKER_SUFFIX = ".loading"
CRASHED_SUFFIX = ".crashed"
# A marker of another host cannot be checked for life: past this age it is taken for a crash (a load and a first
# call take seconds on an H200; minutes would be a process that hung or died there).
FOREIGN_MARKER_STALE_S = 900.0
# The start time of a process as psutil reads it is rounded: within this, two readings are the same process.
START_TIME_TOLERANCE_S = 1.0
# A marker is created empty and written at once: younger than this, an unreadable one is still being written.
MARKER_WRITE_S = 5.0

_RUN_ID = uuid.uuid4().hex  # this process's own: a later process with the same pid has another


@dataclass(frozen=True)
class Holder:
    """The process a marker belongs to, and what it was doing."""

    host: str
    pid: int
    process_started_at: float  # the kernel's start time of the process (epoch seconds)
    run_id: str
    since: float  # when it began the load (epoch seconds)
    torch: str

    @classmethod
    def this_process(cls) -> Holder:
        """Return this process as a marker names it, starting now."""
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            process_started_at=psutil.Process().create_time(),
            run_id=_RUN_ID,
            since=time.time(),
            torch=torch.__version__,
        )

    def describe(self) -> str:
        """Say who held the marker, for a log line."""
        began = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} (torch {self.torch}), which began loading it at {began}"


def marker_path(package: Path) -> Path:
    """Return where the marker of `package`'s load and first call lives."""
    return package.with_name(package.name + MARKER_SUFFIX)


def crashed_path(package: Path) -> Path:
    """Return the name `package` takes once quarantined."""
    return package.with_name(package.name + CRASHED_SUFFIX)


def is_alive(holder: Holder, me: Holder, now: float) -> bool:
    """Say whether `holder`'s process still runs, as far as `me` can tell."""
    if holder.host != me.host:
        return now - holder.since < FOREIGN_MARKER_STALE_S
    if holder.pid == me.pid:
        return holder.run_id == me.run_id  # this process (another thread), or an earlier one that had this pid
    try:
        process = psutil.Process(holder.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - holder.process_started_at) <= START_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process we may not inspect: not ours to call dead
        return True


@dataclass(frozen=True)
class Claim:
    """What `claim` found: this process holds the marker, or the package crashed one, or another holds it.

    `holder`: the marker's process when it is not this one (None for an unreadable marker).
    """

    outcome: Literal["held", "crashed", "busy"]
    holder: Holder | None = None


class PackageGuard:
    """Markers around packages' loads and first calls in one folder; quarantines what crashed a process.

    `clock` and `pause` are injectable so that the wait for another process's marker can be shown without waiting.
    """

    def __init__(
        self,
        wait_s: float,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.wait_s, self.poll_s = wait_s, poll_s
        self.clock, self.pause = clock, pause

    def claim(self, package: Path) -> Claim:
        """Leave this process's marker beside `package`, waiting up to `wait_s` for a live holder's to go.

        A marker of a process that is gone quarantines the package (renamed `.crashed`) and says "crashed".
        """
        deadline = self.clock() + self.wait_s
        while True:
            me = Holder.this_process()
            if _create_marker(package, me):
                _held.add(marker_path(package))
                return Claim("held")
            found = _read_marker(marker_path(package), time.time())
            if found == "gone":
                continue  # released meanwhile: this process may take it now
            holder = found if isinstance(found, Holder) else None
            # An unreadable marker is taken for a crash too: loading the package again could be one.
            crashed = found is None or (holder is not None and not is_alive(holder, me, time.time()))
            if crashed:
                self.quarantine(package)
                return Claim("crashed", holder)
            if self.clock() >= deadline:
                return Claim("busy", holder)
            self.pause(self.poll_s)

    def release(self, package: Path) -> None:
        """Remove this process's marker: the package's first call returned (or it failed without a crash)."""
        marker = marker_path(package)
        marker.unlink(missing_ok=True)
        _held.discard(marker)

    def quarantine(self, package: Path) -> None:
        """Rename `package` to `<package>.crashed` and remove its marker (another process may have done it first)."""
        with contextlib.suppress(FileNotFoundError):  # quarantined by another process that found the marker too
            package.rename(crashed_path(package))
        self.release(package)

    @staticmethod
    def is_quarantined(package: Path) -> bool:
        """Say whether `package` crashed a process before (its `.crashed` file is beside it)."""
        return crashed_path(package).exists()


def _create_marker(package: Path, me: Holder) -> bool:
    """Create `package`'s marker holding `me`; False when one exists already (created and written at once)."""
    package.parent.mkdir(parents=True, exist_ok=True)
    try:
        with marker_path(package).open("x") as file:  # exclusive: of two processes, one creates it
            file.write(json.dumps(asdict(me)))
    except FileExistsError:
        return False
    return True


def _read_marker(marker: Path, now: float) -> Holder | Literal["gone", "writing"] | None:
    """Return the marker's holder: "gone" once removed, "writing" for one just created, None if unreadable."""
    try:
        text, age_s = marker.read_text(), now - marker.stat().st_mtime
    except FileNotFoundError:
        return "gone"
    try:
        stored = json.loads(text)
        # Only the fields this version knows: a later version may write more.
        return Holder(**{field.name: stored[field.name] for field in fields(Holder)})
    except (ValueError, TypeError, KeyError):
        # Between its creation and its one write (microseconds), a marker is empty; later, unreadable is broken.
        return "writing" if age_s < MARKER_WRITE_S else None


_held: set[Path] = set()  # markers this process holds, removed if it exits cleanly


@atexit.register
def _release_held() -> None:
    # A clean exit (SIGTERM during a warm-up, say) is no crash: what this process held must not quarantine anything.
    for marker in list(_held):
        marker.unlink(missing_ok=True)
