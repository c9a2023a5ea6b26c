"""The GPU acceptance run's record: its checks against the issue's targets, its jobs, and the JSON kept on disk.

The JSON is rewritten (atomically) after every job and every check, so a run cut short still leaves what it
measured. Each check is judged pass/fail, or left unjudged (`passed: null`) with the reason: skipped by the
time budget, or a GPU figure that a CPU smoke run only records.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.stack import stage_seconds
from common.events import epoch_s


@dataclass(frozen=True)
class Check:
    """One figure against its target: `passed` None when it could not be judged (the detail says why)."""

    name: str
    value: float | None
    shown: str
    target: str
    passed: bool | None
    detail: str = ""


def relative_error(measured: float | None, expected: float | None) -> float | None:
    """Return |measured - expected| / expected, or None when either is missing."""
    if measured is None or expected is None or expected == 0:
        return None
    return abs(measured - expected) / abs(expected)


def within(name: str, measured: float | None, expected: float | None, tolerance: float, detail: str) -> Check:
    """Check that `measured` is within `tolerance` (relative) of `expected`."""
    error = relative_error(measured, expected)
    shown = "n/a" if error is None else f"{100 * error:.1f}% off"
    passed = None if error is None else error <= tolerance
    return Check(name, error, shown, f"<= {100 * tolerance:g}% off", passed, detail)


def at_most(name: str, value: float | None, limit: float, shown: str, detail: str) -> Check:
    """Check that `value <= limit`."""
    return Check(name, value, shown, f"<= {limit:g}", None if value is None else value <= limit, detail)


def holds(name: str, ok: bool | None, shown: str, detail: str, target: str = "yes") -> Check:
    """Check a yes/no condition (None: not judged)."""
    return Check(name, None, shown, target, ok, detail)


def unjudged(check: Check, reason: str) -> Check:
    """Return the check with its figure kept and its verdict left out, saying why."""
    detail = f"{check.detail}; {reason}" if check.detail else reason
    return Check(check.name, check.value, check.shown, check.target, None, detail)


class Record:
    """What the run found so far, written to `path` (when given) after every change."""

    def __init__(self, path: Path | None, **head: Any) -> None:
        """Start a record with `head` (command, machine, settings)."""
        self.path = path
        self.started = time.monotonic()
        self.data: dict[str, Any] = {**head, "phases": {}, "jobs": [], "checks": [], "passed": None}

    def save(self) -> None:
        """Write the JSON atomically (a reader never sees half a file)."""
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(self.path.suffix + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(partial, self.path)

    def phase(self, name: str) -> dict[str, Any]:
        """Return the phase's entry, created empty."""
        return self.data["phases"].setdefault(name, {})

    def job(self, phase: str, view: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Keep one finished job: its sizes, outcome, times and peaks as the generator reported them."""
        started, finished = epoch_s(view.get("started_at")), epoch_s(view.get("finished_at"))
        entry = {
            "phase": phase,
            "job_id": view["job_id"],
            "state": view["state"],
            "requested": view.get("requested"),
            "effective": view.get("effective"),
            "run_s": None if started is None or finished is None else round(finished - started, 4),
            "denoising_s": (view.get("stage_durations_s") or {}).get("denoising"),
            "parts_s": stage_seconds(view),
            "peak_memory_bytes": view.get("peak_memory_bytes"),
            "peak_memory_allocated_bytes": view.get("peak_memory_allocated_bytes"),
            "notes": view.get("notes"),
            "error": view.get("error"),
            **extra,
        }
        self.data["jobs"].append(entry)
        self.save()
        return entry

    def check(self, check: Check) -> Check:
        """Keep a check's verdict."""
        self.data["checks"].append(asdict(check))
        self.save()
        return check

    def finish(self, *, every_check_judged: bool = True) -> bool:
        """Judge the run: it passes when no check failed and, for an acceptance, every check was judged."""
        checks = self.data["checks"]
        judged = all(c["passed"] is not None for c in checks) or not every_check_judged
        self.data["passed"] = bool(checks) and judged and not any(c["passed"] is False for c in checks)
        self.data["unjudged"] = [c["name"] for c in checks if c["passed"] is None]
        self.data["failed"] = [c["name"] for c in checks if c["passed"] is False]
        self.data["table"] = table(checks)
        self.save()
        return self.data["passed"]


def table(checks: list[dict[str, Any]]) -> str:
    """Return the checks as a Markdown table for the README."""
    lines = ["| check | measured | target | result |", "|---|---|---|---|"]
    for check in checks:
        verdict = {True: "pass", False: "**fail**", None: "not judged"}[check["passed"]]
        lines.append(f"| {check['name']} | {check['shown']} | {check['target']} | {verdict} |")
    return "\n".join(lines)
