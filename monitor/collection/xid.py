"""What an Xid error code asks of an operator: the tiers the monitor's points, metrics and alerts use.

Sources: NVIDIA's Xid catalogue (its "resolution bucket" per code) and GPU debug guidelines, cross-checked
with NVIDIA's k8s device plugin (which treats 13, 31, 43, 45, 68 and 109 as application errors that leave the
GPU healthy) and GPUd's catalogue:

- reset required (fatal: page): the GPU needs a reset or the node a reboot before it can be trusted again.
  48 double-bit ECC error; 63 a row remapping or page retirement was recorded and takes effect only after a
  reset; 64 the remapping or retirement failed; 74 NVLink error; 79 the GPU fell off the bus; 94 a contained
  ECC error (the faulting application was killed; reset when convenient so the remap takes effect); 95 an
  uncontained ECC error; 119 and 120 GSP (the GPU's system processor) timeout or error; 140 an unrecovered
  ECC error.
- severe: 92, a high rate of corrected single-bit errors: nothing to reset, but memory that degrades.
- warning: every other code, mostly application faults (13 graphics engine exception, 31 MMU fault, 43 the
  GPU stopped a faulting channel, 45 preemptive cleanup after a killed process).
"""

from __future__ import annotations

TIERS = ("warning", "severe", "fatal")
RESET_REQUIRED: frozenset[int] = frozenset({48, 63, 64, 74, 79, 94, 95, 119, 120, 140})
SEVERE: frozenset[int] = frozenset({92})

NAMES: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    63: "row remapping or page retirement recorded (reset to activate)",
    64: "row remapping or page retirement failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}


def reset_required(xid: int) -> bool:
    """Return whether this Xid means the GPU needs a reset (or the node a reboot)."""
    return xid in RESET_REQUIRED


def tier(xid: int) -> str:
    """Return the alert tier an Xid calls for: fatal, severe or warning."""
    if xid in RESET_REQUIRED:
        return "fatal"
    return "severe" if xid in SEVERE else "warning"


def describe(xid: int) -> str:
    """Name the Xid for messages ("Xid 79 (GPU has fallen off the bus)")."""
    name = NAMES.get(xid)
    return f"Xid {xid}" if name is None else f"Xid {xid} ({name})"
