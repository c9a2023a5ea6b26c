"""Give a thread only the CPU time nothing else wants: Linux's idle scheduling class (the monitor's clip scoring).

Scoring a clip is seconds of CPU (decoding, optical flow, and CLIP itself when it may not use the GPU) on the
host the generator runs on. At normal priority it competes with the generator's own threads: the one that feeds
the GPU and the one that encodes the video. In `SCHED_IDLE` a thread runs only on a core no normal thread wants,
and a normal thread that wakes takes the core back at once, so the generator never waits for the scorer.

The class is per thread, and threads inherit it from the thread that starts them: the flow workers and the
OpenMP team torch starts for the scoring thread's CPU work run idle too (each thread that enters a parallel
region gets its own team), while the monitor's other threads (ingest, sampling, the API) stay normal.

The price: on a host whose cores are all busy, an idle thread barely runs, so a clip scored beside a running job
(one that waited `MONITOR_QUALITY_MAX_WAIT`) waits longer still; and while such a thread holds Python's lock
the monitor's other threads wait for it to be scheduled. `low` (nice 19) takes a small share even then;
`normal` restores the old behaviour.
"""

from __future__ import annotations

import os
import threading

PRIORITIES = ("idle", "low", "normal")
LOWEST_NICE = 19


def lower_this_thread(priority: str) -> str:
    """Put the calling thread (and the threads it will start) at `priority`; return what is in effect, in words.

    Where the class cannot be set (not Linux, a sandbox refusing it) the thread keeps its priority and the answer
    says why: scoring goes on either way.

    Raises:
        ValueError: `priority` is not one of PRIORITIES (the monitor's configuration refuses it first).
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if priority == "normal":
        return "normal"
    thread_id = threading.get_native_id()
    refused: list[str] = []
    if priority == "idle":
        try:
            os.sched_setscheduler(thread_id, os.SCHED_IDLE, os.sched_param(0))
            return "idle (SCHED_IDLE: spare cores only)"
        except (AttributeError, OSError) as e:
            refused.append(f"SCHED_IDLE refused: {e}")
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, LOWEST_NICE)  # on Linux, a thread id sets that thread alone
    except (AttributeError, OSError) as e:
        return f"normal ({'; '.join([*refused, f'nice refused: {e}'])})"
    return f"low (nice {LOWEST_NICE}{''.join('; ' + why for why in refused)})"


def thread_policy(native_id: int) -> str | None:
    """Return the scheduling class of a thread of this process ("idle", "normal", ...), or None off Linux."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    policy = int(fields[38])  # field 41 of proc(5), counted after the command name
    return {0: "normal", 3: "batch", 5: "idle"}.get(policy, f"policy {policy}")
