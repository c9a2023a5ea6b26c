"""The event record the generator emits and the monitor ingests: one JSON object per stage end or state change."""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

STAGES = (
    "model_load",
    "compile",
    "package_load",
    "warmup",
    "text_encoding",
    "image_encoding",
    "image_latents",
    "denoising_step",
    "denoising",
    "decode_video",
    "export",
)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "rejected")
# A job in one of these never changes again. `rejected`: a submission refused at input, which never became a job
# in the queue; its event is emitted so that reports count every request.
FINAL_STATES = ("succeeded", "failed", "cancelled", "rejected")
KINDS = ("stage", "job")
PARAM_NAMES = ("resolution", "num_frames", "steps", "guidance_scale", "fps", "seed")
MAX_TEXT = 2000
MAX_NOTES = 20
# The job_id of the stages a worker runs before serving (model_load, warmup): service events, not a user's job.
STARTUP_JOB_ID = "startup"


# Event times the stores can hold (InfluxDB keeps nanoseconds since 1970 in 64 bits: 1677 to 2262), and a
# duration no job reaches (115 days): outside them an event is a client's bug, refused at ingest.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_DURATION_S = 1e7


def _is_unicode(text: str) -> bool:
    """Return whether `text` encodes as UTF-8 (JSON can carry lone surrogates that no store can write)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class EventError(ValueError):
    """An event that does not follow the schema; the message names the field."""


def utc_now_iso() -> str:
    """Return the current time as RFC 3339 UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_from_epoch_s(epoch_s: float | None) -> str | None:
    """Format epoch seconds as RFC 3339 UTC with microseconds (None stays None): the APIs' one time format."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch_s(value: str | float | None) -> float | None:
    """Return seconds since the epoch of an API time: RFC 3339, or a number (the deprecated epoch form)."""
    if value is None or isinstance(value, int | float):
        return value
    return parse_iso(value).timestamp()


def parse_iso(value: str) -> datetime:
    """Parse an RFC 3339 timestamp; naive times are refused since they are ambiguous."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class Event:
    """A stage that ended (kind=stage) or a job that changed state (kind=job).

    `started_at` is when the stage (or the state) began, `duration_s` how long the stage took (0 for a state
    change). `params` are the job's effective parameters; `requested` what the user asked for, where it differs.
    `notes` are what admission control said about the job (where its memory estimate came from, why it was
    degraded or refused), carried by its state events.
    """

    job_id: str
    host: str
    gpu: str
    kind: str
    started_at: str
    duration_s: float = 0.0
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    status: str | None = None
    error: str | None = None
    suggestion: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)
    peak_memory_bytes: int | None = None  # the job's peak reserved by torch: what the card gave it
    peak_memory_allocated_bytes: int | None = None  # the job's peak held by live tensors
    prompt: str | None = None
    video_path: str | None = None
    notes: list[str] = field(default_factory=list)
    # On a job's first denoising step only: whether its size (resolution, frames, guidance) was new to the
    # generator's process since its model loaded. Such a step pays a one-off warm-up (cuDNN and the allocator at a
    # new shape, 0.4-0.8 s on an H200) that later jobs of that size do not; only the process knows what it ran.
    first_at_size: bool | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_dict(self) -> dict[str, Any]:
        """Serialise with `event_id` first, as the JSON log line and the wire format."""
        data = asdict(self)
        return {"event_id": data.pop("event_id"), **data}

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate one event from JSON; raise EventError naming the first bad field."""
        if not isinstance(data, dict):
            raise EventError("each event must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise EventError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for name in ("event_id", "job_id", "host", "gpu", "kind", "started_at"):
            value = data.get(name)
            if not isinstance(value, str) or not value or len(value) > 200:
                raise EventError(f"'{name}' must be a non-empty string of at most 200 characters")
        try:
            uuid.UUID(data["event_id"])
        except ValueError:
            raise EventError(f"'event_id' must be a UUID, got {data['event_id']!r}") from None
        if data["kind"] not in KINDS:
            raise EventError(f"'kind' must be one of {', '.join(KINDS)}, got {data['kind']!r}")
        try:
            parse_iso(data["started_at"])
        except ValueError:
            raise EventError(f"'started_at' must be an RFC 3339 UTC time, got {data['started_at']!r}") from None
        if not EARLIEST <= parse_iso(data["started_at"]) < LATEST:
            bounds = f"{EARLIEST.year} and {LATEST.year}"
            raise EventError(f"'started_at' must be between {bounds}, got {data['started_at']!r}")
        duration = data.get("duration_s", 0.0)
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
            raise EventError("'duration_s' must be a finite number")
        if not 0 <= duration <= MAX_DURATION_S:
            raise EventError(f"'duration_s' must be between 0 and {MAX_DURATION_S:g} seconds, got {duration}")
        for name, value in data.items():
            if isinstance(value, str) and not _is_unicode(value):
                raise EventError(f"'{name}' must be valid Unicode text (it has a lone surrogate)")
        if data["kind"] == "stage" and data.get("stage") not in STAGES:
            raise EventError(f"'stage' must be one of {', '.join(STAGES)}, got {data.get('stage')!r}")
        if data["kind"] == "job" and data.get("status") not in JOB_STATES:
            raise EventError(f"'status' must be one of {', '.join(JOB_STATES)}, got {data.get('status')!r}")
        for name in ("step", "total_steps", "peak_memory_bytes", "peak_memory_allocated_bytes"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EventError(f"'{name}' must be a non-negative integer or null")
        for name in ("status", "error", "suggestion", "prompt", "video_path", "stage"):
            value = data.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                raise EventError(f"'{name}' must be a string of at most {MAX_TEXT} characters or null")
        first_at_size = data.get("first_at_size")
        if first_at_size is not None and not isinstance(first_at_size, bool):
            raise EventError("'first_at_size' must be true, false or null")
        notes = data.get("notes", [])
        if (
            not isinstance(notes, list)
            or len(notes) > MAX_NOTES
            or not all(isinstance(n, str) and len(n) <= MAX_TEXT and _is_unicode(n) for n in notes)
        ):
            raise EventError(f"'notes' must be a list of at most {MAX_NOTES} strings of at most {MAX_TEXT} characters")
        for name in ("params", "requested"):
            value = data.get(name, {})
            if not isinstance(value, dict) or set(value) - set(PARAM_NAMES):
                raise EventError(f"'{name}' must be an object with keys among {', '.join(PARAM_NAMES)}")
            for key, item in value.items():
                if item is not None and (isinstance(item, bool) or not isinstance(item, int | float)):
                    raise EventError(f"'{name}.{key}' must be a number or null")
        return cls(**{**data, "duration_s": float(duration)})
