"""The stored schema: measurements, their tags and typed fields, and the event ↔ point conversions.

Tags are low-cardinality (host, gpu, kind, stage, status); `job_id` is always a field (a tag per job would
explode InfluxDB's series index). No name is both a tag and a field (InfluxDB 3 forbids it). Each field keeps
one type forever, since InfluxDB refuses a float into an integer field: `conform` casts known fields to their
declared type before a point reaches the writer.

- `gpu_sample` {host, gpu, uuid}: one GPU at one tick (the sampler). `uuid` is the card's NVML UUID (absent
  while a GPU that never answered has none): query by it to follow one card across index changes.
- `gpu_xid` {host, gpu, uuid}: one Xid error NVML reported, at the time it was heard (the sampler).
- `host_sample` {host}: the host at one tick (the sampler).
- `job_event` {host, gpu, kind, stage?, status?}: one generator event. Its time is `started_at + duration_s`
  in ns with the last 3 digits taken from a hash of `event_id`, so two events of one microsecond do not
  overwrite each other and a replayed event lands on the same point (the store keeps it once).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from common.events import PARAM_NAMES, Event, parse_iso
from monitor.storage.base import FieldValue, Point

GPU_SAMPLE = "gpu_sample"
GPU_XID = "gpu_xid"
HOST_SAMPLE = "host_sample"
JOB_EVENT = "job_event"
JOB_SUMMARY = "job_summary"  # one per finished job (monitor/analysis/job_summary.py)
QUALITY = "quality"  # one per scored clip and per rating (monitor/quality/scorer.py)

#: Declared field types per measurement: "float", "int", "bool" or "str". Other parts add theirs with
#: `declare_fields` (e.g. the quality scorer's `quality` measurement) so `conform` keeps their types too.
FIELD_TYPES: dict[str, Mapping[str, str]] = {
    GPU_SAMPLE: {
        "utilization_ratio": "float",
        "memory_used_bytes": "int",
        "memory_total_bytes": "int",
        "temperature_c": "float",
        "power_w": "float",
        "sm_clock_mhz": "int",
        "throttle_reasons": "int",
        "ecc_errors_corrected": "int",
        "ecc_errors_uncorrected": "int",
        "energy_j": "float",
        "up": "bool",
        "generator_memory_bytes": "int",
        "other_processes_memory_bytes": "int",
        "process_count": "int",
        "generator_utilization_ratio": "float",
        "other_processes_utilization_ratio": "float",
        "retired_pages_sbe": "int",
        "retired_pages_dbe": "int",
        "retired_pages_pending": "bool",
        "remapped_rows_correctable": "int",
        "remapped_rows_uncorrectable": "int",
        "remapped_rows_pending": "bool",
        "remapped_rows_failed": "bool",
        "pcie_replay_total": "int",
        "power_throttle_s": "float",
        "thermal_throttle_s": "float",
        "xid_errors_total": "int",
        "name": "str",
        "pci_bus_id": "str",
    },
    GPU_XID: {"xid": "int", "reset_required": "bool", "tier": "str"},
    HOST_SAMPLE: {
        "cpu_ratio": "float",
        "memory_used_bytes": "int",
        "memory_total_bytes": "int",
        "generator_rss_bytes": "int",
        "outputs_disk_free_bytes": "int",
    },
    JOB_EVENT: {
        "event_id": "str",
        "job_id": "str",
        "duration_s": "float",
        "step": "int",
        "total_steps": "int",
        "error": "str",
        "suggestion": "str",
        "prompt": "str",
        "video_path": "str",
        "peak_memory_bytes": "int",
        "peak_memory_allocated_bytes": "int",
        "notes": "str",
        "first_at_size": "bool",
        **{name: "float" if name == "guidance_scale" else "int" for name in PARAM_NAMES},
        **{f"requested_{name}": "float" if name == "guidance_scale" else "int" for name in PARAM_NAMES},
    },
}

#: The numeric fields of each sample measurement: what the series API charts.
NUMERIC_FIELDS: Mapping[str, tuple[str, ...]] = {
    m: tuple(f for f, t in FIELD_TYPES[m].items() if t in ("float", "int")) for m in (GPU_SAMPLE, HOST_SAMPLE)
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS = ("float", "int", "bool", "str")


def declare_fields(measurement: str, types: Mapping[str, str]) -> None:
    """Declare another measurement's field types, so `conform` casts its points (ValueError on a bad type)."""
    bad = {name: kind for name, kind in types.items() if kind not in _KINDS}
    if bad:
        raise ValueError(f"field types must be one of {', '.join(_KINDS)}, got {bad}")
    FIELD_TYPES[measurement] = dict(types)


def _cast(value: FieldValue, kind: str) -> FieldValue:
    """Cast a value to its declared type; None when it cannot be one (it is then left out)."""
    if value is None:
        return None
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return round(value) if isinstance(value, float) else int(value)
        if kind == "bool":
            return bool(value)
        return str(value)
    except (TypeError, ValueError):
        return None


_CLASS_OF_KIND: Mapping[str, type] = {"float": float, "int": int, "bool": bool, "str": str}


def conform(point: Point) -> Point:
    """Return the point with its known fields cast to their declared types (unknown ones untouched).

    A point whose fields already have their declared types (most are: the sampler and the event conversion
    conform as they build) is returned as it is, with no copy.
    """
    types = FIELD_TYPES.get(point.measurement)
    if not types:
        return point
    for key, value in point.fields.items():
        kind = types.get(key)
        if kind is not None and value is not None and value.__class__ is not _CLASS_OF_KIND[kind]:
            break
    else:
        return point
    fields = {k: _cast(v, types[k]) if k in types else v for k, v in point.fields.items()}
    return Point(point.measurement, point.tags, fields, point.time_ns)


def _hash_ns(event_id: str) -> int:
    """Three digits of nanoseconds derived from the event id: stable across replays."""
    return int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big") % 1000


def _to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_time_ns(event: Event) -> int:
    """Return the event's point time: when it ended, in whole microseconds, plus the id's hash digits."""
    end_us = _to_us(parse_iso(event.started_at)) + round(event.duration_s * 1_000_000)
    return end_us * 1000 + _hash_ns(event.event_id)


def event_to_point(event: Event) -> Point:
    """Convert a validated generator event to its `job_event` point."""
    tags = {"host": event.host, "gpu": event.gpu, "kind": event.kind}
    if event.stage is not None:
        tags["stage"] = event.stage
    if event.status is not None:
        tags["status"] = event.status
    fields: dict[str, FieldValue] = {
        "event_id": event.event_id,
        "job_id": event.job_id,
        "duration_s": event.duration_s,
        "step": event.step,
        "total_steps": event.total_steps,
        "error": event.error,
        "suggestion": event.suggestion,
        "prompt": event.prompt,
        "video_path": event.video_path,
        "peak_memory_bytes": event.peak_memory_bytes,
        "peak_memory_allocated_bytes": event.peak_memory_allocated_bytes,
        "notes": "\n".join(n.replace("\n", " ") for n in event.notes) or None,  # one text field, a note a line
        "first_at_size": event.first_at_size,
    }
    for name in PARAM_NAMES:
        fields[name] = event.params.get(name)
        fields[f"requested_{name}"] = event.requested.get(name)
    # Null fields are left out here rather than by the store: smaller spool records, less to conform.
    fields = {k: v for k, v in fields.items() if v is not None}
    return conform(Point(JOB_EVENT, tags, fields, event_time_ns(event)))


def iso_from_us(us: int) -> str:
    """Format microseconds since the epoch as RFC 3339 UTC with microseconds."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def point_to_event(point: Point) -> dict[str, Any]:
    """Rebuild the event (as its JSON dict, plus `ended_at`) from a stored `job_event` point."""
    f = point.fields
    duration_s = float(f.get("duration_s") or 0.0)
    end_us = point.time_ns // 1000
    start_us = end_us - round(duration_s * 1_000_000)
    params = {n: f[n] for n in PARAM_NAMES if f.get(n) is not None}
    requested = {n: f[f"requested_{n}"] for n in PARAM_NAMES if f.get(f"requested_{n}") is not None}
    return {
        "event_id": f.get("event_id"),
        "job_id": f.get("job_id"),
        "host": point.tags.get("host"),
        "gpu": point.tags.get("gpu"),
        "kind": point.tags.get("kind"),
        "stage": point.tags.get("stage"),
        "status": point.tags.get("status"),
        "started_at": iso_from_us(start_us),
        "ended_at": iso_from_us(end_us),
        "duration_s": duration_s,
        "step": f.get("step"),
        "total_steps": f.get("total_steps"),
        "error": f.get("error"),
        "suggestion": f.get("suggestion"),
        "prompt": f.get("prompt"),
        "video_path": f.get("video_path"),
        "peak_memory_bytes": f.get("peak_memory_bytes"),
        "peak_memory_allocated_bytes": f.get("peak_memory_allocated_bytes"),
        "notes": str(f["notes"]).split("\n") if f.get("notes") else [],
        "first_at_size": f.get("first_at_size"),
        "params": params,
        "requested": requested,
    }
